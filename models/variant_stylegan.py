"""StyleGAN2 (Karras et al. 2020) and its class-conditional form, as StyleGAN2-ADA (Karras et al.
2020b) builds them at small resolutions; its CIFAR-10 configuration is the reference:

- G: mapping network of 2 layers (z, + label embedding) -> w, tracked mean w for truncation;
  synthesis from a constant 4x4 through modulated/demodulated convs with noise, 'skip' toRGBs.
- D: 'resnet' blocks with FIR downsampling, minibatch standard deviation (groups of 4), projection
  of a label mapping for the conditional variant (ADA's `cmap`).
- Non-saturating logistic loss (`BCE`), lazy R1 on reals (gamma 0.01, every 16 D steps),
  no path-length regularisation or style mixing (both off at 32x32 in ADA's CIFAR-10 config).
- Adam lr 0.0025, betas (0, 0.99); equalised learning rate in every layer; the G EMA measured in
  images (configs: `model.ema_kimg`, `model.ema_rampup`).

Networks: `stylegan_layers.py` (shared layers, mapping), `stylegan_generator.py`,
`stylegan_discriminator.py`. `model.width` sets the channels (see `stylegan_channels`),
`model.z_dim` both z and w, `model.embed_dim` the label embedding of G.
"""

from __future__ import annotations

from ganforge.config import ModelConfig, OptimizerConfig
from ganforge.models.losses import BCE
from ganforge.models.registry import VariantSpec, register_variant
from ganforge.models.regularisers import R1Penalty
from ganforge.models.stylegan_discriminator import StyleGAN2Discriminator
from ganforge.models.stylegan_generator import StyleGAN2Generator

MAPPING_LAYERS = 2  # StyleGAN2-ADA's CIFAR-10 (and 'auto') configs; 8 in the FFHQ paper configs
MBSTD_GROUP = 4  # StyleGAN2's default; ADA's CIFAR-10 config uses 32 with 32 images per GPU
ADAM_STYLEGAN2 = OptimizerConfig(name="adam", lr=0.0025, betas=(0.0, 0.99))


def build_stylegan2_generator(model: ModelConfig, conditional: bool = False) -> StyleGAN2Generator:
    return StyleGAN2Generator(
        model.z_dim,
        model.channels,
        model.resolution,
        model.width,
        model.num_classes if conditional else 0,
        model.embed_dim,
        mapping_layers=MAPPING_LAYERS,
        backend=model.kernels,
    )


def build_stylegan2_discriminator(
    model: ModelConfig, conditional: bool = False
) -> StyleGAN2Discriminator:
    return StyleGAN2Discriminator(
        model.channels,
        model.resolution,
        model.width,
        model.num_classes if conditional else 0,
        mapping_layers=MAPPING_LAYERS,
        mbstd_group=MBSTD_GROUP,
    )


def _conditional_generator(model: ModelConfig) -> StyleGAN2Generator:
    return build_stylegan2_generator(model, conditional=True)


def _conditional_discriminator(model: ModelConfig) -> StyleGAN2Discriminator:
    return build_stylegan2_discriminator(model, conditional=True)


STYLEGAN2 = register_variant(
    VariantSpec(
        name="stylegan2",
        build_generator=build_stylegan2_generator,
        build_discriminator=build_stylegan2_discriminator,
        loss=BCE,
        regularisers=(R1Penalty,),
        optim_g=ADAM_STYLEGAN2,
        optim_d=ADAM_STYLEGAN2,
        description="Karras et al. 2020: modulated convs, mapping network, lazy R1",
    )
)

CSTYLEGAN2 = register_variant(
    VariantSpec(
        name="cstylegan2",
        build_generator=_conditional_generator,
        build_discriminator=_conditional_discriminator,
        loss=BCE,
        regularisers=(R1Penalty,),
        conditional=True,
        optim_g=ADAM_STYLEGAN2,
        optim_d=ADAM_STYLEGAN2,
        description="conditional StyleGAN2: label embedding in the mapping, projection D",
    )
)
