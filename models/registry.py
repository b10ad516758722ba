"""The registry of GAN variants: one `VariantSpec` per name says everything training needs.

A spec (in the spirit of torchtitan's `TrainSpec`) bundles how to build G and D, the loss
(`GANLoss`: d_loss and g_loss), the critic regularisers (`Regulariser` classes: gradient penalty,
weight clipping, ...), and the published recipe's n_critic and optimisers. The engines call the
spec and never name a variant, a loss kind or a regulariser setting.

Adding a variant = one new module `models/variant_<family>.py` that builds its `VariantSpec` and
calls `register_variant(spec)` at import (`ganforge.models` imports every `variant_*` module in
its folder), plus its config file `configs/<name>.yaml`. A new loss is a `GANLoss` and a new
regulariser a `Regulariser` subclass, in that module or shared in `losses.py` /
`regularisers.py`; settings a regulariser reads are fields of `LossConfig` (with docstrings).

Config validation: `ganforge.config` is the base layer and cannot see this registry, so
`model.variant` and `loss.kind` are plain strings there. `check_recipe` (called by the launcher
before any worker starts) refuses a name that is not registered, listing the registered ones, and
any setting that contradicts the variant.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ganforge.config import LossConfig, ModelConfig, OptimizerConfig
from ganforge.models.losses import GANLoss
from ganforge.models.regularisers import Regulariser

VARIANT_MODULE_PREFIX = "variant_"


@dataclass(frozen=True)
class VariantSpec:
    """A GAN variant. G and D are single-device `nn.Module`s built from the `model` section:

    - G: `g(z [B, z_dim], labels [B] | None) -> images [B, C, H, W]`, in [-1, 1] in eval mode
      (training may use a linear output, as StyleGAN2 does), with an attribute `num_classes`
      (0 = unconditional), deep-copyable (the EMA copies it, buffers included). A generator that
      truncates in its own latent space (StyleGAN2: toward the tracked mean w) sets the class
      attribute `truncation_space = "w"` and accepts `g(z, labels, truncation=psi)`, psi a number
      or one per sample [B]; serving then passes the request's truncation through instead of
      truncating z.
    - D: `d(images, labels | None) -> scores [B]`, differentiable twice when a regulariser
      penalises its input gradient.
    """

    name: str
    """Registered name, the value of `model.variant`."""
    build_generator: Callable[[ModelConfig], nn.Module]
    build_discriminator: Callable[[ModelConfig], nn.Module]
    loss: GANLoss
    """The objective; `loss.kind` in a config must name it."""
    regularisers: tuple[type[Regulariser], ...] = ()
    """Regularisers that define the variant; each is built per run from the `loss` section."""
    conditional: bool = False
    """G and D take class labels (needs `model.num_classes` >= 2)."""
    n_critic: int = 1
    """Critic steps per generator step in the published recipe."""
    optim_g: OptimizerConfig = field(default_factory=OptimizerConfig)
    """The published recipe's generator optimiser."""
    optim_d: OptimizerConfig = field(default_factory=OptimizerConfig)
    """The published recipe's critic optimiser."""
    description: str = ""

    @property
    def has_penalty(self) -> bool:
        """Some regulariser adds a penalty to the critic loss (logged as `gp`, `grad_norm`)."""
        return any(r.adds_penalty for r in self.regularisers)

    def build_regularisers(self, loss: LossConfig, model: ModelConfig) -> list[Regulariser]:
        """The regularisers this run applies (those the config switches on), in spec order."""
        built = (r.from_config(loss, model) for r in self.regularisers)
        return [r for r in built if r is not None]

    def recipe(self) -> dict[str, Any]:
        """The published recipe as dotted overrides: `load_config(None, spec.recipe())`."""
        out: dict[str, Any] = {
            "model.variant": self.name,
            "loss.kind": self.loss.name,
            "loss.n_critic": self.n_critic,
        }
        for section, optim in (("optim_g", self.optim_g), ("optim_d", self.optim_d)):
            out |= {f"{section}.{k}": v for k, v in optim.model_dump().items()}
        for reg in self.regularisers:
            out |= {f"loss.{k}": v for k, v in reg.recipe_defaults.items()}
        return out


VARIANTS: dict[str, VariantSpec] = {}
"""Registered variants by name, in registration order (filled by the `variant_*` modules)."""


def register_variant(spec: VariantSpec) -> VariantSpec:
    """Add `spec` under `spec.name` (a name may be registered once); returns `spec`."""
    if spec.name in VARIANTS:
        raise ValueError(f"model.variant {spec.name!r} is already registered")
    VARIANTS[spec.name] = spec
    return spec


def list_variants() -> list[str]:
    """Registered variant names, in registration order."""
    return list(VARIANTS)


def get_variant(name: str) -> VariantSpec:
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(
            f"unknown model.variant {name!r}; registered variants: {', '.join(VARIANTS)}"
        ) from None


def import_variant_modules(package: str = "ganforge.models") -> None:
    """Import every `variant_*` module of `package` (each registers its variants)."""
    pkg = importlib.import_module(package)
    for info in pkgutil.iter_modules(pkg.__path__):  # sorted by name: a stable registry order
        if info.name.startswith(VARIANT_MODULE_PREFIX):
            importlib.import_module(f"{package}.{info.name}")


def _registered_regularisers() -> list[type[Regulariser]]:
    seen: dict[type[Regulariser], None] = {}
    for spec in VARIANTS.values():
        seen |= dict.fromkeys(spec.regularisers)
    return list(seen)


def check_recipe(model: ModelConfig, loss: LossConfig) -> None:
    """Refuse configs that contradict the variant (e.g. wgan-gp without a penalty)."""
    spec = get_variant(model.variant)
    problems = []
    if loss.kind != spec.loss.name:
        problems.append(f"loss.kind must be {spec.loss.name!r} (got {loss.kind!r})")
    for reg in _registered_regularisers():
        if reg in spec.regularisers:
            problems += reg.recipe_problems(loss)
        else:
            problems += reg.unused_problems(loss)
    if spec.conditional and model.num_classes < 2:
        problems.append("a conditional variant needs model.num_classes >= 2 (or a manifest)")
    if problems:
        raise ValueError(f"model.variant={model.variant}: " + "; ".join(problems))


def build_generator(model: ModelConfig) -> nn.Module:
    return get_variant(model.variant).build_generator(model)


def build_discriminator(model: ModelConfig) -> nn.Module:
    return get_variant(model.variant).build_discriminator(model)
