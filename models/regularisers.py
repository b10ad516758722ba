"""Critic regularisers: what the critic step applies besides the loss.

A `Regulariser` may add a penalty to the critic loss (`penalty`, on every `every`-th critic step)
and/or act on D after its optimiser step (`after_step`, e.g. weight clipping). A variant lists
the regulariser classes it is defined by; each class builds itself from the `loss` config
section and says which settings a recipe needs (or must leave off when the variant does not use
it). The engines only call the interface, so a new regulariser (e.g. StyleGAN2's lazy R1 below)
is a new subclass here or in its variant's module, plus its fields in `LossConfig`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
from torch import nn

from ganforge.config import LossConfig, ModelConfig
from ganforge.kernels import gradient_penalty


@dataclass(frozen=True)
class CriticBatch:
    """What a penalty may look at on one critic step (D's device, the training dtype)."""

    critic: Callable[[torch.Tensor], torch.Tensor]
    """x [B, C, H, W] -> float32 scores [B] through D's raw module, with the real batch's labels.
    Differentiable twice: penalties take gradients of it with respect to x."""
    real: torch.Tensor
    """Real images [B, C, H, W]."""
    fake: torch.Tensor
    """Generated images [B, C, H, W], produced without a graph."""
    eps: torch.Tensor
    """Interpolation weights [B] drawn from this step's noise (reproducible on resume)."""


class Penalty(NamedTuple):
    value: torch.Tensor
    """0-d float32 term added to the critic loss (already weighted)."""
    grad_norm: torch.Tensor | None = None
    """Detached mean gradient norm, logged as `grad_norm` (None: nothing to report)."""


class Regulariser:
    """The interface. The engine, on critic step s (counted from 0, kept across resumes):

    - calls `penalty(batch, weight * every)` when `s % every == 0` and adds the result to the
      loss. Lazy regularisation (StyleGAN2, Karras et al. 2020, section 4): a penalty applied
      every k-th step is weighted by k so its expected gradient stays the same.
    - calls `after_step(d)` with D's raw module after every D optimiser step.
    """

    adds_penalty: ClassVar[bool] = False
    """True when `penalty` returns a term (the run logs `gp`/`grad_norm` on those steps)."""
    recipe_defaults: ClassVar[dict[str, Any]] = {}
    """`loss.*` settings of the published recipe, e.g. {"gp_lambda": 10.0}."""

    weight: float = 0.0
    every: int = 1

    @classmethod
    def from_config(cls, loss: LossConfig, model: ModelConfig) -> Regulariser | None:
        """Build from the config; None when the config switches this regulariser off."""
        raise NotImplementedError

    @classmethod
    def recipe_problems(cls, loss: LossConfig) -> list[str]:
        """What is wrong with `loss` for a variant defined by this regulariser."""
        return []

    @classmethod
    def unused_problems(cls, loss: LossConfig) -> list[str]:
        """What is wrong with `loss` for a registered variant that does not use this one."""
        return []

    def penalty(self, batch: CriticBatch, weight: float) -> Penalty | None:
        return None

    def after_step(self, d: nn.Module) -> None:
        return None


class GradientPenalty(Regulariser):
    """WGAN-GP (Gulrajani et al. 2017): lambda * E[(||grad_x D(x_hat)||_2 - 1)^2] on x_hat =
    eps * real + (1 - eps) * fake, through `ganforge.kernels.gradient_penalty` (Triton or torch,
    per `model.kernels`). Settings: `loss.gp_lambda` (0 = off), `loss.gp_every`."""

    adds_penalty = True
    recipe_defaults = {"gp_lambda": 10.0}

    def __init__(self, weight: float, every: int, backend: str):
        self.weight, self.every, self.backend = weight, every, backend

    @classmethod
    def from_config(cls, loss: LossConfig, model: ModelConfig) -> GradientPenalty | None:
        return cls(loss.gp_lambda, loss.gp_every, model.kernels) if loss.gp_lambda > 0 else None

    @classmethod
    def recipe_problems(cls, loss: LossConfig) -> list[str]:
        if loss.gp_lambda <= 0:
            return ["loss.gp_lambda must be > 0 (the gradient penalty defines this variant)"]
        return []

    @classmethod
    def unused_problems(cls, loss: LossConfig) -> list[str]:
        if loss.gp_lambda > 0:
            return ["loss.gp_lambda must be 0: the penalty assumes a critic without BatchNorm"]
        return []

    def penalty(self, batch: CriticBatch, weight: float) -> Penalty:
        value, mean_norm = gradient_penalty(
            batch.critic, batch.real, batch.fake, weight, eps=batch.eps, backend=self.backend
        )
        return Penalty(value, mean_norm)


class WeightClipping(Regulariser):
    """The original WGAN (Arjovsky et al. 2017): clamp every critic weight to [-c, c] after each
    step, a crude Lipschitz bound. Setting: `loss.clip_value` (None = off). The config refuses
    it under ZeRO or mixed precision, whose fp32 master weights would undo the clamp."""

    recipe_defaults = {"clip_value": 0.01}

    def __init__(self, clip_value: float):
        self.clip_value = clip_value

    @classmethod
    def from_config(cls, loss: LossConfig, model: ModelConfig) -> WeightClipping | None:
        return cls(loss.clip_value) if loss.clip_value else None

    @classmethod
    def recipe_problems(cls, loss: LossConfig) -> list[str]:
        if not loss.clip_value:
            return ["loss.clip_value must be set (original WGAN clips the critic, c=0.01)"]
        return []

    @classmethod
    def unused_problems(cls, loss: LossConfig) -> list[str]:
        if loss.clip_value:
            return ["loss.clip_value must be unset: this variant does not clip the critic"]
        return []

    def after_step(self, d: nn.Module) -> None:
        with torch.no_grad():
            for p in d.parameters():
                p.clamp_(-self.clip_value, self.clip_value)


class R1Penalty(Regulariser):
    """R1 (Mescheder et al. 2018), as StyleGAN2 applies it: gamma/2 * E[||grad_x D(x)||^2] on
    real images only, lazily (every `loss.r1_every`-th critic step, weighted by that interval).
    Settings: `loss.r1_gamma` (0 = off), `loss.r1_every`. The gradient is taken through D's raw
    module on a fresh forward of the reals (DeepSpeed rejects an inner autograd.grad through the
    engine's outputs)."""

    adds_penalty = True
    recipe_defaults = {"r1_gamma": 0.01, "r1_every": 16}  # StyleGAN2-ADA's CIFAR-10 config

    def __init__(self, gamma: float, every: int):
        self.weight, self.every = gamma / 2, every

    @classmethod
    def from_config(cls, loss: LossConfig, model: ModelConfig) -> R1Penalty | None:
        return cls(loss.r1_gamma, loss.r1_every) if loss.r1_gamma > 0 else None

    @classmethod
    def recipe_problems(cls, loss: LossConfig) -> list[str]:
        if loss.r1_gamma <= 0:
            return ["loss.r1_gamma must be > 0 (R1 on reals regularises this variant's D)"]
        return []

    @classmethod
    def unused_problems(cls, loss: LossConfig) -> list[str]:
        if loss.r1_gamma > 0:
            return ["loss.r1_gamma must be 0: this variant does not use the R1 penalty"]
        return []

    def penalty(self, batch: CriticBatch, weight: float) -> Penalty:
        real = batch.real.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(batch.critic(real).sum(), real, create_graph=True)
        sq_norms = grad.flatten(1).float().square().sum(dim=1)
        return Penalty(weight * sq_norms.mean(), sq_norms.sqrt().mean().detach())
