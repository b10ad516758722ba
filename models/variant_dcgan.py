"""DCGAN (Radford et al. 2015) and its class-conditional form, on the DCGAN networks.

The networks' builders live here and the WGAN family reuses them: the WGAN papers kept the DCGAN
architecture and changed the loss, the critic's normalisation and the regularisers.
"""

from __future__ import annotations

from ganforge.config import ModelConfig
from ganforge.models.discriminator import Discriminator
from ganforge.models.generator import Generator
from ganforge.models.losses import BCE
from ganforge.models.registry import VariantSpec, register_variant


def build_dcgan_generator(model: ModelConfig, conditional: bool = False) -> Generator:
    """DCGAN generator; conditional: a label embedding concatenated to z."""
    return Generator(
        model.z_dim,
        model.channels,
        model.resolution,
        model.width,
        model.num_classes if conditional else 0,
        model.embed_dim,
        backend=model.kernels,
    )


def build_dcgan_discriminator(
    model: ModelConfig, conditional: bool = False, norm: str = "batch"
) -> Discriminator:
    """DCGAN discriminator/critic; `norm`: batch | layer | none; conditional: projection."""
    return Discriminator(
        model.channels,
        model.resolution,
        model.width,
        model.num_classes if conditional else 0,
        norm=norm,
    )


def _conditional_generator(model: ModelConfig) -> Generator:
    return build_dcgan_generator(model, conditional=True)


def _conditional_discriminator(model: ModelConfig) -> Discriminator:
    return build_dcgan_discriminator(model, conditional=True)


DCGAN = register_variant(
    VariantSpec(
        name="dcgan",
        build_generator=build_dcgan_generator,
        build_discriminator=build_dcgan_discriminator,
        loss=BCE,
        description="Radford et al. 2015, BCE loss",
    )
)

CDCGAN = register_variant(
    VariantSpec(
        name="cdcgan",
        build_generator=_conditional_generator,
        build_discriminator=_conditional_discriminator,
        loss=BCE,
        conditional=True,
        description="conditional DCGAN: z+label embedding, projection D",
    )
)
