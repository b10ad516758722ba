"""`ganforge serve`: start the Ray Serve app on a local (or RAY_ADDRESS) cluster and block."""

from __future__ import annotations

from typing import Any

import typer

from ganforge.serve.schemas import AppArgs

# A field's inclusive bounds (pydantic's `ge`/`le` metadata) -> typer's `min`/`max`. Exclusive
# ones have no typer option; AppArgs itself still enforces them.
_BOUNDS = {"ge": "min", "le": "max"}


def app_option(field: str, *decls: str, help: str | None = None) -> Any:
    """A typer option for the `AppArgs` field `field`: its default, bounds and (unless `help` is
    given) help text are the field's own, so `--help` shows the app's real defaults and the CLI
    never restates them."""
    info = AppArgs.model_fields[field]
    bounds = {
        option: getattr(meta, attr)
        for meta in info.metadata
        for attr, option in _BOUNDS.items()
        if getattr(meta, attr, None) is not None
    }
    text = help or " ".join((info.description or "").split())
    return typer.Option(info.default, *decls, help=text, **bounds)


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", err=True, fg="red")
    raise typer.Exit(2)


def parse_models(specs: list[str]) -> dict[str, str]:
    """`NAME=PATH` strings -> {name: path}; a bare PATH is named after its run dir."""
    from pathlib import Path

    from ganforge.storage import is_uri

    models: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            path = spec
            tail = spec.rstrip("/").rsplit("/", 1)[-1]
            name = tail if is_uri(spec) else Path(spec).resolve().name
        if not name or not path:
            raise typer.BadParameter(f"{spec!r}: expected NAME=PATH", param_hint="--model")
        if name in models:
            raise typer.BadParameter(f"model name {name!r} given twice", param_hint="--model")
        models[name] = path
    return models


def serve_cmd(
    model: list[str] = typer.Option(
        ...,
        "--model",
        "-m",
        help="NAME=PATH of a run dir, its checkpoints/ dir, a checkpoint dir or weights.pt; the "
        "run dir or checkpoint may be an object-store URI (s3://...). Repeat for several models.",
    ),
    host: str = typer.Option("127.0.0.1", help="Address the HTTP proxy binds (0.0.0.0 = all)."),
    port: int = typer.Option(8000, min=1, max=65535, help="HTTP port of the Serve proxy."),
    replicas: int = app_option(
        "num_replicas", "--replicas", help="Replicas of the app deployment."
    ),
    gpu: bool = app_option("gpu", "--gpu"),
    max_batch_size: int = app_option("max_batch_size"),
    batch_wait_s: float = app_option("batch_wait_timeout_s", "--batch-wait-s"),
    max_images_per_request: int = app_option("max_images_per_request"),
    max_upload_bytes: int = app_option("max_upload_bytes"),
    max_ongoing_requests: int | None = app_option(
        "max_ongoing_requests",
        help="Requests one replica holds at once (>= --max-batch-size); default max(256, 2 x "
        "--max-batch-size). Beyond it, requests wait in the proxy.",
    ),
    max_queued_requests: int = app_option("max_queued_requests"),
    num_cpus: float = app_option("num_cpus"),
) -> None:
    """Serve trained generators over HTTP (Ray Serve) until Ctrl-C.

    Routes: / (web page), /v1/generate, /v1/models, /v1/score, /healthz, /docs.
    """
    import time

    args = {
        "models": parse_models(model),
        "max_batch_size": max_batch_size,
        "batch_wait_timeout_s": batch_wait_s,
        "max_images_per_request": max_images_per_request,
        "max_upload_bytes": max_upload_bytes,
        "num_replicas": replicas,
        "gpu": gpu,
        "max_ongoing_requests": max_ongoing_requests,
        "max_queued_requests": max_queued_requests,
        "num_cpus": num_cpus,
    }
    from ganforge.checkpoint import CheckpointError
    from ganforge.serve.app import build_app

    try:
        app = build_app(args)  # validates arguments and checkpoints before Ray starts
    except (CheckpointError, ValueError) as e:
        _fail(str(e))
    import ray
    from ray import serve

    ray.init()  # an embedded local cluster unless RAY_ADDRESS points at one
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(app, name="ganforge", route_prefix="/", blocking=False)
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        typer.echo(f"ganforge serving {', '.join(args['models'])} at http://{shown}:{port}/")
        typer.echo("  API docs: /docs   metrics: Ray's metrics export port   Ctrl-C to stop")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        typer.echo("stopping")
    finally:
        serve.shutdown()
        ray.shutdown()


def register(app: typer.Typer) -> None:
    """Mount this area's commands on the root app."""
    app.command("serve")(serve_cmd)
