"""Triton transposed convolution vs `reference.conv_transpose2d_ref` + torch autograd.

Forward, grad-input, grad-weight and grad-bias over a shape grid (generator shapes, the 1x1 ->
4x4 GEMM layer, general stride/padding/output padding, odd sizes, channel counts that are not
multiples of the block sizes), per dtype. Runs under the Triton interpreter on CPU (conftest sets
TRITON_INTERPRET=1) and on CUDA when present; shapes stay tiny for the interpreter.
"""

from __future__ import annotations

import pytest
import torch

from ganforge.kernels import reference as ref
from ganforge.kernels.conv_transpose import conv_transpose2d_triton
from ganforge.models.layers import KernelConvTranspose2d
from tests.kernel_helpers import DEVICE, FP32_TOL, exact_fp32_reference, tolerances  # noqa: F401

# (B, C_in, H, W, C_out, K, stride, padding, output_padding, activation, bias)
SHAPES = [
    pytest.param((2, 5, 3, 3, 7, 4, 2, 1, 0, "relu", False), id="k4s2p1-gen-block"),
    pytest.param((1, 3, 4, 4, 3, 4, 2, 1, 0, "tanh", True), id="k4s2p1-gen-last-b1"),
    pytest.param((2, 3, 12, 12, 5, 4, 2, 1, 0, None, True), id="k4s2p1-many-m-tiles"),
    pytest.param((1, 70, 2, 2, 67, 4, 2, 1, 0, "leaky_relu", True), id="k4s2p1-c-over-block"),
    pytest.param((3, 5, 1, 1, 7, 4, 1, 0, 0, "relu", False), id="gemm-4x4-from-1x1"),
    pytest.param((2, 70, 1, 1, 3, 4, 1, 0, 0, None, True), id="gemm-k-loop"),
    pytest.param((2, 3, 5, 5, 5, 3, 1, 0, 0, "leaky_relu", True), id="s1-p0-odd"),
    pytest.param((1, 4, 3, 3, 3, 3, 1, 2, 0, None, True), id="s1-p2"),
    pytest.param((2, 3, 3, 3, 5, 4, 3, 0, 1, "tanh", True), id="s3-op1"),
    pytest.param((1, 5, 5, 5, 3, 3, 3, 2, 1, None, False), id="s3-p2-op1-odd"),
    pytest.param((1, 2, 3, 4, 3, 2, 3, 0, 2, "relu", True), id="s3-k2-empty-phases-rect"),
    pytest.param((1, 3, 5, 5, 4, 5, 2, 2, 1, None, True), id="s2-k5-p2-op1"),
]


def _inputs(case, dtype, device=DEVICE, seed=0):
    b, c_in, h, w, c_out, k, *_rest, has_bias = case
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c_in, h, w, generator=gen)
    weight = torch.randn(c_in, c_out, k, k, generator=gen) / (c_in * k * k) ** 0.5
    bias = torch.randn(c_out, generator=gen) if has_bias else None
    return [None if t is None else t.to(device, dtype) for t in (x, weight, bias)]


def _forward_backward(fn, x, weight, bias, conf, grad_seed=1):
    """y and the grads of (x, weight, bias) for a fixed random upstream gradient."""
    leaves = [None if t is None else t.detach().clone().requires_grad_(True) for t in (x, weight)]
    leaves.append(None if bias is None else bias.detach().clone().requires_grad_(True))
    y = fn(*leaves, *conf)
    gen = torch.Generator().manual_seed(grad_seed)
    grad_y = torch.randn(y.shape, generator=gen).to(y.device, y.dtype)
    y.backward(grad_y)
    return [y] + [None if t is None else t.grad for t in leaves]


