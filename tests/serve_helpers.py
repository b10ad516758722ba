"""Tiny servable checkpoints for the serving tests (no training), and a generator that fails on
chosen seeds, to test how the app survives a failing batch."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
import torch

from ganforge.checkpoint import write_weights_checkpoint
from ganforge.config import GanforgeConfig
from ganforge.models import build_discriminator, build_generator

CLASSES = ["cat", "dog", "frog"]


def make_checkpoint(
    run_dir: Path,
    variant: str,
    *,
    width: int = 8,
    classes: list[str] | None = None,
    z_dim: int = 16,
    seed: int = 0,
    extra_meta: dict | None = None,
) -> Path:
    """A run dir `run_dir/checkpoints/step-000010` with random weights of the given variant."""
    torch.manual_seed(seed)
    wasserstein = variant.startswith(("wgan", "cwgan"))
    cfg = GanforgeConfig.model_validate(
        {
            "name": run_dir.name,
            "model": {
                "variant": variant,
                "width": width,
                "z_dim": z_dim,
                "embed_dim": 8,
                "num_classes": len(classes or []),
            },
            "loss": {"kind": "wasserstein" if wasserstein else "bce"},
        }
    )
    g, d = build_generator(cfg.model), build_discriminator(cfg.model)
    g_ema = build_generator(cfg.model)
    g_ema.load_state_dict(g.state_dict())
    (run_dir / "config.yaml").parent.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(cfg.to_yaml())
    root = run_dir / "checkpoints" / "step-000010"
    write_weights_checkpoint(root, cfg, g, g_ema, d, 10, 640, classes, extra_meta)
    return root


def make_detector(path: Path, temperature: float = 2.0, seed: int = 0) -> Path:
    """A random-weight deepfake detector with a record as `ganforge detect train` writes it
    (no training: serving only needs the file format). Its record names paths under /secret, as
    a real one names the run folders it was trained against: the API must not show them."""
    from ganforge.models.detector import Detector, save_detector

    torch.manual_seed(seed)
    module = Detector(3, (4, 8))
    figures = {"auc": 0.91, "accuracy": 0.84, "eer": 0.17, "tpr_at_1pct_fpr": 0.3}
    record = {
        "image_size": 32,
        "temperature": temperature,
        "preprocess": {"jpeg_quality": None},
        "fakes": ["cd"],
        "fake_origins": ["/secret/runs/cd/checkpoints/step-000010"],
        "real": {"data": "/secret/data/cifar10 (split train)", "train_images": 90},
        "validation": {
            "all": {**figures, "auc_ci": [0.85, 0.95], "num_real": 10, "num_fake": 10},
            "per_generator": {"cd": figures},
            "calibration": {
                "uncalibrated": {"nll": 0.6, "ece": 0.2},
                "calibrated": {"nll": 0.4, "ece": 0.05},
                "at_bound": False,
            },
        },
    }
    return save_detector(module, record, path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Requests with these seeds make `poison_generators`' forward pass raise.
FAIL_SEED = 666_001  # RuntimeError: one bad batch, the model itself is fine
OOM_SEED = 666_002  # torch.OutOfMemoryError


def poison_generators() -> None:
    """A Ray `worker_process_setup_hook`: in every worker of the test's Ray job (Serve replicas
    included), the generator's forward pass raises when its batch holds the first latent of
    FAIL_SEED or OOM_SEED (drawn as the app draws them). Every other batch runs unchanged."""
    from ganforge.models.generator import Generator
    from ganforge.serve.model_pool import sample_latents

    forward = Generator.forward
    markers: dict[int, dict[int, torch.Tensor]] = {}

    def poisoned(self, z, labels=None):
        by_seed = markers.setdefault(
            z.shape[1],
            {
                s: sample_latents(1, z.shape[1], torch.Generator().manual_seed(s), None)[0]
                for s in (FAIL_SEED, OOM_SEED)
            },
        )
        for seed, row in by_seed.items():
            if (z.detach().cpu() == row).all(dim=1).any():
                if seed == OOM_SEED:
                    raise torch.OutOfMemoryError("poisoned batch: pretend the device is full")
                raise RuntimeError(f"poisoned batch (seed {seed})")
        return forward(self, z, labels)

    Generator.forward = poisoned


def chromium_dom(url: str, budget_ms: int = 15000) -> tuple[str, str]:
    """(DOM, stderr) of `url` after headless Chromium ran its scripts for `budget_ms` of virtual
    time; skips the test when no Chromium is installed."""
    import shutil
    import subprocess

    import pytest

    names = ("chromium", "chromium-browser", "google-chrome")
    browser = next((shutil.which(b) for b in names if shutil.which(b)), None)
    if browser is None:
        pytest.skip(
            "no chromium binary on this machine (apt: `chromium`); the page is still "
            "served and its API calls are tested"
        )
    flags = ["--headless", "--no-sandbox", "--disable-gpu", f"--virtual-time-budget={budget_ms}"]
    out = subprocess.run(
        [browser, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120
    )
    return out.stdout, out.stderr


def _no_warning(queue) -> None:
    pass


class InProcessApp:
    """The real replica (GanforgeServer's own class, without Ray Serve's actor wrapper) and its
    HTTP app, called in process through an ASGI client: no Ray, no sockets.

    `@serve.batch` queues bind to the event loop of their first call, so every request runs on
    one loop, in a thread of its own. `request(...)` is synchronous (for hypothesis tests)."""

    def __init__(self, args: dict):
        import asyncio
        import threading

        import httpx
        from ray import serve
        from ray.serve import batching

        from ganforge.serve.deployment import GanforgeServer

        wrapper = GanforgeServer.func_or_class  # Serve's ingress subclass, with an async __init__
        cls = next(k for k in wrapper.__mro__[1:] if k.__qualname__ == "GanforgeServer")
        # `@serve.batch` keeps one queue per decorated function, bound to the event loop of its
        # first call: decorate the method afresh for each app, so that apps never share a queue
        # and the deployment class itself keeps none (a queue cannot be pickled for Ray).
        run_batch = serve.batch(cls._run_batch.__wrapped__)
        own = type("InProcessGanforgeServer", (cls,), {"_run_batch": run_batch})
        # The batch queue looks up the replica's max_ongoing_requests only to log a warning,
        # and fails outside a replica: skip that warning.
        batching._BatchQueue._warn_if_max_batch_size_exceeds_max_ongoing_requests = _no_warning
        self.replica = own({"validate_on_build": False, **args})
        self.app = self.replica.__serve_build_asgi_app__()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        transport = httpx.ASGITransport(app=self.app, raise_app_exceptions=False)
        self.client = httpx.AsyncClient(transport=transport, base_url="http://in-process")

    def request(self, method: str, url: str, timeout: float = 60, **kwargs):
        import asyncio

        call = self.client.request(method, url, **kwargs)
        return asyncio.run_coroutine_threadsafe(call, self.loop).result(timeout)

    def close(self) -> None:
        import asyncio

        async def shutdown() -> None:
            await self.client.aclose()
            # The metrics sampler and the batch loop run until cancelled.
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


def wait_ready(url: str, timeout: float = 60) -> None:
    """Poll `url` until it answers 200 (a Serve app finishing its start); TimeoutError after."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready after {timeout}s")
