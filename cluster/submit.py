"""`ganforge submit`: run a ganforge command as a Ray job (Ray's `JobSubmissionClient`)."""

from __future__ import annotations

import asyncio
import os
import shlex
import time
from pathlib import Path
from typing import NoReturn

import typer
import yaml

EXIT_CODES = {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 3}


def _runtime_env(working_dir: Path | None, runtime_env: Path | None) -> dict | None:
    env: dict = {}
    if runtime_env is not None:
        if not runtime_env.is_file():
            raise typer.BadParameter(f"{runtime_env}: no such file", param_hint="--runtime-env")
        env = yaml.safe_load(runtime_env.read_text()) or {}
        if not isinstance(env, dict):
            raise typer.BadParameter(
                f"{runtime_env} must hold a mapping", param_hint="--runtime-env"
            )
    if working_dir is not None:
        env["working_dir"] = str(working_dir)
    return env or None


def submit(
    ctx: typer.Context,
    address: str = typer.Option(
        None,
        "--address",
        help="Ray dashboard address, e.g. http://127.0.0.1:8265 (default: $RAY_ADDRESS).",
    ),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Stream logs until the job ends."),
    working_dir: Path = typer.Option(
        None,
        "--working-dir",
        help="Upload this directory as the job's working dir (e.g. a source checkout). "
        "Default: none; the cluster uses its installed ganforge.",
    ),
    runtime_env: Path = typer.Option(
        None, "--runtime-env", help="YAML file with a Ray runtime_env (pip, env_vars, ...)."
    ),
    job_id: str = typer.Option(None, "--job-id", help="Submission id (default: generated)."),
) -> None:
    """Submit `ganforge ARGS...` to a Ray cluster: `ganforge submit -- train --config cwgan-gp`.

    Exit code: 0 when the job SUCCEEDED, 1 FAILED, 3 STOPPED (with --no-wait: 0 once submitted).
    Ray 2.60 clusters use token authentication: run with RAY_AUTH_MODE=token so the client
    sends the token from ~/.ray/auth_token (or RAY_AUTH_TOKEN).
    """
    from ray.job_submission import JobSubmissionClient

    args = list(ctx.args)
    if not args:
        raise typer.BadParameter("give the ganforge command to run after --, e.g. -- train ...")
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise typer.BadParameter(
            "no cluster address: pass --address or set RAY_ADDRESS", param_hint="--address"
        )
    entrypoint = "ganforge " + shlex.join(args)
    try:
        client = JobSubmissionClient(address)
        sid = client.submit_job(
            entrypoint=entrypoint,
            runtime_env=_runtime_env(working_dir, runtime_env),
            submission_id=job_id,
        )
    except Exception as e:  # connection refused, auth, bad runtime env: show Ray's reason
        _cannot_submit(address, e)
    typer.echo(f"submitted job {sid}: {entrypoint}")
    if not wait:
        return
    raise typer.Exit(EXIT_CODES.get(_follow(client, sid), 1))


def _cannot_submit(address: str, error: Exception) -> NoReturn:
    """Print Ray's reason (with a hint where it looks like token auth) and exit 2."""
    hint = ""
    if "auth" in str(error).lower() and os.environ.get("RAY_AUTH_MODE") != "token":
        hint = " (the cluster uses token auth: run with RAY_AUTH_MODE=token)"
    typer.secho(f"error: cannot submit to {address}: {error}{hint}", fg="red", err=True)
    raise typer.Exit(2) from None


def _follow(client, sid: str) -> str:
    """Stream the job's logs until it ends; -> its final status (SUCCEEDED, FAILED, STOPPED)."""

    async def _tail() -> None:
        async for lines in client.tail_job_logs(sid):
            typer.echo(lines, nl=False)

    asyncio.run(_tail())
    status = str(client.get_job_status(sid)).split(".")[-1]
    while status in ("PENDING", "RUNNING"):  # logs end slightly before the status flips
        time.sleep(0.5)
        status = str(client.get_job_status(sid)).split(".")[-1]
    typer.echo(f"job {sid} {status}")
    return status
