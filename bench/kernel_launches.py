"""Every Triton launch the shipped configs and the serving path make, recorded without a GPU.

The real models run on meta tensors (shapes and dtypes, no data: nothing is computed, in any
dtype) with `model.kernels: triton` inside `ganforge.kernels.launch.record_launches()`: each
launcher chooses its configuration as it would on a GPU and hands the `KernelLaunch` over
instead of running it. Integer buffers (step counters a model may read on the host) stay on the
CPU. Running the PyTorch layers on CPU tensors instead took minutes per StyleGAN2 step here.
Recorded per problem:

- train: for every training config in configs/ and every precision it accepts (fp32, bf16,
  fp16; the WGAN weight-clipping recipe refuses mixed precision), one critic step and one
  generator step as `cluster/engines.py` runs them, at the config's micro-batch: G's forward
  without a graph, D's loss plus the variant's penalties, backward; then G's forward and
  backward through D with D frozen. DeepSpeed's bf16/fp16 engines hold the parameters in that
  dtype. A step whose training-mode bookkeeping has a data-dependent op (no meta kernel) is
  recorded in eval mode instead (`Problem.mode`), see `record`.
- samples: the fp32 EMA generator on the training loop's fixed sample-grid noise.
- serve: the fp32 EMA generator in eval and inference mode, as `serve/model_pool.py` calls it,
  at every batch size from 1 to the max_batch_size of configs/serve.yaml.

Needs TRITON_INTERPRET unset: the launchers then use the GPU's block caps (the interpreter's are
larger) and the kernels are compilable `JITFunction`s.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterator
from pathlib import Path

import torch
import yaml

from ganforge.config import GanforgeConfig, load_config
from ganforge.kernels.launch import KernelLaunch, record_launches

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
NUM_CLASSES = 10  # conditional configs take theirs from the manifest (0 here); CIFAR-10's


class Problem:
    """One recorded situation: config, precision, phase (train / samples / serve), batch."""

    def __init__(self, config: str, precision: str, phase: str, batch: int):
        self.config, self.precision, self.phase, self.batch = config, precision, phase, batch
        self.mode = "train"  # "eval" when training-mode bookkeeping cannot run on meta tensors

    def __str__(self) -> str:
        return f"{self.config}:{self.precision}:{self.phase}:b{self.batch}"


def training_configs() -> dict[str, Path]:
    """name -> path of every shipped training config (configs/serve.yaml is a Serve config)."""
    out = {}
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        tree = yaml.safe_load(path.read_text()) or {}
        if "applications" not in tree:
            out[path.stem] = path
    return out


def serve_max_batch_size() -> int:
    """The largest `max_batch_size` of configs/serve.yaml's applications (AppArgs' default 32)."""
    tree = yaml.safe_load((CONFIG_DIR / "serve.yaml").read_text())
    sizes = [int(app.get("args", {}).get("max_batch_size", 32)) for app in tree["applications"]]
    return max(sizes)


def load(path: Path, precision: str) -> GanforgeConfig | None:
    """The config at `precision` with the Triton kernels; None when the config refuses it (WGAN
    weight clipping is fp32-only). fp16 needs ZeRO stage >= 1, which changes no kernel launch."""
    overrides = {"model.kernels": "triton", "cluster.gpu": True, "train.precision": precision}
    try:
        cfg = load_config(path, overrides)
    except ValueError:
        if precision != "fp16":
            return None
        try:
            cfg = load_config(path, overrides | {"train.zero_stage": 1})
        except ValueError:
            return None
    if cfg.model.num_classes == 0:
        cfg.model.num_classes = NUM_CLASSES
    return cfg


def _labels(conditional: bool, batch: int, device: str) -> torch.Tensor | None:
    return torch.zeros(batch, dtype=torch.long, device=device) if conditional else None


def _place(module: torch.nn.Module, dtype: torch.dtype, device: str) -> torch.nn.Module:
    """Hold `module` as DeepSpeed 0.19's bf16/fp16 engines do: parameters in `dtype`, floating
    buffers (BatchNorm statistics, tracked means) kept in fp32, on `device`. Integer buffers
    (counters a model may read on the host) stay on the CPU."""
    params = {id(p) for p in module.parameters()}

    def move(t: torch.Tensor) -> torch.Tensor:
        if not t.is_floating_point():
            return t
        return t.to(device, dtype if id(t) in params else t.dtype)

    return module._apply(move)


def _train_step(cfg: GanforgeConfig, dtype: torch.dtype, training: bool) -> None:
    """A critic step and a generator step, as `cluster.engines.GANEngines` runs them, with the
    modules in training mode unless `training` is False."""
    from ganforge.models.registry import get_variant
    from ganforge.models.regularisers import CriticBatch

    spec = get_variant(cfg.model.variant)
    g = _place(spec.build_generator(cfg.model), dtype, "meta").train(training)
    d = _place(spec.build_discriminator(cfg.model), dtype, "meta").train(training)
    b, m = cfg.train.micro_batch, cfg.model
    y = _labels(spec.conditional, b, "meta")
    z = torch.empty(b, m.z_dim, device="meta", dtype=dtype)
    real = torch.empty(b, m.channels, m.resolution, m.resolution, device="meta", dtype=dtype)
    eps = torch.empty(b, device="meta", dtype=dtype)
    with torch.no_grad():
        fake = g(z, y)
    loss = spec.loss.d_loss(d(real, y).float(), d(fake, y).float())
    batch = CriticBatch(lambda x: d(x, y).float(), real, fake, eps)
    for reg in spec.build_regularisers(cfg.loss, cfg.model):
        out = reg.penalty(batch, reg.weight * reg.every)
        if out is not None:
            loss = loss + out.value
    loss.backward()
    d.requires_grad_(False)
    spec.loss.g_loss(d(g(z, y), y).float()).backward()


@functools.cache
def _ema_generator(path: Path) -> torch.nn.Module:
    """The fp32 EMA generator of a config, built once for all batch sizes."""
    from ganforge.models.registry import build_generator

    g = build_generator(load(path, "fp32").model)
    return _place(copy.deepcopy(g), torch.float32, "meta").eval().requires_grad_(False)


def _forward(g: torch.nn.Module, cfg: GanforgeConfig, batch: int) -> None:
    y = _labels(g.num_classes > 0, batch, "meta")
    with torch.inference_mode():
        g(torch.empty(batch, cfg.model.z_dim, device="meta"), y)


def sample_grid_batch(cfg: GanforgeConfig) -> int:
    """Images in the training loop's sample grid (`cluster.noise.fixed_sample_noise`)."""
    from ganforge.cluster.noise import fixed_sample_noise

    z, _, _ = fixed_sample_noise(cfg.model.z_dim, cfg.model.num_classes)
    return len(z)


