"""GAN generators, discriminators/critics, losses and the variant registry.

Single-device code: imports neither ray, deepspeed nor torch.distributed.
"""

from ganforge.models.registry import (
    VARIANTS,
    build_discriminator,
    build_generator,
    check_recipe,
    get_variant,
)
from ganforge.models.loading import LoadedModel, load_model

__all__ = [
    "VARIANTS",
    "LoadedModel",
    "build_discriminator",
    "build_generator",
    "check_recipe",
    "get_variant",
    "load_model",
]
