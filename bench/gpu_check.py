"""Everything only a GPU can show, in one call: `make gpu-check` / `python -m bench.gpu_check`.

Sections, in order, each under a share of one time budget (`--budget-s`; what does not fit is
skipped with a note, never overrun):
1. kernel correctness, compiled on the device: each Triton kernel vs its fp32 reference, the
   kernel tests' cases plus the shipped shapes, fp32/fp16/bf16 (bf16 `tl.dot` included);
2. kernel speed: transposed conv forward+backward and the gradient penalty, Triton vs cuDNN /
   eager vs `torch.compile`, at the shipped shapes (batch 64 and 512, resolution 32 and 64);
3. training-step throughput per registered variant (bf16): eager, compile, triton and auto, with
   the FLOP count of the step and MFU; `auto`'s choice per case and why.
Writes at most 8 JSON files to --out (env.json, kernels-correctness.json, kernels-speed.json,
train-step.json, auto-choices.json) and prints a short table.

Runs on a bare CUDA machine from a checkout: Python + torch + triton, nothing installed, no
network (`bench/gpu_check_bootstrap.py`). `--cpu-smoke` runs every part at tiny sizes on CPU
(Triton under its interpreter) to test the check itself.

    python -m bench.gpu_check --out bench/results/gpu-h200
    python -m bench.gpu_check --out /tmp/smoke --cpu-smoke --variants wgan-gp
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import platform
import sys
import time
from pathlib import Path

from bench.gpu_check_bootstrap import ROOT, BootstrapError, bootstrap
from bench.gpu_check_report import Budget, Results, goals, table

SECTIONS = ("correctness", "speed", "train")
WEIGHTS = {"correctness": 0.2, "speed": 0.3, "train": 0.5}
PRIORITY = ("wgan-gp", "cwgan-gp")  # the variants the goals name are measured first


def _shape(text: str) -> tuple[int, int]:
    res, _, batch = text.partition("x")
    if not (res.isdigit() and batch.isdigit()) or int(res) not in (32, 64) or int(batch) < 1:
        raise argparse.ArgumentTypeError(f"expected RESxBATCH with RES 32 or 64, got {text!r}")
    return int(res), int(batch)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m bench.gpu_check", description=__doc__.splitlines()[0]
    )
    ap.add_argument("--out", required=True, type=Path, help="folder for the JSON files")
    ap.add_argument("--budget-s", type=_positive, default=400.0, help="seconds for all sections")
    ap.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    ap.add_argument("--variants", nargs="+", default=None, help="default: every registered one")
    ap.add_argument("--train-shapes", nargs="+", type=_shape, default=None, metavar="RESxBATCH")
    ap.add_argument("--modes", nargs="+", choices=("eager", "compile", "triton", "auto"))
    ap.add_argument("--wheels", type=Path, default=ROOT / "build" / "gpu-wheels")
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on CPU (interpreter)")
    return ap


def settings(args: argparse.Namespace) -> dict:
    """Sizes per mode: the shipped shapes on a GPU, tiny ones for --cpu-smoke."""
    smoke = args.cpu_smoke
    return {
        "device": "cpu" if smoke else "cuda",
        "train_dtype": "float32" if smoke else "bfloat16",  # bf16 convs crawl on CPU
        "speed_dtype": "float32" if smoke else "bfloat16",
        "resolutions": [32] if smoke else [32, 64],
        "batches": [2] if smoke else [64, 512],
        "layer_width": 4 if smoke else 64,  # bench.kernels.generator_layers' width and z_dim
        "layer_z": 8 if smoke else 128,
        "layers": 2 if smoke else 99,  # the last (widest-image) layers of each generator
        "train_shapes": args.train_shapes or ([(32, 2)] if smoke else [(32, 64), (64, 512)]),
        "model_width": 4 if smoke else None,  # None: the shipped config's
        "modes": args.modes or ["eager", "triton", "auto", "compile"],
        "compile_backend": "aot_eager" if smoke else "inductor",  # no C++/CUDA codegen on CPU
        "warmup": 1 if smoke else 3,
        "reps": 1 if smoke else 10,
        "iters": 1 if smoke else 5,
    }


def environment(args, argv: list[str], conf: dict, boot: dict) -> dict:
    import torch

    from bench.common import device_name
    from bench.gpu_check_step import peak_flops

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    name = device_name()
    cuda = torch.cuda.is_available() and not args.cpu_smoke
    return {
        "benchmark": "gpu_check",
        "device": name,
        "capability": list(torch.cuda.get_device_capability()) if cuda else None,
        "peak_bf16_flop_s": peak_flops(name) if cuda else None,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "triton": triton_version,
        },
        "cpu_count": os.cpu_count(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench.gpu_check", *argv]),
        "bootstrap": boot,
        "settings": conf,
        "smoke": args.cpu_smoke,
    }


def run_correctness(conf, budget, results, smoke) -> list[dict]:
    import torch

    from bench.gpu_check_correct import run
    from ganforge.kernels.tolerance import TOLERANCE

    budget.start("correctness")
    # cuDNN/cuBLAS may use TF32 for fp32 on Ampere+: the reference must be exact fp32.
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        rows = run(conf["device"], list(TOLERANCE), smoke, smoke, budget.left)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
    results.write("kernels-correctness.json", {"rows": rows})
    return rows


def run_speed(conf, budget, results) -> list[dict]:
    import torch

    from bench import gpu_check_speed as speed
    from bench.kernels import generator_layers

    budget.start("speed")
    torch.backends.cudnn.benchmark = True  # the fairest cuDNN baseline: its best algorithm
    dtype = getattr(torch, conf["speed_dtype"])
    common = (dtype, conf["device"], conf["compile_backend"], conf["warmup"], conf["reps"])
    layers = {
        r: generator_layers(r, conf["layer_width"], conf["layer_z"])[-conf["layers"] :]
        for r in conf["resolutions"]
    }
    rows = speed.conv_rows(layers, conf["batches"], *common, budget.left)
    results.write("kernels-speed.json", {"rows": rows})
    width = conf["model_width"]
    rows += speed.gp_rows(conf["resolutions"], conf["batches"], width, *common, budget.left)
    results.write("kernels-speed.json", {"rows": rows})
    torch.backends.cudnn.benchmark = False
    return rows


def _variants(args) -> list[str]:
    from ganforge.models import list_variants

    names = args.variants or list_variants()
    unknown = sorted(set(names) - set(list_variants()))
    if unknown:
        raise SystemExit(f"error: unknown variant(s) {unknown}; registered: {list_variants()}")
    return [v for v in PRIORITY if v in names] + [v for v in names if v not in PRIORITY]


def run_train(args, conf, budget, results, peak) -> tuple[list[dict], list[dict]]:
    import contextlib

    import torch

    from bench import gpu_check_step as step
    from ganforge.kernels import auto_choices, autotune

    budget.start("train")
    names = _variants(args)
    shapes = conf["train_shapes"]
    # The goals' variants at every shape first, then the others shape by shape.
    items = [(v, s) for v in names if v in PRIORITY for s in shapes]
    items += [(v, s) for s in shapes for v in names if v not in PRIORITY]
    rows = []
    dtype = getattr(torch, conf["train_dtype"])
    # Under --cpu-smoke `auto` measures CPU tensors with the interpreter, as the tests do.
    measuring = autotune.measuring(on_cpu=True) if args.cpu_smoke else contextlib.nullcontext()
    with measuring:
        for variant, (res, batch) in items:
            row = {"variant": variant, "resolution": res, "batch": batch, "dtype": str(dtype)[6:]}
            setup = step.StepSetup(
                variant, res, batch, "eager", conf["device"], dtype, conf["model_width"],
                conf["compile_backend"],
            )  # fmt: skip
            for mode in ["flops", *conf["modes"]]:
                if budget.left() <= 0:
                    row[f"{mode}_skipped"] = "time budget spent"
                    continue
                print(f"gpu-check: train {variant} {res}x{batch} {mode}", flush=True)
                try:
                    if mode == "flops":
                        flops = step.count_flops(setup, conf["warmup"], conf["iters"])
                        row["flop_per_iter"] = round(flops)
                        continue
                    mode_setup = dataclasses.replace(setup, mode=mode)
                    got = step.measure(mode_setup, conf["warmup"], conf["iters"])
                except Exception as e:  # one mode failing is a finding, not the end of the check
                    row[f"{mode}_error"] = f"{type(e).__name__}: {e}"[:400]
                    continue
                row |= {f"{mode}_{k}": v for k, v in got.items()}
                if row.get("flop_per_iter"):
                    value = step.mfu(row["flop_per_iter"], got["ms_per_iter"], peak)
                    row[f"{mode}_mfu"] = None if value is None else round(value, 4)
            for base in ("eager", "compile"):
                if row.get("triton_img_s") and row.get(f"{base}_img_s"):
                    row[f"triton_vs_{base}"] = round(row["triton_img_s"] / row[f"{base}_img_s"], 3)
            rows.append(row)
            results.write("train-step.json", {"rows": rows, "goals": goals(rows)})
            results.write("auto-choices.json", {"choices": auto_choices()})
    return rows, auto_choices()


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.out.exists() and not args.out.is_dir():
        print(f"error: --out {args.out} exists and is not a folder", file=sys.stderr)
        return 2
    if args.cpu_smoke:  # before triton is imported: it reads this once
        os.environ["TRITON_INTERPRET"] = "1"
    try:
        boot = bootstrap(args.wheels)
    except BootstrapError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import torch

    if not args.cpu_smoke and not torch.cuda.is_available():
        print(
            "error: no CUDA device here; --cpu-smoke tests the check itself on CPU", file=sys.stderr
        )
        return 2
    if "train" in args.sections:
        _variants(args)  # an unknown name fails now, not after the other sections
    conf = settings(args)
    results = Results(args.out)
    env = environment(args, sys.argv[1:] if argv is None else argv, conf, boot)
    results.write("env.json", env)
    budget = Budget(args.budget_s, {s: WEIGHTS[s] for s in args.sections})
    t0 = time.monotonic()
    correct = speed = train = auto = []
    if "correctness" in args.sections:
        correct = run_correctness(conf, budget, results, args.cpu_smoke)
    if "speed" in args.sections:
        speed = run_speed(conf, budget, results)
    if "train" in args.sections:
        train, auto = run_train(args, conf, budget, results, env["peak_bf16_flop_s"])
    results.write("env.json", env | {"wall_s": round(time.monotonic() - t0, 1)})
    if args.cpu_smoke:
        print("gpu-check: --cpu-smoke: tiny sizes on CPU; the figures test the check, not a device")
    print(table(correct, speed, train, auto))
    print(f"gpu-check: {len(results.names)} files in {args.out}")
    return 1 if any(r.get("ok") is False for r in correct) else 0


if __name__ == "__main__":
    sys.exit(main())