def record(problem: Problem, path: Path) -> list[KernelLaunch]:
    """The launches of one problem (an empty list when the config refuses its precision)."""
    cfg = load(path, problem.precision)
    if cfg is None:
        return []
    if problem.phase != "train":
        with record_launches() as launches:
            _forward(_ema_generator(path), cfg, problem.batch)
        return launches
    try:
        with record_launches() as launches:
            _train_step(cfg, DTYPES[problem.precision], training=True)
    except (NotImplementedError, RuntimeError) as e:
        # Training-only bookkeeping with a data-dependent op (a conditional mapping network's
        # per-class means: bincount, boolean indexing) has no meta kernel. The step runs again in
        # eval mode, which skips it; no shipped model launches different kernels in eval mode
        # (the modes differ in noise, BatchNorm statistics and running means only).
        if "meta" not in str(e).lower():
            raise
        problem.mode = "eval"
        with record_launches() as launches:
            _train_step(cfg, DTYPES[problem.precision], training=False)
    return launches


def problems() -> Iterator[tuple[Problem, Path]]:
    """Every problem of the shipped configs, in a stable order."""
    serve_max = serve_max_batch_size()
    for name, path in training_configs().items():
        cfg = load(path, "fp32")
        if cfg is None:
            continue
        for precision in DTYPES:
            yield Problem(name, precision, "train", cfg.train.micro_batch), path
        yield Problem(name, "fp32", "samples", sample_grid_batch(cfg)), path
        for batch in range(1, serve_max + 1):
            yield Problem(name, "fp32", "serve", batch), path
