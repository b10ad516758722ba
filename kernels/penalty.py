"""WGAN-GP gradient penalty in Triton: the interpolation and the penalty from the gradient, fused.

    x_hat_b = eps_b * real_b + (1 - eps_b) * fake_b                      (interpolation kernel)
    g = d(sum_b critic(x_hat)_b) / d x_hat                                 (PyTorch autograd)
    penalty = lam * mean_b (||g_b||_2 - 1)^2                              (norm + reduce kernels)
    d penalty / d g_b = (2 lam / B) (||g_b|| - 1) / ||g_b|| * g_b         (backward kernel)

Norms and the penalty accumulate in fp32 whatever g's dtype (fp32/fp16/bf16); the penalty is an
fp32 scalar like the reference's. Tensors are flattened per sample, so any layout of [B, ...]
works once made contiguous.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ganforge.kernels.launch import KernelLaunch
from ganforge.kernels.utils import check_triton_device, elementwise_block, first_order_only

# Below this norm the backward's 1/||g|| is clamped: a sample whose gradient is exactly zero gets
# a zero gradient (as torch.norm's backward gives) instead of 0/0 = NaN.
NORM_EPS = 1e-12


@triton.jit
def _interpolate_kernel(real_ptr, fake_ptr, eps_ptr, out_ptr, N, BLOCK: tl.constexpr):
    """Program (b, block): out[b, i] = eps[b] * real[b, i] + (1 - eps[b]) * fake[b, i] in fp32."""
    b = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < N
    e = tl.load(eps_ptr + b).to(tl.float32)
    r = tl.load(real_ptr + b * N + offs, mask=ok, other=0.0).to(tl.float32)
    f = tl.load(fake_ptr + b * N + offs, mask=ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + b * N + offs, (e * r + (1.0 - e) * f).to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _sample_norm_kernel(g_ptr, norms_ptr, N, BLOCK: tl.constexpr):
    """Program b: norms[b] = sqrt(sum_i g[b, i]^2), fp32 partial sums over BLOCK lanes."""
    b = tl.program_id(0)
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for start in range(0, N, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        g = tl.load(g_ptr + b * N + offs, mask=offs < N, other=0.0).to(tl.float32)
        acc += g * g
    tl.store(norms_ptr + b, tl.sqrt(tl.sum(acc, axis=0)))


@triton.jit
def _penalty_reduce_kernel(norms_ptr, out_ptr, B, lam, BLOCK_B: tl.constexpr):
    """One program: out = lam / B * sum_b (norms[b] - 1)^2 (a fixed order: deterministic)."""
    acc = tl.zeros((BLOCK_B,), dtype=tl.float32)
    for start in range(0, B, BLOCK_B):
        offs = start + tl.arange(0, BLOCK_B)
        n = tl.load(norms_ptr + offs, mask=offs < B, other=1.0)
        acc += (n - 1.0) * (n - 1.0)
    tl.store(out_ptr, tl.sum(acc, axis=0) * lam / B)


# With n_b = ||g_b||_2 and P = (lam / B) sum_b (n_b - 1)^2:
#   dP/dg_b = (lam / B) * 2 (n_b - 1) * dn_b/dg_b = (2 lam / B) (n_b - 1) / n_b * g_b,
# scaled by the incoming gradient dL/dP (read from memory: no host sync). 1/n_b is taken as
# 1/max(n_b, NORM_EPS), so g_b = 0 gives 0, not NaN. One pass over g.
@triton.jit
def _penalty_backward_kernel(
    g_ptr, norms_ptr, grad_out_ptr, dg_ptr, N, scale, NORM_EPS: tl.constexpr, BLOCK: tl.constexpr
):
    b = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < N
    n = tl.load(norms_ptr + b)
    coef = scale * (n - 1.0) / tl.maximum(n, NORM_EPS) * tl.load(grad_out_ptr).to(tl.float32)
    g = tl.load(g_ptr + b * N + offs, mask=ok, other=0.0).to(tl.float32)
    tl.store(dg_ptr + b * N + offs, (coef * g).to(dg_ptr.dtype.element_ty), mask=ok)


def interpolate_triton(real: torch.Tensor, fake: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """x_hat [B, ...] = eps_b * real + (1 - eps_b) * fake in real's dtype (computed in fp32).

    real, fake: [B, ...] of one dtype; eps: [B] (any float dtype). No gradient flows to real or
    fake (WGAN-GP differentiates only w.r.t. x_hat; fake comes detached from the generator).
    """
    check_triton_device(real.device)
    if fake.shape != real.shape or eps.shape != (real.shape[0],):
        raise ValueError(f"shapes: real {real.shape}, fake {fake.shape}, eps {eps.shape}")
    real, fake, eps = (t.detach().contiguous() for t in (real, fake, eps))
    out = torch.empty_like(real)
    batch, n = real.shape[0], real[0].numel()
    if out.numel() == 0:
        return out
    block = elementwise_block(n)
    KernelLaunch(
        _interpolate_kernel,
        (batch, triton.cdiv(n, block)),
        (real, fake.to(real.dtype), eps, out, n),
        dict(BLOCK=block),
    ).run()
    return out


class PenaltyFromGrad(torch.autograd.Function):
    """(penalty, norms) = (lam * mean_b (||g_b|| - 1)^2, ||g_b||) with a fused Triton backward.

    The backward returns dP/dg as a plain tensor; autograd then carries it through g's own graph
    (the create_graph=True graph of the critic's input gradient) to the critic's parameters. The
    backward itself is not differentiable again (nothing needs a third derivative): it is
    once_differentiable, and a create_graph=True backward through it raises (`first_order_only`)
    instead of silently returning a gradient without its second-order terms.
    """

    @staticmethod
    def forward(ctx, grad: torch.Tensor, lam: float):
        g = grad.contiguous().view(grad.shape[0], -1)
        batch, n = g.shape
        norms = torch.empty(batch, device=g.device, dtype=torch.float32)
        penalty = torch.empty((), device=g.device, dtype=torch.float32)
        KernelLaunch(
            _sample_norm_kernel, (batch,), (g, norms, n), dict(BLOCK=elementwise_block(n))
        ).run()
        KernelLaunch(
            _penalty_reduce_kernel, (1,), (norms, penalty, batch, float(lam)), dict(BLOCK_B=1024)
        ).run()
        ctx.save_for_backward(g, norms)
        ctx.lam, ctx.shape = float(lam), grad.shape
        ctx.mark_non_differentiable(norms)
        return penalty, norms

    @staticmethod
    @first_order_only
    def backward(ctx, grad_penalty: torch.Tensor, _grad_norms: torch.Tensor):
        g, norms = ctx.saved_tensors
        batch, n = g.shape
        dg = torch.empty_like(g)
        block = elementwise_block(n)
        KernelLaunch(
            _penalty_backward_kernel,
            (batch, triton.cdiv(n, block)),
            (g, norms, grad_penalty.contiguous(), dg, n, 2.0 * ctx.lam / batch),
            dict(NORM_EPS=NORM_EPS, BLOCK=block),
        ).run()
        return dg.view(ctx.shape), None


def penalty_from_grad_triton(grad: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton `reference.penalty_from_grad_ref`: grad [B, ...] -> (fp32 penalty scalar with a
    backward to grad, fp32 per-sample norms [B] without one)."""
    check_triton_device(grad.device)
    if grad.dim() < 1 or grad.shape[0] == 0 or grad[0].numel() == 0:
        raise ValueError(
            f"grad must be [B, ...] with B >= 1 and non-empty samples, got {grad.shape}"
        )
    return PenaltyFromGrad.apply(grad, lam)
