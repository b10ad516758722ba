"""StyleGAN2's modulated convolution: Triton vs the grouped-conv reference, and the reference
itself vs a per-sample loop.

Forward and the gradients of x, weight and styles, with and without demodulation, up=1 and
up=2, odd shapes (channel counts off the block sizes, odd and rectangular images, K=1/3/4,
several position tiles). Under the Triton interpreter on CPU (conftest sets TRITON_INTERPRET=1)
and on CUDA when present; shapes stay tiny for the interpreter.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ganforge.kernels import autotune, modulated_conv2d
from ganforge.kernels.modulated_conv import (
    demodulation,
    modulated_conv2d_ref,
    modulated_conv2d_torch,
)
from ganforge.kernels.modulated_conv_triton import modulated_conv2d_triton
from tests.kernel_helpers import DEVICE, FP32_TOL, exact_fp32_reference, tolerances  # noqa: F401

# (B, C_in, C_out, H, W, K, up, padding, demodulate)
CASES = [
    pytest.param((2, 5, 7, 5, 6, 3, 1, None, True), id="k3-up1-demod-rect"),
    pytest.param((2, 5, 7, 5, 6, 3, 1, None, False), id="k3-up1-plain"),
    pytest.param((2, 3, 4, 5, 5, 3, 1, 0, True), id="k3-up1-p0-valid"),
    pytest.param((2, 5, 3, 3, 5, 1, 1, None, False), id="k1-up1-torgb"),
    pytest.param((1, 3, 5, 4, 3, 1, 1, None, True), id="k1-up1-demod-b1"),
    pytest.param((2, 3, 4, 3, 5, 3, 2, None, True), id="k3-up2-demod-rect"),
    pytest.param((2, 3, 4, 3, 5, 3, 2, None, False), id="k3-up2-plain"),
    pytest.param((2, 3, 5, 3, 3, 1, 2, None, True), id="k1-up2"),
    pytest.param((1, 4, 3, 3, 3, 4, 2, 1, True), id="k4-up2-p1"),
    # Channel counts past one block (64 under the interpreter) on both sides; K=1 keeps it cheap.
    pytest.param((1, 70, 67, 3, 3, 1, 1, None, True), id="k1-up1-c-over-block"),
    # 17x17 = 289 positions: two position tiles (the interpreter's cap is 256), so the style
    # gradient sums per-tile partials and the weight gradient loops over position blocks.
    pytest.param((1, 3, 4, 17, 17, 3, 1, None, True), id="k3-up1-two-tiles"),
    pytest.param((1, 3, 4, 17, 16, 3, 2, None, True), id="k3-up2-two-tiles"),
]


def _inputs(case, dtype=torch.float32, device=DEVICE, seed=0):
    b, c_in, c_out, h, w, k, *_ = case
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c_in, h, w, generator=gen)
    weight = torch.randn(c_out, c_in, k, k, generator=gen) / (c_in * k * k) ** 0.5
    # StyleGAN2 initialises the affine's bias to 1; the spread keeps near-zero styles too.
    styles = 1.0 + 0.5 * torch.randn(b, c_in, generator=gen)
    return [t.to(device, dtype) for t in (x, weight, styles)]


def _forward_backward(fn, inputs, conf, grad_seed=1):
    """y and the grads of (x, weight, styles) for a fixed random upstream gradient."""
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    y = fn(*leaves, *conf)
    gen = torch.Generator().manual_seed(grad_seed)
    y.backward(torch.randn(y.shape, generator=gen).to(y.device, y.dtype))
    return [y] + [t.grad for t in leaves]


def _conf(case):
    *_, up, padding, demodulate = case
    return demodulate, up, padding


@pytest.mark.parametrize("dtype,atol,rtol", tolerances(uses_dot=True))
@pytest.mark.parametrize("case", CASES)
def test_triton_matches_reference(case, dtype, atol, rtol):
    inputs = _inputs(case, dtype)
    ours = _forward_backward(modulated_conv2d_triton, inputs, _conf(case))
    want = _forward_backward(modulated_conv2d_ref, [t.float() for t in inputs], _conf(case))
    assert ours[0].shape == want[0].shape
    for name, got, exp in zip(
        ["y", "grad_x", "grad_weight", "grad_styles"], ours, want, strict=True
    ):
        assert got.dtype == dtype, name
        torch.testing.assert_close(
            got.float(), exp, atol=atol, rtol=rtol, msg=lambda m, n=name: f"{n}: {m}"
        )


@pytest.mark.parametrize("case", [c for c in CASES if "over-block" not in c.id])
def test_reference_matches_per_sample_loop(case):
    """The grouped-conv reference vs StyleGAN2's definition written out per sample, in fp64:
    modulate, demodulate over (C_in, K, K), then conv2d or the stride-2 conv_transpose2d."""
    *_, k, up, padding, demodulate = case
    x, weight, styles = (t.double() for t in _inputs(case, device="cpu"))
    p = k // 2 if padding is None else padding
    want = []
    for b in range(x.shape[0]):
        wb = weight * styles[b][None, :, None, None]
        if demodulate:
            wb = wb / (wb.square().sum(dim=(1, 2, 3), keepdim=True) + 1e-8).sqrt()
        if up == 1:
            want.append(F.conv2d(x[b : b + 1], wb, padding=p))
        else:
            op = 2 + 2 * p - k
            tw = wb.transpose(0, 1)
            want.append(
                F.conv_transpose2d(x[b : b + 1], tw, stride=2, padding=p, output_padding=op)
            )
    got = modulated_conv2d_ref(x, weight, styles, demodulate, up, padding)
    torch.testing.assert_close(got, torch.cat(want), atol=1e-12, rtol=1e-10)
    if padding is None:  # the documented shape contract
        assert got.shape[2:] == (x.shape[2] * up, x.shape[3] * up)


def test_demodulation_identity():
    """d from the O(B*C_out*C_in) identity equals the norm of the per-sample weight."""
    x, weight, styles = _inputs((3, 6, 5, 2, 2, 3, 1, None, True), device="cpu")
    wb = weight[None] * styles[:, None, :, None, None]
    direct = torch.rsqrt(wb.double().square().sum(dim=(2, 3, 4)) + 1e-8)
    torch.testing.assert_close(demodulation(weight, styles).double(), direct, rtol=1e-6, atol=0)


@pytest.mark.parametrize("case", CASES)
def test_torch_backend_matches_reference(case):
    """`backend="torch"` modulates the activations instead of the weight: the same function as
    the grouped-conv reference, value and all three gradients, at fp64 precision."""
    inputs = [t.double() for t in _inputs(case, device="cpu")]
    ours = _forward_backward(modulated_conv2d_torch, inputs, _conf(case))
    want = _forward_backward(modulated_conv2d_ref, inputs, _conf(case))
    for name, got, exp in zip(
        ["y", "grad_x", "grad_weight", "grad_styles"], ours, want, strict=True
    ):
        torch.testing.assert_close(
            got, exp, atol=1e-12, rtol=1e-10, msg=lambda m, n=name: f"{n}: {m}"
        )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_torch_backend_keeps_low_precision_dtype(dtype):
    """fp16/bf16 in, the same dtype out (d is computed in fp32 and cast), close to fp32."""
    case = (2, 5, 7, 5, 6, 3, 2, None, True)
    x, weight, styles = _inputs(case, device="cpu")
    got = modulated_conv2d_torch(x.to(dtype), weight.to(dtype), styles.to(dtype), up=2)
    assert got.dtype == dtype
    torch.testing.assert_close(
        got.float(), modulated_conv2d_ref(x, weight, styles, up=2), atol=5e-2, rtol=5e-2
    )


@pytest.mark.parametrize("fn", [modulated_conv2d_ref, modulated_conv2d_torch])
def test_torch_paths_gradcheck(fn):
    """The torch backend is the one used where a double backward is needed (path-length
    regulariser): its first and second derivatives are autograd's, checked numerically."""
    inputs = [t.double().requires_grad_(True) for t in _inputs((1, 2, 2, 3, 3, 3, 2, None, True))]
    op = lambda x, w, s: fn(x, w, s, True, 2)  # noqa: E731
    assert torch.autograd.gradcheck(op, inputs)
    assert torch.autograd.gradgradcheck(op, inputs)


