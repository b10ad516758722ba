"""Typed configuration for ganforge: one tree, one docstring per field.

Precedence is CLI > YAML file > defaults. Each builder receives only its own section
(`ModelConfig` for models, `DataConfig` for the loader, ...). Unknown keys and wrong types fail
with a message that names the offending key and the file it came from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

Precision = Literal["fp32", "bf16", "fp16"]
KernelBackend = Literal["auto", "torch", "triton"]


class ConfigError(ValueError):
    """A configuration problem the user can fix; the message says what and where."""


class _Section(BaseModel):
    # extra="forbid" turns a typo in a YAML key into an error instead of a silent default.
    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, use_attribute_docstrings=True
    )


class DataConfig(_Section):
    urls: str | None = None
    """Shard URLs: a local path or brace pattern (`data/train-{000000..000009}.tar`), a directory
    holding `dataset.json`, `http(s)://...`, `file://...` or `pipe:CMD` (e.g. `pipe:aws s3 cp
    s3://bucket/x.tar -`). Several patterns may be joined with `::`. None = the embedded demo."""
    split: str = "train"
    """Which split of `dataset.json` to read when `urls` is a directory."""
    shuffle_buffer: int = Field(2000, ge=0)
    """Samples held in the shuffle buffer of each loader worker (0 disables shuffling)."""
    resample: bool = True
    """Draw shards with replacement (infinite stream): every rank gets the same number of batches,
    so no rank hangs in a collective at epoch end. False = one pass over each rank's own slice."""
    num_workers: int = Field(1, ge=0)
    """DataLoader worker processes per training worker (decode + augment)."""
    hflip: bool = True
    """Random horizontal flip augmentation."""
    on_error: Literal["skip", "raise"] = "skip"
    """What to do with a sample that fails to decode: count and skip it, or stop."""


class ModelConfig(_Section):
    variant: str = "dcgan"
    """Name of a registered GAN variant (`ganforge.models.list_variants()`: dcgan, cdcgan, wgan,
    wgan-gp, cwgan-gp, stylegan2, cstylegan2, ...). Checked against the registry by
    `ganforge.models.check_recipe` before training starts: this base layer does not import the
    models."""
    resolution: Literal[32, 64] = 32
    """Output image size (square). The number of up/down-sampling blocks follows from it."""
    channels: Literal[1, 3] = 3
    """Image channels; must match the dataset manifest."""
    num_classes: int = Field(0, ge=0)
    """Classes for conditional variants; 0 = take it from the dataset manifest."""
    z_dim: int = Field(128, ge=1)
    """Latent dimension of the generator input."""
    width: int = Field(64, ge=4)
    """Base channel width (the width multiplier): the widest layer has width * 2**(blocks-1)."""
    embed_dim: int = Field(64, ge=1)
    """Size of the label embedding concatenated to z in conditional generators."""
    ema_decay: float = Field(0.999, ge=0.0, lt=1.0)
    """Decay of the generator EMA used for sampling and serving (0 = copy the live weights)."""
    ema_kimg: float | None = Field(None, gt=0)
    """EMA half-life in thousands of images (StyleGAN2): decay = 0.5 ** (global batch / (1000 *
    ema_kimg)) per generator step, so it does not change with the batch size or worker count.
    Set, it replaces `ema_decay`; None = use `ema_decay`."""
    ema_rampup: float | None = Field(None, gt=0)
    """With `ema_kimg`: cap the half-life at this fraction of the images seen so far (StyleGAN2-ADA
    uses 0.05 on CIFAR-10), so the EMA of a short run is not dominated by its first weights."""
    kernels: KernelBackend = "auto"
    """Transposed-conv and gradient-penalty kernels: triton, torch (reference), or auto (on CUDA,
    per op, shape and dtype the faster of the two, measured once at first use after checking that
    Triton agrees with the reference; the reference elsewhere)."""

    @model_validator(mode="after")
    def _check_ema(self) -> ModelConfig:
        if self.ema_rampup is not None and self.ema_kimg is None:
            raise ValueError("model.ema_rampup needs model.ema_kimg (the half-life it caps)")
        return self


class OptimizerConfig(_Section):
    name: Literal["adam", "rmsprop"] = "adam"
    """Optimizer (DeepSpeed's own config entry is derived from this)."""
    lr: float = Field(2e-4, gt=0)
    """Learning rate per rank at the reference global batch (see `TrainConfig.lr_scaling`)."""
    betas: tuple[float, float] = (0.5, 0.999)
    """Adam betas (ignored by RMSprop)."""
    weight_decay: float = Field(0.0, ge=0)
    """L2 weight decay."""


