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

__all__ = ["VARIANTS", "build_discriminator", "build_generator", "check_recipe", "get_variant"]