def test_non_contiguous_input():
    case = (2, 5, 7, 5, 6, 3, 1, None, True)
    x, weight, styles = _inputs(case)
    x_cl = x.to(memory_format=torch.channels_last)
    assert not x_cl.is_contiguous()
    torch.testing.assert_close(
        modulated_conv2d_triton(x_cl, weight, styles.t().contiguous().t()),
        modulated_conv2d_ref(x, weight, styles),
        **FP32_TOL,
    )


def test_double_backward_raises():
    """First-order only: a create_graph=True backward (path-length regulariser) must fail loudly,
    not return a second derivative that silently misses terms."""
    x, weight, styles = (t.requires_grad_(True) for t in _inputs((1, 2, 3, 3, 3, 3, 1, 1, True)))
    y = modulated_conv2d_triton(x, weight, styles)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(y.square().sum(), styles, create_graph=True)


def test_rejects_bad_arguments():
    x, weight, styles = _inputs((2, 3, 4, 3, 3, 3, 1, None, True))
    with pytest.raises(ValueError, match="styles must be"):
        modulated_conv2d(x, weight, styles[:, :2])
    with pytest.raises(ValueError, match="input channels"):
        modulated_conv2d(x[:, :2], weight, styles[:, :2])
    with pytest.raises(ValueError, match="up must be 1 or 2"):
        modulated_conv2d(x, weight, styles, up=4)
    k4 = torch.randn(4, 3, 4, 4, device=x.device)
    with pytest.raises(ValueError, match="use padding=1"):
        modulated_conv2d(x, k4, styles, up=2)  # default padding 2 cannot give 2*H for K=4
    with pytest.raises(TypeError, match="share a dtype"):
        modulated_conv2d(x, weight.half(), styles)
    with pytest.raises(TypeError, match="float32, float16, bfloat16"):
        modulated_conv2d_triton(x.double(), weight.double(), styles.double())


