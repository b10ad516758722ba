"""`ganforge serve`: start the Ray Serve app on a local (or RAY_ADDRESS) cluster and block."""

from __future__ import annotations

import typer


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
    replicas: int = typer.Option(1, min=1, help="Replicas of the app deployment."),
    gpu: bool = typer.Option(False, "--gpu", help="One GPU per replica."),
    max_batch_size: int = typer.Option(
        32, min=1, help="Most images per generator forward pass (dynamic batching)."
    ),
    batch_wait_s: float = typer.Option(
        0.0,
        min=0.0,
        help="How long a batch waits to fill after its first request (0: take what is queued).",
    ),
    max_images_per_request: int = typer.Option(64, min=1, help="Most images per request."),
    max_upload_bytes: int = typer.Option(1_048_576, min=1024, help="Largest request body."),
    max_ongoing_requests: int | None = typer.Option(
        None,
        min=1,
        help="Requests one replica holds at once (>= --max-batch-size); default max(256, 2 x "
        "--max-batch-size). Beyond it, requests wait in the proxy.",
    ),
    max_queued_requests: int = typer.Option(
        256, min=-1, help="Requests queued beyond the replicas' capacity before fast 503s."
    ),
    num_cpus: float = typer.Option(1.0, min=0.0, help="CPUs reserved per replica."),
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
