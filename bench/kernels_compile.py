"""Compile every Triton kernel configuration the shipped configs and the serving path launch, for
an NVIDIA target (sm_80 Ampere, sm_90 Hopper), on a machine without a GPU; record the resources.

    python -m bench.kernels_compile --arch 90 --out bench/results/kernels-compile-sm90.json
    python -m bench.kernels_compile --arch 80 --arch 90 --out-dir bench/results  # one recording

1. `bench.kernel_launches` records the launches the real launchers make (real models on meta
   tensors, GPU block caps) for every shipped config, precision, phase and serving batch size.
2. Each launch becomes the specialisation Triton's JIT would compile on that GPU: Triton's own
   argument binder (`create_function_from_signature` + `JITFunction._pack_args`, what
   `JITFunction.run` calls) gives the signature, constexprs, the divisibility-by-16 attributes
   and the options. Launches with the same specialisation compile once.
3. `triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))` (the public compile API)
   lowers it to PTX and, with the ptxas bundled in the wheel, to a cubin. The launch path with
   warm-ups (`kernel.warmup`) is not usable here: it asks the CUDA driver for the target.
4. Registers and the stack frame come from the bundled `cuobjdump -res-usage` on the cubin. The
   kernels use no local arrays, so a stack frame holds spilled registers: stack_bytes > 0 means
   the kernel spills (checked against ptxas -v: a 56-byte frame held 52 bytes of spill stores).
   Shared memory comes from the compiled kernel's metadata (Triton allocates it dynamically, so
   cuobjdump's static SHARED shows 0).

Writes the JSON to --out / --out-dir (prints it without either). Exit status 1, with an
`error:` line each, when a problem cannot be recorded, a configuration does not compile, or one
needs more shared memory per block than the target has. Run with TRITON_INTERPRET unset.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/kernels_compile.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import environment

# Opt-in shared memory per block (CUDA programming guide, compute capabilities table).
SHARED_LIMIT_BYTES = {80: 163 * 1024, 90: 227 * 1024}
_RES_USAGE = re.compile(r"Function (\S+):\s+REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")


class CompileSpec:
    """What Triton's JIT compiles for one launch: signature, constexprs, attributes, options."""

    def __init__(self, launch, backend):
        from triton import knobs
        from triton.runtime.jit import JITFunction, create_function_from_signature

        kernel = launch.kernel
        if not isinstance(kernel, JITFunction):
            raise RuntimeError(
                f"{launch.name} is not a compilable JITFunction: unset TRITON_INTERPRET"
            )
        binder = create_function_from_signature(kernel.signature, kernel.params, backend)
        # The keyword arguments JITFunction.run adds before binding.
        kwargs = dict(
            launch.constexprs,
            num_warps=launch.num_warps,
            num_stages=launch.num_stages,
            debug=kernel.debug or knobs.runtime.debug,
            instrumentation_mode=knobs.compilation.instrumentation_mode,
            fpsan_homomorphic_casts=knobs.compilation.fpsan_homomorphic_casts,
        )
        bound, specialization, options = binder(*launch.args, **kwargs)
        self.options, self.signature, self.constexprs, self.attrs = kernel._pack_args(
            backend, kwargs, bound, specialization, options
        )
        self.kernel, self.name = kernel, launch.name
        names = kernel.arg_names
        self.constants = {names[path[0]]: value for path, value in self.constexprs.items()}
        self.divisible = [
            names[path[0]] for path, attr in self.attrs.items() if ["tt.divisibility", 16] in attr
        ]
        args = ", ".join(
            f"{n}:{t}" + ("/16" if n in self.divisible else "")
            for n, t in self.signature.items()
            if t != "constexpr"
        )
        consts = ", ".join(f"{n}={v}" for n, v in self.constants.items())
        opts = f"warps={self.options.num_warps} stages={self.options.num_stages}"
        self.key = f"{self.name}({args}; {consts}) {opts}"

    def compile(self, target):
        import triton
        from triton.compiler import ASTSource

        src = ASTSource(self.kernel, self.signature, self.constexprs, self.attrs)
        return triton.compile(src, target=target, options=self.options.__dict__)


