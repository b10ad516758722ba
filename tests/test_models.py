"""Model shapes for every variant, resolution and channel count; the built-in losses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ganforge.config import ModelConfig
from ganforge.models import VARIANTS, build_discriminator, build_generator
from ganforge.models.losses import d_loss, g_loss


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("resolution,channels", [(32, 3), (64, 1)])
def test_generator_and_critic_shapes(variant, resolution, channels):
    cfg = ModelConfig(
        variant=variant,
        resolution=resolution,
        channels=channels,
        width=8,
        z_dim=16,
        num_classes=5,
        kernels="torch",
    )
    g, d = build_generator(cfg), build_discriminator(cfg)
    labels = torch.randint(0, 5, (3,)) if VARIANTS[variant].conditional else None
    x = g(torch.randn(3, 16), labels)
    assert x.shape == (3, channels, resolution, resolution)
    assert d(x, labels).shape == (3,)
    # What users see (samples, evaluation, serving) comes from eval mode: in [-1, 1]. StyleGAN2
    # trains on its linear output, so training mode may leave the range.
    x = g.eval()(torch.randn(3, 16), labels)
    assert x.min() >= -1 and x.max() <= 1


def test_conditional_generator_depends_on_label():
    cfg = ModelConfig(variant="cdcgan", width=8, z_dim=16, num_classes=4, kernels="torch")
    g = build_generator(cfg).eval()
    z = torch.randn(2, 16)
    a = g(z, torch.tensor([0, 0]))
    b = g(z, torch.tensor([3, 3]))
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="conditional"):
        g(z)


def test_wgan_gp_critic_has_no_batchnorm():
    d = build_discriminator(ModelConfig(variant="wgan-gp", width=8))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in d.modules())


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_spec_conditional_matches_what_it_builds(variant):
    spec = VARIANTS[variant]
    g = spec.build_generator(ModelConfig(variant=variant, width=8, num_classes=5, kernels="torch"))
    assert (g.num_classes > 0) == spec.conditional


def test_built_in_losses_are_found_by_name():
    real, fake = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0])
    torch.testing.assert_close(d_loss("wasserstein", real, fake), fake.mean() - real.mean())
    torch.testing.assert_close(g_loss("bce", fake), F.softplus(-fake).mean())
    with pytest.raises(ValueError, match="unknown loss kind"):
        d_loss("hinge", real, fake)