def _check_against_reference(case, dtype, atol, rtol):
    *_shape, stride, padding, output_padding, activation, _bias = case
    conf = (stride, padding, output_padding, activation)
    x, weight, bias = _inputs(case, dtype)
    ours = _forward_backward(conv_transpose2d_triton, x, weight, bias, conf)
    up = [None if t is None else t.float() for t in (x, weight, bias)]
    want = _forward_backward(ref.conv_transpose2d_ref, *up, conf)
    for name, got, exp in zip(["y", "grad_x", "grad_weight", "grad_bias"], ours, want, strict=True):
        if exp is None:
            assert got is None, name
            continue
        assert got.dtype == dtype, name
        torch.testing.assert_close(
            got.float(), exp, atol=atol, rtol=rtol, msg=lambda m, n=name: f"{n}: {m}"
        )


@pytest.mark.parametrize("dtype,atol,rtol", tolerances(uses_dot=True))
@pytest.mark.parametrize("case", SHAPES)
def test_matches_reference(case, dtype, atol, rtol):
    _check_against_reference(case, dtype, atol, rtol)


@pytest.mark.parametrize("activation", ref.ACTIVATIONS)
@pytest.mark.parametrize(
    "shape", [(2, 5, 3, 3, 7, 4, 2, 1, 0), (2, 3, 1, 1, 5, 4, 1, 0, 0)], ids=["k4s2p1", "1x1"]
)
def test_each_activation(shape, activation):
    _check_against_reference((*shape, activation, True), torch.float32, *FP32_TOL.values())


def test_non_contiguous_input():
    x, weight, bias = _inputs((2, 5, 3, 3, 7, 4, 2, 1, 0, None, True), torch.float32)
    x_cl = x.to(memory_format=torch.channels_last)
    assert not x_cl.is_contiguous()
    torch.testing.assert_close(
        conv_transpose2d_triton(x_cl, weight, bias, 2, 1, 0, "relu"),
        ref.conv_transpose2d_ref(x, weight, bias, 2, 1, 0, "relu"),
        atol=1e-5,
        rtol=1e-4,
    )


@pytest.mark.parametrize("upstream", ["square", "sum"])
def test_double_backward_raises(upstream):
    """The backward is first-order only: a create_graph=True backward through it must fail
    loudly. With a plain .sum() upstream, once_differentiable alone would silently return a
    grad_x detached from the weight; both cases must raise."""
    x, weight, bias = _inputs((1, 3, 2, 2, 4, 4, 2, 1, 0, "tanh", True), torch.float32)
    x.requires_grad_(True)
    weight.requires_grad_(True)
    y = conv_transpose2d_triton(x, weight, bias, 2, 1, 0, "tanh")
    loss = y.square().sum() if upstream == "square" else y.sum()
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(loss, x, create_graph=True)


def test_rejects_bad_arguments():
    x, weight, _ = _inputs((1, 3, 2, 2, 4, 4, 2, 1, 0, None, False), torch.float32)
    with pytest.raises(ValueError, match="output_padding"):
        conv_transpose2d_triton(x, weight, None, 2, 1, 2)
    with pytest.raises(ValueError, match="activation"):
        conv_transpose2d_triton(x, weight, None, 2, 1, 0, "gelu")
    with pytest.raises(ValueError, match="input channels"):
        conv_transpose2d_triton(x[:, :2], weight, None, 2, 1, 0)


@pytest.mark.parametrize(
    "args,activation",
    [((6, 5, 4, 1, 0), "relu"), ((5, 3, 4, 2, 1), "tanh")],
    ids=["first-layer", "k4s2p1-tanh"],
)
def test_layer_triton_matches_torch(args, activation):
    torch.manual_seed(0)
    layers = {}
    for backend in ("torch", "triton"):
        torch.manual_seed(0)
        layers[backend] = KernelConvTranspose2d(*args, activation=activation, backend=backend)
    x = torch.randn(2, args[0], 1 if args[3] == 1 else 3, 1 if args[3] == 1 else 3)
    outs = {}
    for backend, layer in layers.items():
        layer.to(DEVICE)
        xi = x.to(DEVICE).requires_grad_(True)
        y = layer(xi)
        y.square().sum().backward()
        outs[backend] = [y, xi.grad, layer.weight.grad, layer.bias.grad]
    for got, want in zip(outs["triton"], outs["torch"], strict=True):
        torch.testing.assert_close(got, want, **FP32_TOL)
