"""Shared bits of the benchmarks: environment facts recorded with every result."""

from __future__ import annotations

import datetime as _dt
import platform
import sys
from typing import Any


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def environment() -> dict[str, Any]:
    import os

    import torch

    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for mod in ("ray", "deepspeed", "webdataset", "triton"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # absent or broken optional dependency: record, do not fail
            versions[mod] = None
    return {
        "device": device_name(),
        "cpu_count": os.cpu_count(),
        "versions": versions,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
    }
