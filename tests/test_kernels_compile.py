"""Every Triton kernel compiles for sm_80 and sm_90 on this GPU-less machine, at every
configuration the shipped configs and the serving path launch, within the target's shared memory;
and the committed records (bench/results/kernels-compile-sm*.json) list the same configurations.

`bench/kernels_compile.py` records the launches by running the real models on meta tensors
(`ganforge.kernels.launch.record_launches`), so the compiled set is by construction the set the
launchers choose; the fast tests below guard the two ways around it: a kernel launched without
`KernelLaunch`, and a kernel no shipped config launches. The compile itself runs in a subprocess
without TRITON_INTERPRET (tests/conftest.py sets it here; interpreted kernels do not compile).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ganforge.kernels.launch import KernelLaunch, record_launches

ROOT = Path(__file__).resolve().parents[1]
KERNEL_SOURCES = sorted((ROOT / "kernels").glob("*.py"))
ARCHS = (80, 90)
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}  # bytes per block (opt-in maximum)
REGENERATE = "python -m bench.kernels_compile --arch 80 --arch 90 --out-dir bench/results"


def _compile_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    return env


def _is_jit(decorator: ast.expr) -> bool:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return isinstance(target, ast.Attribute) and target.attr == "jit"


def launchable_kernels() -> set[str]:
    """Module-level `@triton.jit` functions named `*_kernel` in kernels/ (the launch convention
    of `ganforge.kernels.launch`; jitted helpers have other names)."""
    names = set()
    for path in KERNEL_SOURCES:
        for node in ast.parse(path.read_text()).body:
            if (
                isinstance(node, ast.FunctionDef)
                and node.name.endswith("_kernel")
                and any(_is_jit(d) for d in node.decorator_list)
            ):
                names.add(node.name)
    return names


def test_kernels_launch_only_through_kernel_launch():
    """`kernel[grid](...)` outside `KernelLaunch.run` would escape the recording, so a config
    the dispatcher launches could go uncompiled."""
    direct = []
    for path in KERNEL_SOURCES:
        if path.name == "launch.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Subscript):
                value = node.func.value
                if isinstance(value, ast.Name) and value.id.endswith("_kernel"):
                    direct.append(f"kernels/{path.name}:{node.lineno}: {value.id}[...](...)")
    assert not direct, "launch through ganforge.kernels.launch.KernelLaunch(...).run():\n" + (
        "\n".join(direct)
    )


def test_recording_captures_the_launchers_choice_without_running():
    """On meta tensors the real launcher runs, chooses a configuration and records it; outside
    the recording the same call is refused (nothing could run on meta tensors)."""
    from ganforge.kernels.conv_transpose import conv_transpose2d_triton

    x = torch.empty(3, 8, 4, 4, device="meta")
    w = torch.empty(8, 5, 4, 4, device="meta")
    with record_launches() as launches:
        y = conv_transpose2d_triton(x, w, None, stride=2, padding=1, activation="relu")
    assert y.shape == (3, 5, 8, 8) and y.device.type == "meta"
    assert [launch.name for launch in launches] == ["_conv_transpose_phase_kernel"]
    (launch,) = launches
    assert isinstance(launch, KernelLaunch)
    assert {k: launch.constexprs[k] for k in ("S", "P", "K", "TAPS", "ACTIVATION")} == {
        "S": 2,
        "P": 1,
        "K": 4,
        "TAPS": 2,
        "ACTIVATION": 1,
    }
    assert launch.grid[2] == 4  # one program column per output phase
    with pytest.raises(RuntimeError, match="triton needs CUDA tensors"):
        conv_transpose2d_triton(x, w, None, stride=2, padding=1)
    with record_launches(), pytest.raises(RuntimeError, match="does not nest"), record_launches():
        pass


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict:
    """Both targets compiled by the CLI, as `REGENERATE` does: {"proc": ..., 80: report, ...}."""
    out = tmp_path_factory.mktemp("kernels-compile")
    proc = subprocess.run(
        [sys.executable, "-m", "bench.kernels_compile", "--arch", "80", "--arch", "90"]
        + ["--out-dir", str(out)],
        cwd=ROOT,
        env=_compile_env(),
        capture_output=True,
        text=True,
        timeout=3600,
    )
    reports = {"proc": proc}
    for arch in ARCHS:
        path = out / f"kernels-compile-sm{arch}.json"
        if path.is_file():
            reports[arch] = json.loads(path.read_text())
    return reports


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_every_launched_configuration_compiles_within_shared_memory(compiled, arch):
    proc = compiled["proc"]
    assert arch in compiled, f"no report for sm_{arch}:\n{proc.stderr[-4000:]}"
    report = compiled[arch]
    assert not report["errors"], "\n".join(report["errors"])
    assert report["configs"], "no configuration recorded"
    for row in report["configs"]:
        assert row["registers"] > 0, row["key"]
        assert row["shared_bytes"] <= SHARED_LIMIT[arch], row["key"]
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.mark.slow
def test_every_kernel_is_compiled(compiled):
    """A kernel no shipped config launches (or one launched outside the recording) would never
    be compiled here: each must appear, for both targets."""
    for arch in ARCHS:
        assert arch in compiled, compiled["proc"].stderr[-4000:]
        done = {row["kernel"] for row in compiled[arch]["configs"]}
        missing = launchable_kernels() - done
        assert not missing, (
            f"sm_{arch}: never compiled: {sorted(missing)}. Launch them through KernelLaunch "
            "from a model a config in configs/ uses, or add the problem to bench/kernel_launches.py"
        )


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_committed_results_list_the_launched_configurations(compiled, arch):
    assert arch in compiled, compiled["proc"].stderr[-4000:]
    committed_path = ROOT / "bench/results" / f"kernels-compile-sm{arch}.json"
    committed = json.loads(committed_path.read_text())
    fresh = {row["key"] for row in compiled[arch]["configs"]}
    recorded = {row["key"] for row in committed["configs"]}
    assert fresh == recorded, (
        f"{committed_path.name} is stale; regenerate with `{REGENERATE}`.\n"
        f"launched now, not recorded: {sorted(fresh - recorded)}\n"
        f"recorded, no longer launched: {sorted(recorded - fresh)}"
    )


@pytest.mark.slow
def test_shared_memory_beyond_the_target_fails_the_check():
    """The limit check on a real compile: a bf16 GEMM tile of 128x128x128 with 4 pipeline stages
    needs 4 x 64 KiB of shared memory, more than either target has."""
    code = """
import json, torch
from triton.backends.compiler import GPUTarget
from triton.compiler.compiler import make_backend
from bench.kernels_compile import CompileSpec, measure, problem_with
from ganforge.kernels.gemm import _gemm_kernel
from ganforge.kernels.launch import KernelLaunch

a, b, c = (torch.empty(256, 256, device="meta", dtype=torch.bfloat16) for _ in range(3))
consts = dict(HAS_BIAS=False, ACTIVATION=0, DOT_PRECISION="ieee", BLOCK_M=128, BLOCK_N=128,
              BLOCK_K=128)
launch = KernelLaunch(_gemm_kernel, (2, 2), (a, b, c, c, 256, 256, 256, *a.stride(),
                      *b.stride(), *c.stride(), 1), consts, num_warps=8, num_stages=4)
target = GPUTarget("cuda", 90, 32)
result = measure(CompileSpec(launch, make_backend(target)), target)
print(json.dumps({"result": result, "problem": problem_with(result, 90)}))
"""
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=_compile_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["result"]["shared_bytes"] > SHARED_LIMIT[90], out
    assert "shared memory" in out["problem"], out
