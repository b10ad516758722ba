"""The GPU check's outputs: capped JSON files, the time budget, and the short table on stdout."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

MAX_FILES = 8  # what comes back from the device machine
MAX_BYTES = 16 * 2**20  # per file
AUTO_LINES = 20  # auto's choices listed in the table

GOALS = {
    "wgan_gp_triton_vs_eager": 1.3,
    "wgan_gp_triton_vs_compile": 1.0,
    "cwgan_gp_64_512_mfu": 0.35,
}


class Results:
    """JSON files in one folder, rewritten after every item so that a run cut short still
    leaves what it measured; refuses more than MAX_FILES files or a file over MAX_BYTES."""

    def __init__(self, out: Path):
        self.out = out
        self.names: list[str] = []
        out.mkdir(parents=True, exist_ok=True)

    def write(self, name: str, data: object) -> Path:
        if name not in self.names:
            if len(self.names) >= MAX_FILES:
                raise RuntimeError(
                    f"the check writes at most {MAX_FILES} files; {name} is one more"
                )
            self.names.append(name)
        text = json.dumps(data, indent=1, default=str) + "\n"
        if len(text.encode()) > MAX_BYTES:
            raise RuntimeError(f"{name} would be {len(text.encode())} bytes, over {MAX_BYTES}")
        path = self.out / name
        path.write_text(text)
        return path


class Budget:
    """Seconds for the whole check, shared by the sections still to run in proportion to their
    weights; time a section leaves unused rolls over to the later ones."""

    def __init__(self, total_s: float, weights: dict[str, float], clock=time.monotonic):
        self.clock = clock
        self.end = clock() + total_s
        self.weights = dict(weights)
        self.section_end = self.end

    def start(self, section: str) -> None:
        remaining = max(0.0, self.end - self.clock())
        share = self.weights[section] / sum(self.weights.values())
        self.section_end = self.clock() + remaining * share
        del self.weights[section]

    def left(self) -> float:
        """Seconds left to the current section (<= 0: skip what remains of it)."""
        return self.section_end - self.clock()


def _ratio(a, b):
    return round(a / b, 3) if a and b else None


def goals(train_rows: list[dict]) -> dict[str, dict]:
    """The issue's goals against the measured train-step rows (None: not measured)."""
    by = {(r["variant"], r["resolution"], r["batch"]): r for r in train_rows}
    out = {}
    for shape in sorted(
        {(r["resolution"], r["batch"]) for r in train_rows if r["variant"] == "wgan-gp"}
    ):
        r = by[("wgan-gp", *shape)]
        for base, key in (
            ("eager", "wgan_gp_triton_vs_eager"),
            ("compile", "wgan_gp_triton_vs_compile"),
        ):
            got = _ratio(r.get("triton_img_s"), r.get(f"{base}_img_s"))
            out[f"{key}@{shape[0]}x{shape[1]}"] = _goal(got, GOALS[key])
    r = by.get(("cwgan-gp", 64, 512), {})
    best = max((r.get(f"{m}_mfu") or 0 for m in ("eager", "compile", "triton", "auto")), default=0)
    out["cwgan_gp_64_512_mfu"] = _goal(best or None, GOALS["cwgan_gp_64_512_mfu"])
    return out


def _goal(value, target) -> dict:
    met = None if value is None else value >= target
    return {"value": value, "target": target, "met": met}


def table(correct: list[dict], speed: list[dict], train: list[dict], auto: list[dict]) -> str:
    """The short summary printed at the end."""
    lines = []
    ok = sum(1 for r in correct if r.get("ok") is True)
    bad = [r for r in correct if r.get("ok") is False]
    skipped = sum(1 for r in correct if "skipped" in r)
    lines.append(f"kernel correctness: {ok} ok, {len(bad)} failed, {skipped} skipped")
    for r in bad[:10]:
        why = r.get("error") or f"max abs err {r.get('max_abs_err'):.3g} at {r.get('worst')}"
        lines.append(f"  FAIL {r['op']} {r['case']} {r['dtype']}: {why}")
    for op in ("conv_transpose2d", "gp_pieces", "critic_step_gp"):
        rows = [r for r in speed if r["op"] == op]
        for key in sorted({k for r in rows for k in r if k.startswith("triton_vs_")}):
            vals = [r[key] for r in rows if r.get(key)]
            if vals:
                mid, name = statistics.median(vals), key.replace("_", " ")
                lines.append(
                    f"kernel speed {op} {name}: median {mid:.2f}x"
                    f" (min {min(vals):.2f}, max {max(vals):.2f}, {len(vals)} shapes)"
                )
    if train:
        head = f"{'variant':<12}{'shape':>8}" + "".join(
            f"{m + ' img/s':>15}" for m in ("eager", "compile", "triton", "auto")
        )
        dtypes = ", ".join(sorted({r["dtype"] for r in train}))
        lines += [f"train step ({dtypes}):", head + f"{'GFLOP/it':>10}{'best MFU':>10}"]
        for r in train:
            cells = "".join(
                _cell(r.get(f"{m}_img_s")) for m in ("eager", "compile", "triton", "auto")
            )
            mfus = [r.get(f"{m}_mfu") for m in ("eager", "compile", "triton", "auto")]
            best = max((v for v in mfus if v is not None), default=None)
            flop = r.get("flop_per_iter")
            lines.append(
                f"{r['variant']:<12}{str(r['resolution']) + 'x' + str(r['batch']):>8}{cells}"
                f"{'-' if flop is None else f'{flop / 1e9:.3g}':>10}"
                f"{'-' if best is None else f'{best:.1%}':>10}"
            )
    chosen = [a["chosen"] for a in auto]
    lines.append(
        f"auto: {len(auto)} cases, triton {chosen.count('triton')}, torch {chosen.count('torch')}"
    )
    for a in auto[:AUTO_LINES]:
        case = f"{a['op']} {a['dtype']} {a.get('measured', '')} [{a['shape']}]"
        lines.append(f"  {case}: {a['chosen']} ({a['reason']})")
    if len(auto) > AUTO_LINES:
        lines.append(f"  ... {len(auto) - AUTO_LINES} more in auto-choices.json")
    for name, g in goals(train).items():
        state = {True: "met", False: "NOT met", None: "untested"}[g["met"]]
        lines.append(f"goal {name} >= {g['target']}: {g['value']} ({state})")
    return "\n".join(lines)


def _cell(v) -> str:
    return f"{'-' if v is None else f'{v:.0f}':>15}"
