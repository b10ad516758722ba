"""Modulated convolution rows of `bench/kernels.py`: StyleGAN2's synthesis layers at CIFAR
shapes (512 channels at every resolution, as StyleGAN2-ADA's CIFAR config; 3x3 convs, the
stride-2 up convs, the 1x1 toRGB without demodulation), forward and forward+backward.

Three implementations per layer:
- "triton": `ganforge.kernels.modulated_conv2d(backend="triton")`, no per-sample weight;
- "torch": `backend="torch"`, x * styles, one shared-weight conv, * d (StyleGAN2-ADA's training
  path, `fused_modconv=False`: no per-sample weight either, but extra passes over activations);
- "torch_fused": the reference, per-sample weight + one grouped conv (`fused_modconv=True`).
"""

from __future__ import annotations

import json

import torch

IMPLEMENTATIONS = ("torch", "torch_fused", "triton")


def stylegan2_layers(resolution: int, channels: int = 512) -> list[dict]:
    """The modulated convs of one synthesis block at `resolution` (input hw = output hw / up)."""
    if resolution == 4:
        layers = [dict(name="conv1", c_in=channels, c_out=channels, hw=4, k=3, up=1, demod=True)]
    else:
        layers = [
            dict(name="conv0_up", c_in=channels, c_out=channels, hw=resolution // 2, k=3, up=2),
            dict(name="conv1", c_in=channels, c_out=channels, hw=resolution, k=3, up=1),
        ]
        for layer in layers:
            layer["demod"] = True
    layers.append(dict(name="torgb", c_in=channels, c_out=3, hw=resolution, k=1, up=1, demod=False))
    return layers


def _fns(layer: dict, batch: int, dtype: torch.dtype, impl: str, device: str):
    from ganforge.kernels import modulated_conv2d
    from ganforge.kernels.modulated_conv import modulated_conv2d_ref

    x = torch.randn(batch, layer["c_in"], layer["hw"], layer["hw"], device=device, dtype=dtype)
    w = torch.randn(layer["c_out"], layer["c_in"], layer["k"], layer["k"], device=device)
    w = (w / (layer["c_in"] * layer["k"] ** 2) ** 0.5).to(dtype)
    s = (1 + 0.2 * torch.randn(batch, layer["c_in"], device=device)).to(dtype)
    leaves = [t.requires_grad_(True) for t in (x, w, s)]
    conf = dict(demodulate=layer["demod"], up=layer["up"])

    def run():
        if impl == "torch_fused":
            return modulated_conv2d_ref(*leaves, **conf)
        return modulated_conv2d(*leaves, **conf, backend=impl)

    y = run()
    grad_y = torch.randn_like(y)

    def forward():
        with torch.no_grad():
            run()

    def full():
        run().backward(grad_y)

    return forward, full, leaves, y


def _rates(layer: dict, batch: int, y: torch.Tensor, ms: float, full: bool) -> dict:
    """Forward FLOPs = 2 * B * C_in * C_out * K^2 * (input positions for up=2, output positions
    for up=1): one MAC per tap, channel pair and position; backward = 2x forward (grad-input,
    grad-weight; the style and demodulation terms are O(B*C_in*C_out))."""
    size = y.element_size()
    positions = layer["hw"] ** 2
    n_x = batch * layer["c_in"] * positions
    n_w = layer["c_in"] * layer["c_out"] * layer["k"] ** 2
    flops = 2.0 * batch * positions * layer["c_in"] * layer["c_out"] * layer["k"] ** 2
    nbytes = (n_x + n_w + y.numel()) * size
    if full:
        flops, nbytes = 3 * flops, nbytes + (2 * y.numel() + 2 * n_x + 2 * n_w) * size
    return {"tflop_s": round(flops / ms / 1e9, 3), "gb_s": round(nbytes / ms / 1e6, 1)}


def bench_modconv(resolutions, batches, dtypes, timed, device: str = "cuda") -> list[dict]:
    """One JSON row per (resolution, layer, batch, dtype, implementation, mode); `timed(fn,
    grad_to_none)` returns the timing dict of `bench/kernels.py`."""
    from bench.kernels import DTYPES

    rows = []
    for res in resolutions:
        for layer in stylegan2_layers(res):
            for batch in batches:
                for dname in dtypes:
                    for impl in IMPLEMENTATIONS:
                        forward, full, leaves, y = _fns(layer, batch, DTYPES[dname], impl, device)
                        for mode, fn in (("forward", forward), ("forward+backward", full)):
                            t = timed(fn, grad_to_none=leaves)
                            row = {"op": "modulated_conv2d", "resolution": res, **layer}
                            row |= {"batch": batch, "dtype": dname, "backend": impl, "mode": mode}
                            row |= t | _rates(layer, batch, y, t["ms_p50"], mode != "forward")
                            print(json.dumps(row), flush=True)
                            rows.append(row)
    return rows
