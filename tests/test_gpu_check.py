"""The GPU check (`python -m bench.gpu_check`) on CPU: everything of it that needs no CUDA.

Arguments, the FLOP count of a training step, MFU, the budget guard, the capped result files and
the report; then the whole check end to end in --cpu-smoke mode (Triton under its interpreter)
from a Python that has *not* got ganforge installed, as on the bare GPU machine.
"""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import gpu_check, gpu_check_report
from bench.gpu_check_report import Budget, Results, goals, table
from bench.gpu_check_step import StepSetup, count_flops, mfu, peak_flops

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "--out"),
        (["--out", "x", "--train-shapes", "48x64"], "RES 32 or 64"),
        (["--out", "x", "--train-shapes", "32"], "RESxBATCH"),
        (["--out", "x", "--budget-s", "-5"], "positive number"),
        (["--out", "x", "--sections", "kernels"], "invalid choice"),
    ],
)
def test_bad_arguments_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        gpu_check.parser().parse_args(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_out_must_be_a_folder(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("")
    assert gpu_check.main(["--out", str(target), "--cpu-smoke"]) == 2
    assert "error: --out" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message a CPU machine gets")
def test_without_cuda_says_so(tmp_path, capsys):
    assert gpu_check.main(["--out", str(tmp_path / "o")]) == 2
    assert "error: no CUDA device" in capsys.readouterr().err


def test_unknown_variant_is_named(tmp_path):
    args = gpu_check.parser().parse_args(["--out", str(tmp_path), "--variants", "nope"])
    with pytest.raises(SystemExit, match="unknown variant.*nope"):
        gpu_check._variants(args)


def test_flop_count_is_positive_and_linear_in_batch():
    """One WGAN-GP iteration (5 critic steps with the penalty's double backward, one G step):
    every FLOP-counted op (convolutions, matmuls) scales with the batch."""
    small, big = (
        count_flops(StepSetup("wgan-gp", 32, b, device="cpu", dtype=torch.float32, width=4), 0, 1)
        for b in (1, 2)
    )
    assert small > 0
    assert big == pytest.approx(2 * small, rel=1e-6)


def test_flop_count_includes_the_penalty():
    """The same step without the penalty (the `wgan` recipe has none) counts fewer FLOPs; the
    difference is the penalty's extra forward and double backward through the critic."""
    setup = dict(resolution=32, batch=1, device="cpu", dtype=torch.float32, width=4)
    with_gp = count_flops(StepSetup("wgan-gp", **setup), 0, 1)
    without = count_flops(StepSetup("wgan", **setup), 0, 1)
    assert with_gp > 1.5 * without


def test_mfu_and_peaks():
    assert peak_flops("NVIDIA H200") == 989.4e12
    assert peak_flops("NVIDIA H200 NVL") == 835.5e12  # the more specific name wins
    assert peak_flops("NVIDIA H100 PCIe") == 756.0e12
    assert peak_flops("NVIDIA GeForce RTX 4090") is None
    # 989.4 GFLOP per 2 ms = 494.7 TFLOP/s = half the H200's peak.
    assert mfu(989.4e9, 2.0, 989.4e12) == pytest.approx(0.5)
    assert mfu(1e9, 1.0, None) is None


def test_budget_shares_and_rollover():
    now = [0.0]
    budget = Budget(100.0, {"a": 1.0, "b": 3.0}, clock=lambda: now[0])
    budget.start("a")
    assert budget.left() == pytest.approx(25.0)
    now[0] = 10.0  # "a" finishes early: its 15 unused seconds go to "b"
    budget.start("b")
    assert budget.left() == pytest.approx(90.0)
    now[0] = 101.0
    assert budget.left() < 0


def test_items_past_the_budget_are_skipped_not_run():
    from bench.gpu_check_correct import run

    rows = run("cpu", [torch.float32], smoke=True, interpreter=True, left=lambda: 0.0)
    assert rows and all(r["skipped"] == "time budget spent" for r in rows)
    assert all("ok" not in r for r in rows)


def test_a_failing_backend_is_recorded_not_raised():
    from bench.gpu_check_speed import _timed

    def make():
        raise RuntimeError("no kernel for this shape")

    row: dict = {}
    assert _timed(row, "triton", 0, 1, "cpu", make) is None
    assert row == {"triton_error": "RuntimeError: no kernel for this shape"}


def test_results_cap_files_and_sizes(tmp_path, monkeypatch):
    results = Results(tmp_path / "out")
    for i in range(gpu_check_report.MAX_FILES):
        results.write(f"f{i}.json", {"i": i})
    results.write("f0.json", {"again": True})  # rewriting a file is not a new one
    with pytest.raises(RuntimeError, match="at most 8 files"):
        results.write("one-more.json", {})
    assert len(list((tmp_path / "out").iterdir())) == 8
    monkeypatch.setattr(gpu_check_report, "MAX_BYTES", 10)
    with pytest.raises(RuntimeError, match="over 10"):
        results.write("f1.json", {"long": "x" * 20})


def _train_row(variant, res, batch, **rates):
    return {"variant": variant, "resolution": res, "batch": batch, "dtype": "bfloat16"} | rates


def test_goals_and_table():
    train = [
        _train_row("wgan-gp", 32, 64, eager_img_s=100.0, compile_img_s=150.0, triton_img_s=140.0),
        _train_row("cwgan-gp", 64, 512, eager_mfu=0.2, triton_mfu=0.36, flop_per_iter=12.5e9),
    ]
    got = goals(train)
    assert got["wgan_gp_triton_vs_eager@32x64"] == {"value": 1.4, "target": 1.3, "met": True}
    assert got["wgan_gp_triton_vs_compile@32x64"]["met"] is False  # 140 / 150
    assert got["cwgan_gp_64_512_mfu"] == {"value": 0.36, "target": 0.35, "met": True}
    assert goals([])["cwgan_gp_64_512_mfu"]["met"] is None  # not measured: untested, not failed
    correct = [
        {"op": "conv_transpose2d", "case": "a", "dtype": "bfloat16", "ok": True},
        {"op": "conv_transpose2d", "case": "b", "dtype": "bfloat16", "ok": False,
         "max_abs_err": 0.5, "worst": "grad1"},
        {"op": "gp_penalty", "case": "c", "dtype": "bfloat16", "skipped": "time budget spent"},
    ]  # fmt: skip
    speed = [{"op": "conv_transpose2d", "triton_vs_cudnn": 1.5}]
    auto = [
        {"op": "gp_penalty", "dtype": "bfloat16", "shape": "grad=64x3x32x32", "chosen": c,
         "measured": "forward+backward",
         "reason": "triton faster" if c == "triton" else "torch as fast or faster"}
        for c in ("triton", "torch", "triton")
    ]  # fmt: skip
    text = table(correct, speed, train, auto)
    assert "kernel correctness: 1 ok, 1 failed, 1 skipped" in text
    assert "FAIL conv_transpose2d b bfloat16: max abs err 0.5 at grad1" in text
    assert "triton vs cudnn: median 1.50x" in text
    assert "auto: 3 cases, triton 2, torch 1" in text
    assert "gp_penalty bfloat16 forward+backward [grad=64x3x32x32]: triton (triton faster)" in text
    assert "goal wgan_gp_triton_vs_compile@32x64 >= 1.0: 0.933 (NOT met)" in text
    cwgan = next(line for line in text.splitlines() if line.startswith("cwgan-gp"))
    assert cwgan.split()[-2:] == ["12.5", "36.0%"]


@pytest.mark.slow
def test_cpu_smoke_end_to_end_without_an_install(tmp_path):
    """`python -S` skips site-packages' .pth files, so ganforge's editable install is invisible
    (torch and pydantic stay reachable through PYTHONPATH): the check must map the checkout
    itself, as on the bare GPU machine, then run every section at tiny sizes."""
    out = tmp_path / "out"
    env = os.environ | {"PYTHONPATH": os.pathsep.join(site.getsitepackages())}
    cmd = [sys.executable, "-S", "-m", "bench.gpu_check", "--out", str(out), "--cpu-smoke"]
    cmd += ["--variants", "dcgan", "--modes", "eager", "triton", "--budget-s", "600"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == [
        "auto-choices.json",
        "env.json",
        "kernels-correctness.json",
        "kernels-speed.json",
        "train-step.json",
    ]
    env_json = json.loads((out / "env.json").read_text())
    assert env_json["bootstrap"]["ganforge"] == "checkout"
    correct = json.loads((out / "kernels-correctness.json").read_text())["rows"]
    assert [r for r in correct if "ok" in r] and all(r["ok"] for r in correct if "ok" in r)
    speed = json.loads((out / "kernels-speed.json").read_text())["rows"]
    assert {r["op"] for r in speed} == {"conv_transpose2d", "gp_pieces", "critic_step_gp"}
    assert all(r["triton_ms"] > 0 for r in speed if r["op"] == "conv_transpose2d")
    (row,) = json.loads((out / "train-step.json").read_text())["rows"]
    assert row["variant"] == "dcgan" and row["flop_per_iter"] > 0
    assert row["eager_img_s"] > 0 and row["triton_img_s"] > 0
    assert "kernel correctness:" in done.stdout and "dcgan" in done.stdout