class LossConfig(_Section):
    kind: str = "bce"
    """The variant's loss, named here as a check: bce = non-saturating BCE-with-logits (DCGAN),
    wasserstein = critic scores (WGAN family). The variant defines the loss;
    `ganforge.models.check_recipe` refuses a kind that is not the one its variant uses."""
    n_critic: int = Field(1, ge=1)
    """Discriminator/critic steps per generator step."""
    clip_value: float | None = None
    """Weight clipping of the critic after each step (original WGAN: 0.01). Read by the
    `WeightClipping` regulariser; a variant without it refuses the setting."""
    gp_lambda: float = Field(0.0, ge=0)
    """Gradient-penalty weight lambda (WGAN-GP: 10). 0 disables the penalty. Read by the
    `GradientPenalty` regulariser; a variant without it refuses a non-zero value."""
    gp_every: int = Field(1, ge=1)
    """Lazy regularisation: apply the penalty every k-th critic step, scaled by k (StyleGAN2)."""
    r1_gamma: float = Field(0.0, ge=0)
    """R1 weight gamma: gamma/2 * E[||grad_x D(x)||^2] on real images (StyleGAN2-ADA CIFAR-10:
    0.01). 0 disables it. Read by the `R1Penalty` regulariser; a variant without it refuses a
    non-zero value."""
    r1_every: int = Field(16, ge=1)
    """Lazy R1: apply it every k-th critic step, scaled by k (StyleGAN2: 16)."""


class TrainConfig(_Section):
    micro_batch: int = Field(64, ge=1)
    """Images per rank per step. Global batch = micro_batch x num_workers."""
    max_steps: int = Field(1000, ge=1)
    """Generator steps to train."""
    seed: int = 0
    """Seed for weights, noise and data order (per rank it is offset by the rank)."""
    precision: Precision = "fp32"
    """Training precision: bf16 runs on CPU and GPU; fp16 (dynamic loss scaling) needs a GPU."""
    zero_stage: Literal[0, 1, 2] = 0
    """DeepSpeed ZeRO stage for both engines."""
    grad_clip: float = Field(0.0, ge=0)
    """Gradient clipping by global norm (0 = off)."""
    lr_scaling: Literal["none", "linear", "sqrt"] = "none"
    """How the learning rate follows the global batch: lr * f(num_workers)."""
    log_every: int = Field(10, ge=1)
    """Steps between metric logs (metrics.jsonl, TensorBoard, Ray reports)."""
    sample_every: int = Field(200, ge=1)
    """Steps between fixed-noise sample grids."""
    checkpoint_every: int = Field(200, ge=1)
    """Steps between checkpoints (a final one is always written)."""
    keep_checkpoints: int = Field(3, ge=1)
    """Checkpoints kept by Ray Train (the newest ones)."""
    sync_batchnorm: bool = False
    """Synchronise BatchNorm statistics across ranks (the global batch behaves like one batch).
    False = per-rank statistics, as DDP does by default (cheaper; what DCGAN recipes assume)."""


