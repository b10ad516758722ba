"""The study's statistics: intervals over seeds, the tie rule, and the verdicts on claims.

Plain functions of numbers (no torch, no files), so that the tests can give them data with a
known answer.

- `Estimate`: a figure over seeds: mean and a 95% interval, the wider of
  * over seeds: Student's t interval of the mean of the per-seed values (n - 1 degrees of
    freedom; one seed has no seed interval), and
  * over samples: +-1.96 x the standard error of that mean from each run's own sampling error
    (`sample_se`, e.g. a bootstrap over the generated images): sqrt(sum se_i^2) / n.
  With few seeds the first usually dominates; with many seeds and few samples, the second.
- `order(...)`: variants sorted by mean with, between neighbours, `<` where the intervals are
  disjoint and `~` where they overlap (a tie); `best(...)` names one winner only when its
  interval is disjoint from every other's, else the variants tied with the top one.
- `compare_groups(...)` -> "supported" / "contradicted" / "undecided" for a claim that group A
  beats group B on a figure: every pair separates one way, the other way, or not all do.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scipy import stats

CONFIDENCE = 0.95
SUPPORTED, CONTRADICTED, UNDECIDED = "supported", "contradicted", "undecided"


@dataclass(frozen=True)
class Estimate:
    mean: float
    lo: float
    hi: float
    n: int  # seeds
    source: str  # "seeds", "sampling" (which interval was the wider) or "none" (one value)

    def separates_below(self, other: Estimate) -> bool:
        """This interval lies entirely below `other`'s."""
        return self.hi < other.lo

    def as_dict(self) -> dict[str, float | int | str]:
        return {"mean": self.mean, "lo": self.lo, "hi": self.hi, "n": self.n, "source": self.source}


def estimate(
    values: Sequence[float],
    sample_se: Sequence[float] | None = None,
    confidence: float = CONFIDENCE,
) -> Estimate:
    """Mean of the per-seed `values` with the wider of the seed and the sample interval."""
    xs = [float(v) for v in values]
    if not xs or any(not math.isfinite(v) for v in xs):
        raise ValueError(f"estimate needs finite values, got {values!r}")
    n = len(xs)
    mean = sum(xs) / n
    half_seeds = 0.0
    if n > 1:
        sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
        half_seeds = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    half_samples = 0.0
    if sample_se:
        if len(sample_se) != n:
            raise ValueError(f"{len(sample_se)} standard errors for {n} values")
        z = float(stats.norm.ppf(0.5 + confidence / 2))
        half_samples = z * math.sqrt(sum(float(s) ** 2 for s in sample_se)) / n
    half = max(half_seeds, half_samples)
    if half == 0.0:
        source = "none"
    else:
        source = "seeds" if half_seeds >= half_samples else "sampling"
    return Estimate(mean, mean - half, mean + half, n, source)


def order(estimates: Mapping[str, Estimate], lower_is_better: bool) -> str:
    """`a < b ~ c` (lower is better) or `a > b ~ c` (higher is better): best first; `<`/`>`
    between neighbours whose intervals are disjoint, `~` (tie) where they overlap. Neighbours
    only: `a ~ b ~ c` does not say whether a and c separate (`separated` does)."""
    names = sorted(estimates, key=lambda k: estimates[k].mean, reverse=not lower_is_better)
    if not names:
        return ""
    sign = "<" if lower_is_better else ">"
    out = names[0]
    for a, b in zip(names, names[1:], strict=False):
        out += f" {sign if _better(estimates[a], estimates[b], lower_is_better) else '~'} {b}"
    return out


def _better(a: Estimate, b: Estimate, lower_is_better: bool) -> bool:
    return a.separates_below(b) if lower_is_better else b.separates_below(a)


def separated(estimates: Mapping[str, Estimate], lower_is_better: bool) -> dict[str, list[str]]:
    """name -> the names it beats with disjoint intervals."""
    return {
        a: [b for b in estimates if b != a and _better(estimates[a], estimates[b], lower_is_better)]
        for a in estimates
    }


def best(estimates: Mapping[str, Estimate], lower_is_better: bool) -> list[str]:
    """[winner] when its interval is disjoint from (and better than) every other's; otherwise
    the top one and every variant whose interval overlaps it (tied for best)."""
    if not estimates:
        return []
    top = min(estimates, key=lambda k: estimates[k].mean * (1 if lower_is_better else -1))
    tied = [
        k
        for k in estimates
        if k != top and not _better(estimates[top], estimates[k], lower_is_better)
    ]
    return [top, *tied]


def compare_groups(
    estimates: Mapping[str, Estimate],
    group_a: Sequence[str],
    group_b: Sequence[str],
    lower_is_better: bool,
    scale: float = 1.0,
) -> tuple[str, list[str]]:
    """Does every member of A beat every member of B? -> (verdict, one line per pair)."""
    pairs = [(a, b) for a in group_a for b in group_b if a in estimates and b in estimates]
    if not pairs:
        return UNDECIDED, ["no pair of these variants was measured"]
    lines, wins, losses = [], 0, 0
    for a, b in pairs:
        ea, eb = estimates[a], estimates[b]
        if _better(ea, eb, lower_is_better):
            wins, rel = wins + 1, "better"
        elif _better(eb, ea, lower_is_better):
            losses, rel = losses + 1, "worse"
        else:
            rel = "tied"
        lines.append(f"{a} {fmt(ea, scale)} vs {b} {fmt(eb, scale)}: {rel}")
    if wins == len(pairs):
        return SUPPORTED, lines
    if losses == len(pairs):
        return CONTRADICTED, lines
    return UNDECIDED, lines


def combine(verdicts: Sequence[str]) -> str:
    """One verdict from several measures of one claim: all agree, or undecided."""
    if verdicts and all(v == verdicts[0] for v in verdicts):
        return verdicts[0]
    return UNDECIDED


def num(x: float) -> str:
    """A figure as the report prints it: whole numbers from 1000, one decimal from 10, else
    three significant digits."""
    ax = abs(x)
    return f"{x:.0f}" if ax >= 1000 else f"{x:.1f}" if ax >= 10 else f"{x:.3g}"


def fmt(e: Estimate, scale: float = 1.0) -> str:
    """`mean [lo, hi]` (times `scale`)."""
    return f"{num(e.mean * scale)} [{num(e.lo * scale)}, {num(e.hi * scale)}]"
