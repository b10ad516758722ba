"""Rank 0's outputs: metrics.jsonl, TensorBoard events, Prometheus gauges, sample grids."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from ganforge.cluster.noise import fixed_sample_noise
from ganforge.images import array_to_png, make_grid
from ganforge.kernels import auto_choices
from ganforge.rundir import RunDir

PROM_GAUGES = {
    "step": "Generator steps completed",
    "images_seen": "Real images consumed by the critic (all ranks)",
    "images_per_second": "Real images through the critic per second (all ranks)",
    "step_seconds": "Wall time of the last generator step (incl. its critic steps)",
    "loss_d": "Discriminator/critic loss (mean over ranks)",
    "loss_g": "Generator loss (mean over ranks)",
    "gp": "Gradient penalty value (mean over ranks)",
    "input_wait_fraction": "Share of step time spent waiting for input batches",
    "checkpoint_seconds": "Wall time of the last checkpoint save",
    "restarts": "Worker-group restarts of this launch (from checkpoints)",
}


class PrometheusExporter:
    """`ganforge_train_*` gauges served by prometheus_client on rank 0."""

    def __init__(self, port: int):
        from prometheus_client import CollectorRegistry, Gauge, start_http_server

        self.registry = CollectorRegistry()
        self.gauges = {
            k: Gauge(f"ganforge_train_{k}", doc, registry=self.registry)
            for k, doc in PROM_GAUGES.items()
        }
        self.server, self.thread = start_http_server(port, registry=self.registry)

    # metrics.jsonl key -> gauge name where they differ
    RENAMES = {
        "images_per_s": "images_per_second",
        "input_wait_frac": "input_wait_fraction",
        "step_time_s": "step_seconds",
        "checkpoint_s": "checkpoint_seconds",
    }

    def set(self, values: dict[str, Any]) -> None:
        for k, v in values.items():
            k = self.RENAMES.get(k, k)
            if k in self.gauges and v is not None:
                self.gauges[k].set(float(v))

    def close(self) -> None:
        self.server.shutdown()


class RunLogger:
    """Everything rank 0 writes into the run directory while training."""

    def __init__(self, run: RunDir, metrics_port: int | None, restarts: int):
        from torch.utils.tensorboard import SummaryWriter

        self.run = run
        self.metrics_path = run.metrics_path
        self.tb = SummaryWriter(str(run.tensorboard))
        self.prom = PrometheusExporter(metrics_port) if metrics_port else None
        if self.prom:
            self.prom.set({"restarts": restarts})
        self.kernel_choices_logged = 0

    def log(self, record: dict[str, Any]) -> None:
        record = {"time": time.time(), **record}
        # What `kernels: auto` decided since the last record, each choice once (the checkpoint
        # markers list them all).
        choices = auto_choices()[self.kernel_choices_logged :]
        if choices:
            record["kernel_choices"] = choices
            self.kernel_choices_logged += len(choices)
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        step = record["step"]
        for k, v in record.items():
            if k not in ("step", "time") and isinstance(v, int | float):
                self.tb.add_scalar(f"train/{k}", v, step)
        if self.prom:
            self.prom.set(record)

    def gauge(self, **values: Any) -> None:
        if self.prom:
            self.prom.set(values)

    @torch.no_grad()
    def samples(
        self,
        generator: torch.nn.Module,
        step: int,
        z_dim: int,
        num_classes: int,
        device: torch.device,
    ) -> Path:
        z, labels, per_row = fixed_sample_noise(z_dim, num_classes)
        images = generator(z.to(device), None if labels is None else labels.to(device))
        grid = make_grid(images, nrow=per_row)
        # Next to the scalars in TensorBoard, where users look first (one row per class).
        self.tb.add_image("samples", grid, step, dataformats="HWC")
        path = self.run.sample_grid(step)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(array_to_png(grid))
        return path

    def sync(self) -> None:
        """Object-store run: upload the logs and samples written since the last sync."""
        if self.run.store:
            self.tb.flush()
            self.run.push_logs()

    def close(self) -> None:
        self.tb.close()
        self.sync()
        if self.prom:
            self.prom.close()