class ClusterConfig(_Section):
    num_workers: int = Field(1, ge=1)
    """Ray Train workers (data-parallel ranks)."""
    gpu: bool = False
    """One GPU per worker (NCCL); otherwise CPU workers with gloo."""
    cpus_per_worker: int | None = Field(None, ge=1)
    """CPUs reserved per worker; also the torch thread count of each worker. None (or `auto`) =
    all CPUs of the local Ray node divided among the workers when `ganforge train` starts the
    cluster itself; on a cluster it joins (RAY_ADDRESS), 1 per worker, Ray Train's default. The
    value used is printed when training starts and in the run's summary."""

    @field_validator("cpus_per_worker", mode="before")
    @classmethod
    def _auto_cpus(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip().isdigit():
            if value.strip() == "auto":
                return None
            raise ValueError(f"expected a positive integer or 'auto', got {value!r}")
        return value

    max_failures: int = Field(2, ge=-1)
    """Worker-group restarts from the latest checkpoint before giving up (-1 = unlimited). A lost
    node counts as one failure (its worker dies with it)."""
    start_timeout_s: float | None = Field(None, gt=0)
    """How long the worker group may wait for its resources when it starts or restarts (after a
    lost node, say) before the run stops with an error that names the checkpoint to resume from.
    None = Ray Train's default: wait in tries of 60 s, forever, until the capacity comes back."""
    metrics_port: int | None = None
    """Port of rank 0's Prometheus endpoint (`ganforge_train_*`); None disables it."""


class GanforgeConfig(_Section):
    """The whole resolved configuration of a training run (saved as RUN_DIR/config.yaml)."""

    name: str = "run"
    """Run name, used for the default run directory `runs/<name>`."""
    run_dir: str | None = None
    """Where checkpoints, samples and metrics go; None = `runs/<name>`."""
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optim_g: OptimizerConfig = Field(default_factory=OptimizerConfig)
    optim_d: OptimizerConfig = Field(default_factory=OptimizerConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)

    @model_validator(mode="after")
    def _check_precision(self) -> GanforgeConfig:
        if self.train.precision == "fp16" and not self.cluster.gpu:
            # DeepSpeed's CPU accelerator refuses fp16 unless oneDNN has fp16 kernels for the CPU
            # (torch.ops.mkldnn._is_mkldnn_fp16_supported(), e.g. AMX-FP16; the driver cannot
            # see the workers' CPUs). bf16 is accepted on every CPU (tests/test_precision.py).
            raise ValueError(
                "train.precision=fp16 needs a GPU (cluster.gpu / --gpu): DeepSpeed's CPU "
                "accelerator accepts fp16 only on CPUs with oneDNN fp16 kernels; use "
                "train.precision=bf16 (or fp32) on CPU"
            )
        if self.train.precision == "fp16" and self.train.zero_stage == 0:
            # tests/test_precision.py checks the DeepSpeed bug is still there (a tripwire).
            raise ValueError(
                "train.precision=fp16 needs train.zero_stage >= 1: at ZeRO stage 0 DeepSpeed 0.19 "
                "never multiplies the loss by the loss scale yet divides the gradients by it, so "
                "updates come out ~65536x too small (deepspeedai/DeepSpeed PR 8393); use "
                "train.zero_stage=1, or train.precision=bf16"
            )
        if self.loss.clip_value and (self.train.zero_stage > 0 or self.train.precision != "fp32"):
            # Clipping clamps the module's weights in place; under ZeRO >= 1 or bf16/fp16
            # DeepSpeed keeps fp32 master copies and overwrites the module from them each step.
            raise ValueError(
                "loss.clip_value (WGAN weight clipping) needs train.zero_stage=0 and "
                "train.precision=fp32: DeepSpeed's fp32 master weights would undo the clipping; "
                "use wgan-gp for ZeRO or mixed precision"
            )
        return self

    def resolved_run_dir(self) -> Path:
        return Path(self.run_dir) if self.run_dir else Path("runs") / self.name

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def training_fingerprint(self) -> dict[str, Any]:
        """The fields a resumed run must share with the run it resumes (not budget or logging)."""
        d = self.model_dump(mode="json")
        d["model"].pop("kernels")  # the kernel backend does not change the maths
        return {k: d[k] for k in ("model", "optim_g", "optim_d", "loss")} | {
            "micro_batch": self.train.micro_batch,
            "seed": self.train.seed,
        }


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(
                f"  - unknown key '{loc}' (check the spelling; the fields are documented in "
                "ganforge/config.py and used in configs/*.yaml)"
            )
        else:
            got = e.get("input")
            got_s = f" (got {got!r})" if got is not None and not isinstance(got, dict) else ""
            lines.append(f"  - {loc}: {e['msg']}{got_s}")
    return "\n".join(lines)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{dotted}': '{k}' is not a section")
    node[keys[-1]] = value


def parse_override(item: str) -> tuple[str, Any]:
    """`train.max_steps=100` -> ('train.max_steps', 100); the value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like section.key=value")
    key, raw = item.split("=", 1)
    return key.strip(), yaml.safe_load(raw)


def cli_overrides(sets: list[str], flags: dict[str, Any]) -> dict[str, Any]:
    """A command's overrides: its `--set key=value` items, then the dedicated flags that were
    given on top (a flag left out is None and leaves the `--set` value, or the file's, alone).
    Precedence: flag > --set > file > defaults."""
    overrides = dict(parse_override(s) for s in sets)
    # Never `overrides |= flags`: an absent flag's None would erase its key's --set value
    # (`--set cluster.cpus_per_worker=2` once trained on one thread that way).
    overrides |= {key: value for key, value in flags.items() if value is not None}
    return overrides


def load_config(
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> GanforgeConfig:
    """Read a YAML config, apply dotted overrides (`{"train.max_steps": 10}`), validate.

    Overrides whose value is None are ignored, so CLI options that were not given fall through.
    """
    tree: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p} is not valid YAML: {e}") from e
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p} must hold a mapping of sections, got {type(loaded).__name__}")
        tree = loaded
        source = str(p)
    for key, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(tree, key, value)
    try:
        return GanforgeConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, source)) from None


def packaged_config_dir() -> Path:
    """Configs shipped inside the package (copies of the repository's `configs/`)."""
    import ganforge.configs  # configs/ is mapped to this data-only package (pyproject)

    return Path(ganforge.configs.__file__).parent


def resolve_config_path(name_or_path: str | Path) -> Path:
    """Accept a path, or the bare name of a shipped config (`cwgan-gp` -> configs/cwgan-gp.yaml)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    for base in (Path("configs"), packaged_config_dir()):
        cand = base / (p.name if p.suffix else f"{p.name}.yaml")
        if cand.is_file():
            return cand
    raise ConfigError(f"config not found: {name_or_path} (a YAML path or one of the shipped names)")
