"""The registry of GAN variants: what each name builds and which training recipe it expects."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ganforge.config import LossConfig, ModelConfig
from ganforge.models.discriminator import Discriminator
from ganforge.models.generator import Generator


@dataclass(frozen=True)
class VariantSpec:
    """A GAN variant: conditioning, critic normalisation and the loss family it is defined by."""

    name: str
    conditional: bool
    d_norm: str  # batch | layer | none
    loss_kind: str  # bce | wasserstein
    needs_gp: bool = False
    needs_clip: bool = False
    description: str = ""


VARIANTS: dict[str, VariantSpec] = {
    v.name: v
    for v in [
        VariantSpec("dcgan", False, "batch", "bce", description="Radford et al. 2015, BCE loss"),
        VariantSpec(
            "cdcgan",
            True,
            "batch",
            "bce",
            description="conditional DCGAN: z+label embedding, projection D",
        ),
        VariantSpec(
            "wgan",
            False,
            "batch",
            "wasserstein",
            needs_clip=True,
            description="Arjovsky et al. 2017: weight clipping, RMSprop",
        ),
        VariantSpec(
            "wgan-gp",
            False,
            "layer",
            "wasserstein",
            needs_gp=True,
            description="Gulrajani et al. 2017: gradient penalty, LayerNorm critic",
        ),
        VariantSpec(
            "cwgan-gp",
            True,
            "layer",
            "wasserstein",
            needs_gp=True,
            description="conditional WGAN-GP: label embedding in G, projection critic",
        ),
    ]
}


def get_variant(name: str) -> VariantSpec:
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(
            f"unknown model.variant {name!r}; registered variants: {', '.join(VARIANTS)}"
        ) from None


def check_recipe(model: ModelConfig, loss: LossConfig) -> None:
    """Refuse configs that contradict the variant (e.g. wgan-gp without a penalty)."""
    spec = get_variant(model.variant)
    problems = []
    if loss.kind != spec.loss_kind:
        problems.append(f"loss.kind must be {spec.loss_kind!r} (got {loss.kind!r})")
    if spec.needs_gp and loss.gp_lambda <= 0:
        problems.append("loss.gp_lambda must be > 0 (the gradient penalty defines this variant)")
    if not spec.needs_gp and loss.gp_lambda > 0:
        problems.append("loss.gp_lambda must be 0: the penalty assumes a critic without BatchNorm")
    if spec.needs_clip and not loss.clip_value:
        problems.append("loss.clip_value must be set (original WGAN clips the critic, c=0.01)")
    if spec.conditional and model.num_classes < 2:
        problems.append("a conditional variant needs model.num_classes >= 2 (or a manifest)")
    if problems:
        raise ValueError(f"model.variant={model.variant}: " + "; ".join(problems))


def num_classes_for(model: ModelConfig) -> int:
    return model.num_classes if get_variant(model.variant).conditional else 0


def build_generator(model: ModelConfig) -> Generator:
    return Generator(
        model.z_dim,
        model.channels,
        model.resolution,
        model.width,
        num_classes_for(model),
        model.embed_dim,
        backend=model.kernels,
    )


def build_discriminator(model: ModelConfig) -> nn.Module:
    spec = get_variant(model.variant)
    return Discriminator(
        model.channels, model.resolution, model.width, num_classes_for(model), norm=spec.d_norm
    )
