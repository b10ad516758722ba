"""`ganforge serve`: start the Ray Serve app on a local (or RAY_ADDRESS) cluster and block."""

from __future__ import annotations

from typing import Any

import typer

from ganforge.serve.schemas import AppArgs
from ganforge.shutdown import Stop, init_ray, owns_cluster, shutdown_ray, stop_on_signals

# A field's inclusive bounds (pydantic's `ge`/`le` metadata) -> typer's `min`/`max`. Exclusive
# ones have no typer option; AppArgs itself still enforces them.
_BOUNDS = {"ge": "min", "le": "max"}
APP_NAME = "ganforge"  # the Serve application `ganforge serve` runs


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
    detector: str | None = app_option(
        "detector",
        "--detector",
        help="A deepfake detector from `ganforge detect train` (its .pt; the .json record beside "
        "it): served at POST /v1/detect, its validation figures in /v1/models.",
    ),
    api_token_file: str | None = app_option(
        "api_token_file",
        "--api-token-file",
        help="File holding an API token: every route but /, /healthz and /docs then needs "
        "`Authorization: Bearer <token>`. Without it, GANFORGE_API_TOKEN (if set) is the token.",
    ),
) -> None:
    """Serve trained generators over HTTP (Ray Serve) until Ctrl-C.

    Routes: / (web page), /v1/generate, /v1/models, /v1/score, /v1/detect (with --detector),
    /healthz, /docs.
    """
    import os

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
        # Absolute: the replicas read them, from their own working directory.
        "detector": detector and os.path.abspath(detector),
        "api_token_file": api_token_file and os.path.abspath(api_token_file),
    }
    from ganforge.checkpoint import CheckpointError
    from ganforge.serve.app import build_app

    try:
        app = build_app(args)  # validates arguments and checkpoints before Ray starts
    except (CheckpointError, ValueError) as e:
        _fail(str(e))
    code = 0
    with stop_on_signals():  # SIGTERM (Kubernetes, systemd) and Ctrl-C raise Stop
        try:
            _serve_until_stopped(app, host, port, list(args["models"]))
        except Stop as again:  # a second signal while draining
            typer.echo(f"ganforge serve: {again.name} again: stopped without draining", err=True)
            code = again.exit_code
        finally:
            shutdown_ray()  # the embedded cluster, every process of it
    if code:
        raise typer.Exit(code)
    typer.echo("ganforge serve: stopped", err=True)


def _serve_until_stopped(app: Any, host: str, port: int, names: list[str]) -> None:
    """Start Ray and the app, block until a first SIGTERM/SIGINT, then drain the app."""
    import time

    import ray
    from ray import serve

    serving = False
    try:
        init_ray()  # an embedded local cluster unless RAY_ADDRESS points at one
        serve.start(http_options={"host": host, "port": port})
        serving = True  # from here on there may be requests to drain
        serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        typer.echo(f"ganforge serving {', '.join(names)} at http://{shown}:{port}/")
        typer.echo("  API docs: /docs   metrics: Ray's metrics export port   Ctrl-C to stop")
        while True:
            time.sleep(3600)
    except Stop as stop:
        _drain(stop, serving)
    finally:
        # On a cluster started here, shutdown_ray() ends Serve with the rest (at once, where a
        # second signal cut the drain short); on one named by RAY_ADDRESS the app would outlive
        # this command.
        if ray.is_initialized() and not owns_cluster():
            serve.shutdown()


def _drain(stop: Stop, serving: bool) -> None:
    """A first SIGTERM/SIGINT: stop taking requests and let those in flight finish.

    serve.shutdown() alone kills the HTTP proxies at once, cutting off the responses they are
    waiting for. Deleting the app first drains it: the proxies stop routing to it while its
    replicas finish what they hold (up to Serve's graceful_shutdown_timeout_s, 20 s by default);
    serve.shutdown() then has nothing left to cut.
    """
    from ray import serve

    what = "finishing in-flight requests" if serving else "nothing served yet"
    typer.echo(
        f"ganforge serve: {stop.name} received: {what}, then stopping (send it again to stop "
        "at once)",
        err=True,
    )
    if serving:
        serve.delete(APP_NAME)


def register(app: typer.Typer) -> None:
    """Mount this area's commands on the root app."""
    app.command("serve")(serve_cmd)
