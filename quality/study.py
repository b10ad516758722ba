"""`ganforge study`: train every variant with the same budget, then compare them.

Budget = real images through the critic (same images seen, same batch). `--steps N` is the
generator-step count of a variant with one critic step per generator step; a variant with
`n_critic` critic steps per generator step gets ceil(N / n_critic) generator steps, so every
critic sees N x batch real images. (`budget="g-steps"` gives every variant N generator steps
instead: the WGAN family then sees n_critic times more data and compute.)
Finished runs are reused: a variant whose run already reached its step count is not retrained,
an unfinished one resumes from its latest checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ganforge.checkpoint import list_checkpoints

DEFAULT_VARIANTS = ("dcgan", "cdcgan", "wgan", "wgan-gp", "cwgan-gp")


@dataclass
class StudyPlan:
    variant: str
    run_dir: Path
    max_steps: int
    n_critic: int
    done_steps: int

    @property
    def finished(self) -> bool:
        return self.done_steps >= self.max_steps


def variant_config(
    variant: str,
    data: str,
    steps: int,
    run_dir: Path,
    budget: str,
    num_workers: int,
    micro_batch: int | None,
    seed: int,
    overrides: dict | None = None,
):
    """The shipped config of `variant` with the study's budget, data and run dir applied.

    `overrides` (config key -> value, e.g. {"model.width": 32}) apply to every variant alike, so
    a small CPU study can shrink the models without changing what is compared.
    """
    from ganforge.config import load_config, resolve_config_path

    base = load_config(resolve_config_path(variant))
    n_critic = base.loss.n_critic
    max_steps = math.ceil(steps / n_critic) if budget == "images" else steps
    every = max(1, math.ceil(max_steps / 4))  # four checkpoints -> the over-steps plots
    return load_config(
        resolve_config_path(variant),
        {
            "name": f"study-{variant}",
            "run_dir": str(run_dir),
            "data.urls": str(data),
            "train.max_steps": max_steps,
            "train.checkpoint_every": every,
            "train.sample_every": every,
            "train.keep_checkpoints": 5,
            "train.seed": seed,
            "train.micro_batch": micro_batch,
            "cluster.num_workers": num_workers,
        }
        | (overrides or {}),
    )


def plan(out: Path, variants, data, steps, budget, num_workers, micro_batch, seed, overrides=None):
    plans, configs = [], {}
    for v in variants:
        run_dir = out / "runs" / v
        cfg = variant_config(
            v, data, steps, run_dir, budget, num_workers, micro_batch, seed, overrides
        )
        found = list_checkpoints(run_dir / "checkpoints")
        done = found[0][0] if found else 0
        plans.append(StudyPlan(v, run_dir, cfg.train.max_steps, cfg.loss.n_critic, done))
        configs[v] = cfg
    return plans, configs


def run_study(
    data: str | Path,
    steps: int,
    out: str | Path,
    variants=DEFAULT_VARIANTS,
    num_workers: int = 1,
    budget: str = "images",
    micro_batch: int | None = None,
    seed: int = 0,
    eval_settings=None,
    progress: bool = True,
    overrides: dict | None = None,
) -> dict:
    """Train (or reuse) each variant's run under OUT/runs/<variant>, then write OUT/report."""
    from ganforge.cluster.launch import run_training
    from ganforge.quality.compare import evaluate_runs
    from ganforge.quality.evaluate import EvalSettings

    out = Path(out)
    plans, configs = plan(
        out, variants, str(data), steps, budget, num_workers, micro_batch, seed, overrides
    )
    for p in plans:
        if p.finished:
            print(f"{p.variant}: reusing {p.run_dir} (step {p.done_steps} >= {p.max_steps})")
            continue
        print(
            f"{p.variant}: training {p.max_steps} generator steps "
            f"(n_critic={p.n_critic}, from step {p.done_steps})"
        )
        run_training(configs[p.variant], resume=None, show_progress=progress)
    settings = eval_settings or EvalSettings(checkpoint="all", seed=seed)
    study = {
        "budget": budget,
        "steps": steps,
        "num_workers": num_workers,
        "overrides": overrides or {},
        "variants": {
            p.variant: {
                "max_steps": p.max_steps,
                "n_critic": p.n_critic,
                "micro_batch": configs[p.variant].train.micro_batch,
            }
            for p in plans
        },
    }
    runs = [p.run_dir for p in plans]
    return evaluate_runs(runs, data, out / "report", settings, progress, {"study": study})
