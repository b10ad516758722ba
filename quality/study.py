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
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ganforge.checkpoint import list_checkpoints
from ganforge.rundir import RunDir

DEFAULT_VARIANTS = ("dcgan", "cdcgan", "wgan", "wgan-gp", "cwgan-gp", "stylegan2", "cstylegan2")


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


@dataclass(frozen=True)
class StudyOptions:
    """What every variant of a study shares: the budget, the training scale, the overrides."""

    steps: int  # the budget: generator steps of a variant with one critic step per G step
    variants: tuple[str, ...] = DEFAULT_VARIANTS
    budget: str = "images"  # "images": same real images through the critic; or "g-steps"
    num_workers: int = 1  # Ray Train workers per run
    micro_batch: int | None = None  # images per worker per step; None: the variant's config
    seed: int = 0  # training seed (and the default evaluation seed)
    # config key -> value applied to every variant alike, e.g. {"model.width": 32}
    overrides: Mapping[str, Any] = field(default_factory=dict)


def variant_config(variant: str, data: str, run_dir: Path, opts: StudyOptions):
    """The shipped config of `variant` with the study's budget, data and run dir applied.

    `opts.overrides` apply to every variant alike, so a small CPU study can shrink the models
    without changing what is compared.
    """
    from ganforge.config import load_config, resolve_config_path

    base = load_config(resolve_config_path(variant))
    n_critic = base.loss.n_critic
    max_steps = math.ceil(opts.steps / n_critic) if opts.budget == "images" else opts.steps
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
            "train.seed": opts.seed,
            "train.micro_batch": opts.micro_batch,
            "cluster.num_workers": opts.num_workers,
        }
        | dict(opts.overrides),
    )


def plan(out: Path, data: str, opts: StudyOptions):
    """-> (one StudyPlan per variant, in order; variant -> its config)."""
    plans, configs = [], {}
    for v in opts.variants:
        run_dir = out / "runs" / v
        cfg = variant_config(v, data, run_dir, opts)
        found = list_checkpoints(RunDir(run_dir).checkpoints)
        done = found[0][0] if found else 0
        plans.append(StudyPlan(v, run_dir, cfg.train.max_steps, cfg.loss.n_critic, done))
        configs[v] = cfg
    return plans, configs


def run_study(
    data: str | Path,
    out: str | Path,
    opts: StudyOptions,
    eval_settings=None,
    progress: bool = True,
) -> dict:
    """Train (or reuse) each variant's run under OUT/runs/<variant>, then write OUT/report."""
    from ganforge.quality.compare import evaluate_runs
    from ganforge.quality.evaluate import EvalSettings

    out = Path(out)
    plans, configs = plan(out, str(data), opts)
    _train_unfinished(plans, configs, progress)
    settings = eval_settings or EvalSettings(checkpoint="all", seed=opts.seed)
    study = _study_summary(opts, plans, configs)
    runs = [p.run_dir for p in plans]
    return evaluate_runs(runs, data, out / "report", settings, progress, {"study": study})


def _train_unfinished(plans: list[StudyPlan], configs: dict, progress: bool) -> None:
    """Train every planned run that has not reached its step count (resuming where it can)."""
    from ganforge.cluster.launch import run_training

    for i, p in enumerate(plans, 1):
        at = f"[{i}/{len(plans)}] {p.variant}"  # each run's own bar below shows its ETA
        if p.finished:
            print(f"{at}: reusing {p.run_dir} (step {p.done_steps} >= {p.max_steps})")
            continue
        print(
            f"{at}: training {p.max_steps} generator steps "
            f"(n_critic={p.n_critic}, from step {p.done_steps})"
        )
        run_training(configs[p.variant], resume=None, show_progress=progress)


def _study_summary(opts: StudyOptions, plans: list[StudyPlan], configs: dict) -> dict:
    """The report's `study` section: the budget and what each variant trained for."""
    variants = {
        p.variant: {
            "max_steps": p.max_steps,
            "n_critic": p.n_critic,
            "micro_batch": configs[p.variant].train.micro_batch,
        }
        for p in plans
    }
    return {
        "budget": opts.budget,
        "steps": opts.steps,
        "num_workers": opts.num_workers,
        "overrides": dict(opts.overrides),
        "variants": variants,
    }
