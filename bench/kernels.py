"""Triton kernels vs PyTorch (cuDNN): transposed-conv forward / forward+backward on the DCGAN
generator layer shapes, the WGAN-GP critic step with and without the gradient penalty, and
StyleGAN2's modulated convolution at CIFAR shapes (`bench/kernels_modconv.py`).

Times come from `triton.testing.do_bench` (20th/50th/80th percentiles, ms); each row also gives
the achieved TFLOP/s and GB/s (of the minimal traffic: every operand read once, every result
written once) at the median and the peak memory. Prints one JSON line per row, then a summary
JSON with the device, versions, date and command. Needs a CUDA GPU; elsewhere it prints
{"skipped": ...} and exits 0.

    python bench/kernels.py                       # batches 64 and 256, fp32 and fp16
    python bench/kernels.py --batches 64 --dtypes fp32 bf16 --out bench/results/kernels-h100.json
    python bench/kernels.py --only-modconv --batches 32 64   # StyleGAN2 modulated conv rows only
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as `python bench/kernels.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEVICE = "cuda"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
QUANTILES = [0.2, 0.5, 0.8]


def generator_layers(resolution: int, width: int = 64, z_dim: int = 128) -> list[dict]:
    """The transposed convs of `models.generator.Generator` (DCGAN widths): the 4x4-from-1x1
    GEMM layer, then k4 s2 p1 blocks halving the width, the last one to 3 channels + tanh."""
    n = int(math.log2(resolution)) - 2
    ch = width * 2 ** (n - 1)
    layers = [dict(c_in=z_dim, c_out=ch, hw=1, k=4, s=1, p=0, act="relu")]
    hw = 4
    for _ in range(n - 1):
        layers.append(dict(c_in=ch, c_out=ch // 2, hw=hw, k=4, s=2, p=1, act="relu"))
        ch, hw = ch // 2, hw * 2
    layers.append(dict(c_in=ch, c_out=3, hw=hw, k=4, s=2, p=1, act="tanh"))
    return layers


def _timed(fn, grad_to_none=None) -> dict:
    from triton.testing import do_bench

    torch.cuda.reset_peak_memory_stats()
    p20, p50, p80 = do_bench(fn, quantiles=QUANTILES, grad_to_none=grad_to_none)
    return {
        "ms_p20": round(p20, 4),
        "ms_p50": round(p50, 4),
        "ms_p80": round(p80, 4),
        "peak_mem_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1),
    }


def _conv_fns(layer: dict, batch: int, dtype: torch.dtype, backend: str):
    """(forward fn, forward+backward fn, leaves) for one layer; "torch" = cuDNN + activation."""
    from ganforge.kernels import conv_transpose2d

    x = torch.randn(batch, layer["c_in"], layer["hw"], layer["hw"], device=DEVICE, dtype=dtype)
    w = torch.randn(layer["c_in"], layer["c_out"], layer["k"], layer["k"], device=DEVICE)
    w = (w * 0.02).to(dtype)
    x.requires_grad_(True)
    w.requires_grad_(True)
    conf = (None, layer["s"], layer["p"], 0, layer["act"])
    y = conv_transpose2d(x, w, *conf, backend=backend)
    grad_y = torch.randn_like(y)

    def forward():
        with torch.no_grad():
            conv_transpose2d(x, w, *conf, backend=backend)

    def full():
        conv_transpose2d(x, w, *conf, backend=backend).backward(grad_y)

    return forward, full, [x, w], y


def _conv_rates(layer: dict, batch: int, y: torch.Tensor, ms: float, full: bool) -> dict:
    """Forward FLOPs = 2 * B * C_in * H * W * C_out * K^2 (one MAC per input pixel, tap and
    output channel); backward = grad-input + grad-weight = 2x forward."""
    size = y.element_size()
    n_x = batch * layer["c_in"] * layer["hw"] ** 2
    n_w = layer["c_in"] * layer["c_out"] * layer["k"] ** 2
    flops = 2.0 * n_x * layer["c_out"] * layer["k"] ** 2
    nbytes = (n_x + n_w + y.numel()) * size
    if full:  # backward reads dy, x, w and writes dx, dw
        flops, nbytes = 3 * flops, nbytes + (2 * y.numel() + 2 * n_x + 2 * n_w) * size
    return {"tflop_s": round(flops / ms / 1e9, 3), "gb_s": round(nbytes / ms / 1e6, 1)}


def bench_conv(resolutions, batches, dtypes) -> list[dict]:
    rows = []
    for res in resolutions:
        for i, layer in enumerate(generator_layers(res)):
            for batch in batches:
                for dname in dtypes:
                    for backend in ("torch", "triton"):
                        forward, full, leaves, y = _conv_fns(layer, batch, DTYPES[dname], backend)
                        for mode, fn in (("forward", forward), ("forward+backward", full)):
                            t = _timed(fn, grad_to_none=leaves)
                            row = {"op": "conv_transpose2d", "resolution": res, "layer": i}
                            row |= {**layer, "batch": batch, "dtype": dname, "backend": backend}
                            row |= {"mode": mode, **t}
                            row |= _conv_rates(layer, batch, y, t["ms_p50"], mode != "forward")
                            print(json.dumps(row), flush=True)
                            rows.append(row)
    return rows


def _critic_step_fn(resolution: int, batch: int, gp: str | None):
    """One WGAN-GP critic forward+backward (no optimizer step): Wasserstein loss, plus the
    penalty through `ganforge.kernels.gradient_penalty` with backend `gp` unless gp is None."""
    from ganforge.config import ModelConfig
    from ganforge.kernels import gradient_penalty
    from ganforge.models import build_discriminator
    from ganforge.models.losses import d_loss

    d = build_discriminator(ModelConfig(variant="wgan-gp", resolution=resolution)).to(DEVICE)
    real = torch.randn(batch, 3, resolution, resolution, device=DEVICE)
    fake = torch.randn_like(real)
    eps = torch.rand(batch, device=DEVICE)

    def step():
        loss = d_loss("wasserstein", d(real), d(fake))
        if gp is not None:
            loss = loss + gradient_penalty(d, real, fake, 10.0, eps, backend=gp)[0]
        loss.backward()

    return step, list(d.parameters())


def bench_critic(resolutions, batches) -> list[dict]:
    rows = []
    for res in resolutions:
        for batch in batches:
            base = None
            for label, gp in (("no_gp", None), ("gp_torch", "torch"), ("gp_triton", "triton")):
                step, params = _critic_step_fn(res, batch, gp)
                row = {"op": "critic_step", "resolution": res, "batch": batch, "variant": label}
                row |= _timed(step, grad_to_none=params)
                base = base or row["ms_p50"]
                row["overhead_vs_no_gp"] = round(row["ms_p50"] / base, 3)
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--resolutions", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--dtypes", nargs="+", default=["fp32", "fp16"], choices=sorted(DTYPES))
    ap.add_argument("--skip-critic", action="store_true", help="only the conv-transpose rows")
    ap.add_argument(
        "--modconv-resolutions",
        type=int,
        nargs="*",
        default=[4, 8, 16, 32],
        help="StyleGAN2 synthesis resolutions of the modulated-conv rows (none: skip them)",
    )
    ap.add_argument("--only-modconv", action="store_true", help="only the modulated-conv rows")
    ap.add_argument("--out", default=None, help="also write the summary JSON here")
    args = ap.parse_args()

    from bench.common import environment

    env = {"benchmark": "kernels", **environment()}
    if not torch.cuda.is_available():
        print(json.dumps({"skipped": "needs a CUDA GPU", **env}))
        return
    torch.backends.cudnn.benchmark = True  # the fairest cuDNN baseline: its best algorithm
    results = [] if args.only_modconv else bench_conv(args.resolutions, args.batches, args.dtypes)
    if not (args.skip_critic or args.only_modconv):
        results += bench_critic(args.resolutions, args.batches)
    if args.modconv_resolutions:
        from bench.kernels_modconv import bench_modconv

        res = args.modconv_resolutions
        results += bench_modconv(res, args.batches, args.dtypes, _timed)
    text = json.dumps({**env, "args": vars(args), "results": results}, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
