"""GAN generators, discriminators/critics, losses and the variant registry.

Single-device code: imports neither ray, deepspeed nor torch.distributed. Importing the package
registers the variants of every `variant_*` module here (see `ganforge.models.registry`).
"""

from ganforge.models.loading import LoadedModel, load_model
from ganforge.models.registry import (
    VARIANTS,
    VariantSpec,
    build_discriminator,
    build_generator,
    check_recipe,
    get_variant,
    import_variant_modules,
    list_variants,
    register_variant,
)

import_variant_modules(__name__)

__all__ = [
    "VARIANTS",
    "LoadedModel",
    "VariantSpec",
    "build_discriminator",
    "build_generator",
    "check_recipe",
    "get_variant",
    "list_variants",
    "load_model",
    "register_variant",
]