@pytest.mark.parametrize("up", [1, 2])
def test_dispatch_backends_agree(up):
    """The public op: `torch` is the activation-scaling path; `triton` the kernel; both agree
    with the reference; `auto` on CPU (not measuring) is the torch path exactly."""
    x, weight, styles = _inputs((2, 3, 4, 3, 3, 3, up, None, True))
    want = modulated_conv2d_ref(x, weight, styles, up=up)
    torch_path = modulated_conv2d_torch(x, weight, styles, up=up)
    assert torch.equal(modulated_conv2d(x, weight, styles, up=up, backend="torch"), torch_path)
    torch.testing.assert_close(torch_path, want, **FP32_TOL)
    got = modulated_conv2d(x, weight, styles, up=up, backend="triton")
    torch.testing.assert_close(got, want, **FP32_TOL)
    if DEVICE == "cpu":
        assert torch.equal(modulated_conv2d(x, weight, styles, up=up), torch_path)


def test_auto_measures_and_agrees():
    """`auto` where it measures (forced on CPU here) checks Triton against the reference, forward
    and backward, and records the case under the op's name."""
    autotune.reset()
    x, weight, styles = (t.requires_grad_(True) for t in _inputs((1, 3, 4, 3, 3, 3, 2, None, True)))
    # A fixed timer (Triton "faster"): the interpreter's speed says nothing; the check does.
    with autotune.measuring(on_cpu=True, timer=lambda backend, fn: 1.0 + (backend == "torch")):
        y = modulated_conv2d(x, weight, styles, up=2)
    (choice,) = [c for c in autotune.auto_choices() if c["op"] == "modulated_conv2d"]
    autotune.reset()
    assert choice["measured"] == "forward+backward"
    assert choice["chosen"] == "triton", choice["reason"]
    torch.testing.assert_close(y, modulated_conv2d_ref(x, weight, styles, up=2), **FP32_TOL)


@pytest.mark.gpu
@pytest.mark.parametrize("up", [1, 2])
def test_no_per_sample_weight_on_gpu(up):
    """The point of the kernel: its forward+backward never holds a per-sample weight
    [B, C_out, C_in, K, K] (here 288 MiB in fp32), which the reference does."""
    b, c, k = 32, 512, 3
    x = torch.randn(b, c, 8, 8, device="cuda", requires_grad=True)
    weight = torch.randn(c, c, k, k, device="cuda", requires_grad=True)
    styles = torch.randn(b, c, device="cuda", requires_grad=True)
    per_sample = b * c * c * k * k * 4
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    y = modulated_conv2d_triton(x, weight, styles, up=up)
    y.backward(torch.ones_like(y))
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated() - base < per_sample / 2
