"""Triton gradient penalty vs the PyTorch reference: interpolation, norms, penalty, its gradient,
the zero-gradient guard, and the whole `dispatch.gradient_penalty` on a tiny conv critic
(penalty value and the critic parameters' gradients through the double-backward graph)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ganforge.kernels import dispatch
from ganforge.kernels import reference as ref
from ganforge.kernels.penalty import interpolate_triton, penalty_from_grad_triton
from tests.kernel_helpers import DEVICE, FP32_TOL, exact_fp32_reference, tolerances  # noqa: F401

SHAPES = [(3, 2, 5, 5), (1, 1, 7, 3), (5, 3, 4, 4)]


def _randn(*shape, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen).to(DEVICE, dtype)


@pytest.mark.parametrize("dtype,atol,rtol", tolerances(uses_dot=False))
@pytest.mark.parametrize("shape", SHAPES)
def test_interpolation(shape, dtype, atol, rtol):
    real, fake = _randn(*shape, dtype=dtype), _randn(*shape, dtype=dtype, seed=1)
    eps = torch.rand(shape[0], generator=torch.Generator().manual_seed(2)).to(DEVICE)
    got = interpolate_triton(real, fake, eps)
    assert got.dtype == dtype
    want = ref.interpolate_ref(real.float(), fake.float(), eps)
    torch.testing.assert_close(got.float(), want, atol=atol, rtol=rtol)


def _penalty_and_grad(fn, grad, lam, upstream):
    g = grad.detach().clone().requires_grad_(True)
    penalty, norms = fn(g, lam)
    (penalty * upstream).backward()  # upstream != 1 checks that dL/dP scales the backward
    return penalty, norms, g.grad


@pytest.mark.parametrize("dtype,atol,rtol", tolerances(uses_dot=False))
@pytest.mark.parametrize("shape", [*SHAPES, (2, 3, 160, 160)], ids=str)
def test_penalty_norms_and_grad(shape, dtype, atol, rtol):
    """(2, 3, 160, 160): 76800 values per sample, more than one block, so the norm loop runs."""
    grad = _randn(*shape, dtype=dtype) * 0.3
    got = _penalty_and_grad(penalty_from_grad_triton, grad, 10.0, 2.5)
    want = _penalty_and_grad(ref.penalty_from_grad_ref, grad.float(), 10.0, 2.5)
    assert got[0].dtype == got[1].dtype == torch.float32 and got[2].dtype == dtype
    # The norms read the same (rounded) values in both, so only fp32 summation order differs.
    torch.testing.assert_close(got[0], want[0], **FP32_TOL, msg=lambda m: "penalty" + m)
    torch.testing.assert_close(got[1], want[1], **FP32_TOL, msg=lambda m: "norms" + m)
    torch.testing.assert_close(got[2].float(), want[2], atol=atol, rtol=rtol)


def test_zero_gradient_sample_has_no_nan():
    grad = _randn(3, 2, 4, 4)
    grad[1] = 0.0
    got = _penalty_and_grad(penalty_from_grad_triton, grad, 10.0, 1.0)
    want = _penalty_and_grad(ref.penalty_from_grad_ref, grad, 10.0, 1.0)
    assert torch.isfinite(got[2]).all()
    assert (got[2][1] == 0).all()
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, **FP32_TOL)


def test_penalty_backward_refuses_create_graph():
    g = _randn(2, 3).requires_grad_(True)
    penalty, _ = penalty_from_grad_triton(g, 10.0)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(penalty, g, create_graph=True)


def _tiny_critic(channels: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(channels, 4, 3, 2, 1),
        nn.LeakyReLU(0.2),
        nn.Conv2d(4, 6, 3, 2, 1),
        nn.LeakyReLU(0.2),
        nn.Flatten(),
        nn.Linear(6 * 2 * 2, 1),
    ).to(DEVICE)


@pytest.mark.parametrize("batch", [1, 4])
def test_gradient_penalty_end_to_end(batch):
    """Penalty, mean norm and every critic-parameter gradient of the penalty: the outer backward
    goes through PenaltyFromGrad.backward, then through the critic's double-backward graph."""
    real, fake = _randn(batch, 3, 7, 7), _randn(batch, 3, 7, 7, seed=1)
    eps = torch.rand(batch, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    results = {}
    for backend in ("torch", "triton"):
        critic = _tiny_critic(3)
        penalty, mean_norm = dispatch.gradient_penalty(
            lambda x, c=critic: c(x).squeeze(1), real, fake, 10.0, eps, backend=backend
        )
        assert not mean_norm.requires_grad
        penalty.backward()
        grads = [p.grad for p in critic.parameters()]
        results[backend] = (penalty.detach(), mean_norm, grads)
    got, want = results["triton"], results["torch"]
    torch.testing.assert_close(got[0], want[0], **FP32_TOL)
    torch.testing.assert_close(got[1], want[1], **FP32_TOL)
    assert any(w is not None and w.abs().sum() > 0 for w in want[2])
    for i, (g, w) in enumerate(zip(got[2], want[2], strict=True)):
        if w is None:
            assert g is None or not g.any(), f"param {i}"
            continue
        torch.testing.assert_close(g, w, **FP32_TOL, msg=lambda m, i=i: f"param {i} {m}")