def resource_usage(cubin: bytes, name: str) -> dict[str, int]:
    """Registers, stack (spill frame) and local bytes of the kernel `name` in a cubin, from
    `cuobjdump -res-usage` (which also lists any device functions the kernel calls)."""
    from triton import knobs

    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run(
            [knobs.nvidia.cuobjdump.path, "-res-usage", f.name],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    for m in _RES_USAGE.finditer(out):
        if m.group(1) == name:
            regs, stack, _shared, local = map(int, m.groups()[1:])
            return {"registers": regs, "stack_bytes": stack, "local_bytes": local}
    raise RuntimeError(f"no kernel {name} in cuobjdump -res-usage output:\n{out}")


def _ranges(values: list[int]) -> str:
    """[1, 2, 3, 5] -> "1-3,5"."""
    out, vals = [], sorted(set(values))
    start = prev = vals[0]
    for v in [*vals[1:], None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        if v is not None:
            start = prev = v
    return ",".join(out)


def used_by(problems) -> list[str]:
    """Problems grouped per config/precision/phase: "dcgan:fp32:serve:b1-4,8"."""
    groups: dict[str, list[int]] = {}
    for p in problems:
        groups.setdefault(f"{p.config}:{p.precision}:{p.phase}", []).append(p.batch)
    return [f"{k}:b{_ranges(v)}" for k, v in sorted(groups.items())]


class Recording:
    """The launches of every problem (`bench.kernel_launches`), recorded once for all targets."""

    def __init__(self):
        from bench.kernel_launches import problems, record

        self.launches: list[tuple] = []  # (problem, [KernelLaunch])
        self.errors: list[str] = []
        self.skipped: list[str] = []
        for problem, path in problems():
            try:
                launches = record(problem, path)
            except Exception as e:  # a model that cannot run its step: report, keep going
                self.errors.append(
                    f"{problem}: cannot record its launches: {type(e).__name__}: {e}"
                )
                continue
            if not launches:
                self.skipped.append(f"{problem}: the config refuses this precision")
            self.launches.append((problem, launches))
        self.eval_mode = [str(p) for p, _ in self.launches if p.mode == "eval"]

    def specs(self, backend) -> tuple[dict[str, CompileSpec], dict[str, list]]:
        """(distinct specs by key, the problems that launch each) for one target's backend."""
        specs: dict[str, CompileSpec] = {}
        users: dict[str, list] = {}
        for problem, launches in self.launches:
            for launch in launches:
                spec = CompileSpec(launch, backend)
                specs.setdefault(spec.key, spec)
                users.setdefault(spec.key, []).append(problem)
        return specs, users


def _summary(configs: list[dict]) -> dict:
    def agg(rows: list[dict]) -> dict:
        return {
            "configs": len(rows),
            "max_registers": max(r["registers"] for r in rows),
            "max_stack_bytes": max(r["stack_bytes"] for r in rows),
            "spilling_configs": sum(r["stack_bytes"] > 0 for r in rows),
            "max_shared_bytes": max(r["shared_bytes"] for r in rows),
        }

    done = [c for c in configs if "registers" in c]
    per_kernel = {}
    for name in sorted({c["kernel"] for c in done}):
        per_kernel[name] = agg([c for c in done if c["kernel"] == name])
    return {"total": agg(done) if done else {}, "per_kernel": per_kernel}


# Set in the parent before the worker processes fork, so they inherit it (nothing is pickled but
# a key and the result).
_SPECS: dict[str, CompileSpec] = {}


def measure(spec: CompileSpec, target) -> dict:
    """Compile one spec (or take it from Triton's cache): registers, stack and local bytes of its
    cubin and its shared memory, or {"error": message}."""
    try:
        compiled = spec.compile(target)
    except Exception as e:  # the message is the report: compile errors name the kernel line
        return {"error": f"does not compile for sm_{target.arch}: {type(e).__name__}: {e}"}
    usage = resource_usage(compiled.asm["cubin"], compiled.metadata.name)
    return usage | {"shared_bytes": int(compiled.metadata.shared)}


def problem_with(result: dict, arch: int) -> str | None:
    """What fails a measured configuration on sm_<arch>: a compile error, or more shared memory
    per block than the target has; None when it is fine."""
    if "error" in result:
        return result["error"]
    if result["shared_bytes"] > SHARED_LIMIT_BYTES[arch]:
        return (
            f"needs {result['shared_bytes']} bytes of shared memory per block; sm_{arch} has "
            f"{SHARED_LIMIT_BYTES[arch]}"
        )
    return None


def _compile_one(key: str, target) -> dict:
    return measure(_SPECS[key], target)


def compile_all(specs: dict[str, CompileSpec], target, jobs: int) -> dict[str, dict]:
    """Compile every spec, `jobs` processes at a time (LLVM and ptxas are CPU-bound)."""
    _SPECS.clear()
    _SPECS.update(specs)
    keys = sorted(specs)
    if jobs <= 1:
        return {k: _compile_one(k, target) for k in keys}
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(jobs) as pool:
        results = pool.starmap(_compile_one, [(k, target) for k in keys], chunksize=1)
    return dict(zip(keys, results, strict=True))


def run(arch: int, recording: Recording, jobs: int = 1) -> tuple[dict, list[str]]:
    """Compile and measure every recorded configuration for sm_<arch>: (report, errors)."""
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas_version
    from triton.compiler.compiler import make_backend

    target = GPUTarget("cuda", arch, 32)
    limit = SHARED_LIMIT_BYTES[arch]
    specs, users = recording.specs(make_backend(target))
    results = compile_all(specs, target, jobs)
    errors = list(recording.errors)
    configs = []
    for key, spec in sorted(specs.items()):
        row = {
            "key": key,
            "kernel": spec.name,
            "constexprs": dict(spec.constants),
            "num_warps": spec.options.num_warps,
            "num_stages": spec.options.num_stages,
            "used_by": used_by(users[key]),
        }
        result = results[key]
        problem = problem_with(result, arch)
        if problem:
            errors.append(f"{key}: {problem}")
        configs.append(row | {k: v for k, v in result.items() if k != "error"})
    report = {
        "benchmark": "kernels_compile",
        **environment(),
        "target": f"sm_{arch}",
        "ptxas": get_ptxas_version(arch).split("\n")[-1].strip(),
        "shared_limit_bytes": limit,
        "summary": _summary(configs),
        "skipped": recording.skipped,
        "recorded_in_eval_mode": recording.eval_mode,
        "errors": errors,
        "configs": configs,
    }
    report["device"] = f"none (compiled for sm_{arch} on {report['device']})"
    return report, errors


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--arch", type=int, action="append", required=True, choices=sorted(SHARED_LIMIT_BYTES)
    )
    ap.add_argument("--out", type=Path, help="write the JSON here (one --arch)")
    ap.add_argument("--out-dir", type=Path, help="write kernels-compile-sm<arch>.json here")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compile processes")
    args = ap.parse_args(argv)
    if args.out and len(args.arch) > 1:
        ap.error("--out takes one --arch; use --out-dir for several")
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("error: unset TRITON_INTERPRET: the interpreter cannot compile", file=sys.stderr)
        return 2
    recording = Recording()
    failed = False
    for arch in args.arch:
        report, errors = run(arch, recording, args.jobs)
        text = json.dumps(report, indent=1)
        out = args.out or (
            args.out_dir / f"kernels-compile-sm{arch}.json" if args.out_dir else None
        )
        if out:
            out.write_text(text + "\n")
        else:
            print(text)
        s = report["summary"]["total"]
        print(
            f"sm_{arch}: {s.get('configs', 0)} configurations, max {s.get('max_registers')} "
            f"registers, {s.get('spilling_configs')} spill to the stack, {len(errors)} errors",
            file=sys.stderr,
        )
        for e in errors:
            print(f"error: sm_{arch}: {e}", file=sys.stderr)
        failed |= bool(errors)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
