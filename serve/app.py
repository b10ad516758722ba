"""The ganforge Ray Serve application: `build_app` validates the arguments and binds the
deployment (serve.deployment) with them.

Import path for `serve run` / `serve deploy` / the Helm chart's RayService:
`ganforge.serve.app:build_app` with the arguments of `AppArgs`.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from ray import serve
from ray.serve.config import AutoscalingConfig, BackpressureConfig

from ganforge.serve.auth import read_api_token
from ganforge.serve.deployment import GanforgeServer
from ganforge.serve.schemas import AppArgs, format_errors

__all__ = ["GanforgeServer", "build_app", "parse_args"]


def _deployment_options(a: AppArgs) -> dict[str, Any]:
    opts: dict[str, Any] = {
        "max_ongoing_requests": a.ongoing_requests,
        "max_queued_requests": a.max_queued_requests,
        "backpressure_config": BackpressureConfig(status_code=503, retry_after_s=a.retry_after_s),
        "ray_actor_options": {"num_cpus": a.num_cpus, "num_gpus": 1 if a.gpu else 0},
    }
    if a.autoscaling is None:
        opts["num_replicas"] = a.num_replicas
    else:
        opts["autoscaling_config"] = AutoscalingConfig(**a.autoscaling.model_dump())
    return opts


def parse_args(args: dict[str, Any] | None) -> AppArgs:
    """Validate `build_app` arguments; a bad one raises ValueError naming the key."""
    try:
        return AppArgs.model_validate(args or {})
    except ValidationError as e:
        raise ValueError(
            format_errors(e, prefix="invalid ganforge serve arguments: ", whole="")
        ) from None


def build_app(args: dict[str, Any]) -> serve.Application:
    """Application builder for `serve run ganforge.serve.app:build_app` and configs/serve.yaml.

    Validates the arguments and (unless `validate_on_build: false`) loads every checkpoint once,
    so a corrupt or mismatched one fails here with `CheckpointError` naming the model, loads the
    `detector` (a bad one raises `DetectorError`, a ValueError), and reads the API token (an
    unreadable or empty `api_token_file` raises ValueError). Replicas read the token and the
    detector again when they start: those files (or GANFORGE_API_TOKEN) must be there too.
    """
    from ganforge.checkpoint import CheckpointError
    from ganforge.models import load_model
    from ganforge.models.detector import load_detector

    a = parse_args(args)
    if a.validate_on_build:
        read_api_token(a.api_token_file)
        if a.detector is not None:
            load_detector(a.detector)  # DetectorError (a ValueError) says what is wrong
        for name, path in a.models.items():
            try:
                load_model(path)
            except CheckpointError as e:
                raise CheckpointError(f"model {name!r}: {e}") from None
    return GanforgeServer.options(**_deployment_options(a)).bind(a.model_dump(mode="json"))
