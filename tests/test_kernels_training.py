"""Convergence-style check: a few WGAN-GP steps with `model.kernels: triton` and `torch` from the
same seeds end with the same weights (fp32 tolerance).

The generator's transposed convs (1x1 -> 4x4 GEMM, k4 s2 p1 blocks, the fused tanh output layer)
and the gradient penalty go through the Triton kernels; the critic is plain PyTorch in both runs.
Plain torch optimizers, no Ray or DeepSpeed (too slow under the interpreter).
"""

from __future__ import annotations

import torch

from ganforge.config import ModelConfig
from ganforge.kernels import gradient_penalty
from ganforge.models import build_discriminator, build_generator
from ganforge.models.losses import d_loss, g_loss
from tests.kernel_helpers import DEVICE, FP32_TOL, exact_fp32_reference  # noqa: F401

BATCH, Z_DIM, STEPS, GP_LAMBDA = 4, 8, 3, 10.0


def _train(kernels: str) -> tuple[torch.nn.Module, torch.nn.Module, list[float]]:
    cfg = ModelConfig(
        variant="wgan-gp", resolution=32, channels=3, width=4, z_dim=Z_DIM, kernels=kernels
    )
    torch.manual_seed(0)
    g, d = build_generator(cfg).to(DEVICE), build_discriminator(cfg).to(DEVICE)
    # SGD, not Adam: Adam's first steps are ~lr * sign(grad), which would turn fp32 rounding noise
    # on a near-zero gradient into an lr-sized weight difference and make the comparison flaky.
    opt_g = torch.optim.SGD(g.parameters(), lr=0.01, momentum=0.5)
    opt_d = torch.optim.SGD(d.parameters(), lr=0.01, momentum=0.5)
    data = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(STEPS):
        real = (torch.rand(BATCH, 3, 32, 32, generator=data) * 2 - 1).to(DEVICE)
        z = torch.randn(BATCH, Z_DIM, generator=data).to(DEVICE)
        eps = torch.rand(BATCH, generator=data).to(DEVICE)
        with torch.no_grad():
            fake = g(z)
        loss = d_loss("wasserstein", d(real), d(fake))
        penalty, _ = gradient_penalty(d, real, fake, GP_LAMBDA, eps, backend=kernels)
        opt_d.zero_grad(set_to_none=True)
        (loss + penalty).backward()
        opt_d.step()

        d.requires_grad_(False)
        loss_g = g_loss("wasserstein", d(g(torch.randn(BATCH, Z_DIM, generator=data).to(DEVICE))))
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        d.requires_grad_(True)
        losses += [loss.item(), penalty.item(), loss_g.item()]
    return g, d, losses


def test_triton_and_torch_kernels_train_alike():
    g_ref, d_ref, losses_ref = _train("torch")
    g_tri, d_tri, losses_tri = _train("triton")
    torch.testing.assert_close(losses_tri, losses_ref, **FP32_TOL)
    for name, model_tri, model_ref in [("G", g_tri, g_ref), ("D", d_tri, d_ref)]:
        want = model_ref.state_dict()
        for key, value in model_tri.state_dict().items():
            torch.testing.assert_close(
                value, want[key], **FP32_TOL, msg=lambda m, k=f"{name}.{key}": f"{k}: {m}"
            )
    # The run must have moved the weights, or the comparison above proves nothing.
    torch.manual_seed(0)  # the same initial weights as in _train
    g_init = build_generator(
        ModelConfig(variant="wgan-gp", resolution=32, width=4, z_dim=Z_DIM, kernels="torch")
    )
    moved = [
        (p - p0.to(DEVICE)).abs().max().item()
        for p, p0 in zip(g_ref.parameters(), g_init.parameters(), strict=True)
    ]
    assert max(moved) > 1e-3
