"""The WGAN family on the DCGAN networks: WGAN (weight clipping), WGAN-GP and conditional WGAN-GP.

The critic of the gradient-penalty variants uses LayerNorm: the penalty is taken per sample, and
BatchNorm would couple the samples of a batch (Gulrajani et al. 2017, section 4).
"""

from __future__ import annotations

from ganforge.config import ModelConfig, OptimizerConfig
from ganforge.models.discriminator import Discriminator
from ganforge.models.generator import Generator
from ganforge.models.losses import WASSERSTEIN
from ganforge.models.registry import VariantSpec, register_variant
from ganforge.models.regularisers import GradientPenalty, WeightClipping
from ganforge.models.variant_dcgan import build_dcgan_discriminator, build_dcgan_generator

# Arjovsky et al. 2017, algorithm 1: RMSprop, lr 5e-5 (momentum-based optimisers were unstable).
RMSPROP = OptimizerConfig(name="rmsprop", lr=5e-5)
# Gulrajani et al. 2017, algorithm 1: Adam, lr 1e-4, betas (0, 0.9).
ADAM_GP = OptimizerConfig(name="adam", lr=1e-4, betas=(0.0, 0.9))


def _layer_norm_critic(model: ModelConfig) -> Discriminator:
    return build_dcgan_discriminator(model, norm="layer")


def _conditional_generator(model: ModelConfig) -> Generator:
    return build_dcgan_generator(model, conditional=True)


def _conditional_layer_norm_critic(model: ModelConfig) -> Discriminator:
    return build_dcgan_discriminator(model, conditional=True, norm="layer")


WGAN = register_variant(
    VariantSpec(
        name="wgan",
        build_generator=build_dcgan_generator,
        build_discriminator=build_dcgan_discriminator,
        loss=WASSERSTEIN,
        regularisers=(WeightClipping,),
        n_critic=5,
        optim_g=RMSPROP,
        optim_d=RMSPROP,
        description="Arjovsky et al. 2017: weight clipping, RMSprop",
    )
)

WGAN_GP = register_variant(
    VariantSpec(
        name="wgan-gp",
        build_generator=build_dcgan_generator,
        build_discriminator=_layer_norm_critic,
        loss=WASSERSTEIN,
        regularisers=(GradientPenalty,),
        n_critic=5,
        optim_g=ADAM_GP,
        optim_d=ADAM_GP,
        description="Gulrajani et al. 2017: gradient penalty, LayerNorm critic",
    )
)

CWGAN_GP = register_variant(
    VariantSpec(
        name="cwgan-gp",
        build_generator=_conditional_generator,
        build_discriminator=_conditional_layer_norm_critic,
        loss=WASSERSTEIN,
        regularisers=(GradientPenalty,),
        conditional=True,
        n_critic=5,
        optim_g=ADAM_GP,
        optim_d=ADAM_GP,
        description="conditional WGAN-GP: label embedding in G, projection critic",
    )
)
