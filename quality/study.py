"""`ganforge study`: train every variant with the same budget, then compare them.

Budget = real images through the critic (same images seen, same batch). `--steps N` is the
generator-step count of a variant with one critic step per generator step; a variant with
`n_critic` critic steps per generator step gets ceil(N / n_critic) generator steps, so every
critic sees N x batch real images. (`budget="g-steps"` gives every variant N generator steps
instead: the WGAN family then sees n_critic times more data and compute.)
Every variant is trained once per seed (`seeds`, at least 3 for a verdict: figures are then
reported as a mean with a 95% interval over seeds, see `study_stats`). Finished runs are reused:
a run that already reached its step count is not retrained, an unfinished one resumes from its
latest checkpoint. The first seed's run keeps the v1 folder (`runs/<variant>`), so a study made
before seeds existed is reused as that seed; the others are `runs/<variant>-seed<k>`.
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
    seed: int
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
    seed: int = 0  # evaluation seed; also the first training seed when `seeds` is not given
    seeds: tuple[int, ...] | None = None  # training seeds; None: (seed,)
    # config key -> value applied to every variant alike, e.g. {"model.width": 32}
    overrides: Mapping[str, Any] = field(default_factory=dict)
    # "ray": Ray Train + DeepSpeed (`ganforge train`); "single": one process per run on `device`
    # without them (`cluster.single_process`), `jobs` runs at a time (they share the device).
    # `jobs` > 1 also evaluates that many runs at a time (in processes, each writing its cache).
    trainer: str = "ray"
    device: str = "cpu"
    jobs: int = 1

    @property
    def training_seeds(self) -> tuple[int, ...]:
        return self.seeds or (self.seed,)


def run_dir_for(out: Path, variant: str, seed: int, opts: StudyOptions) -> Path:
    """OUT/runs/<variant> for the first seed (the v1 layout, reused as is), else
    OUT/runs/<variant>-seed<k>."""
    first = opts.training_seeds[0]
    return out / "runs" / (variant if seed == first else f"{variant}-seed{seed}")


def variant_config(
    variant: str, data: str, run_dir: Path, opts: StudyOptions, seed: int | None = None
):
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
            "train.seed": opts.seed if seed is None else seed,
            "train.micro_batch": opts.micro_batch,
            "cluster.num_workers": opts.num_workers,
        }
        | dict(opts.overrides),
    )


def plan(out: Path, data: str, opts: StudyOptions):
    """-> (one StudyPlan per variant and seed, seed by seed so that an interrupted study has
    whole seeds done; run dir -> its config)."""
    plans, configs = [], {}
    for seed in opts.training_seeds:
        for v in opts.variants:
            run_dir = run_dir_for(out, v, seed, opts)
            cfg = variant_config(v, data, run_dir, opts, seed)
            found = list_checkpoints(RunDir(run_dir).checkpoints)
            done = found[0][0] if found else 0
            plans.append(StudyPlan(v, seed, run_dir, cfg.train.max_steps, cfg.loss.n_critic, done))
            configs[run_dir] = cfg
    return plans, configs


def status(out: Path, data: str, opts: StudyOptions) -> dict[str, Any]:
    """How far the study in OUT got: each planned run's steps against its target, and which
    variants have every seed finished (only those can be reported). Written to
    OUT/status.json too, so that a study left running records where it stood."""
    import datetime as dt
    import json

    plans, _ = plan(out, data, opts)
    runs = [
        {
            "variant": p.variant,
            "seed": p.seed,
            "run": p.run_dir.name,
            "steps": p.done_steps,
            "max_steps": p.max_steps,
            "finished": p.finished,
        }
        for p in plans
    ]
    complete = [v for v in opts.variants if all(r["finished"] for r in runs if r["variant"] == v)]
    body = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "runs": runs,
        "complete_variants": complete,
        "incomplete_variants": [v for v in opts.variants if v not in complete],
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "status.json").write_text(json.dumps(body, indent=1) + "\n")
    return body


def study_settings(seed: int = 0, **kw: Any):
    """The study's evaluation defaults: every checkpoint (the curves), the held-out `test` split
    as the real reference, 10,000 fakes, the FID's sampling error by bootstrap."""
    from ganforge.quality.evaluate import EvalSettings

    base = {"checkpoint": "all", "seed": seed, "real_split": "test", "fid_bootstrap": 50}
    return EvalSettings(**(base | kw))


def reference_note(settings) -> str:
    """Whether the real reference is out of the feature network's training sample (its record
    names the split it only tested on)."""
    import json

    from ganforge.quality.features import DEFAULT_CLASSIFIER

    if settings.inception_weights:
        return f"split `{settings.real_split}` against Inception-v3 features (ImageNet-trained)"
    also = (
        "; the Inception FID and KID use ImageNet-trained Inception-v3 features, out of sample too"
        if settings.also_inception
        else ""
    )
    path = Path(settings.classifier) if settings.classifier else DEFAULT_CLASSIFIER
    try:
        held_out = json.loads(path.with_suffix(".json").read_text()).get("test_split")
    except (OSError, ValueError):
        held_out = None
    if held_out == settings.real_split:
        return (
            f"split `{settings.real_split}`, which the feature network ({path.name}) never "
            "trained on: real and generated features are both out of its training sample" + also
        )
    return (
        f"split `{settings.real_split}`; the feature network's record does not say it was held "
        "out of its training: real features may be in-sample while the fakes are not" + also
    )


def run_study(
    data: str | Path,
    out: str | Path,
    opts: StudyOptions,
    eval_settings=None,
    progress: bool = True,
    detect=None,
) -> dict:
    """Train (or reuse) each variant's runs (one per seed) under OUT/runs, measure their
    detectability (`detect`: DetectOptions, None = skip) and write OUT/report with the summary
    over seeds. Every stage reuses what an earlier call finished."""
    out = Path(out)
    plans, configs = plan(out, str(data), opts)
    _train_unfinished(plans, configs, progress, opts)
    return report_study(data, out, opts, plans, configs, eval_settings, progress, detect)


def train_part(data: str | Path, out: str | Path, opts: StudyOptions, part: int, parts: int):
    """Train only runs part, part + parts, ... of the plan (no report): several processes or
    machines sharing OUT split a study so, then one `run_study` reuses them all."""
    if not 0 <= part < parts:
        raise ValueError(f"--part {part}/{parts}: the part must be in 0..{parts - 1}")
    plans, configs = plan(Path(out), str(data), opts)
    _train_unfinished(plans[part::parts], configs, True, opts)
    return plans[part::parts]


def report_study(data, out: Path, opts, plans, configs, eval_settings, progress, detect) -> dict:
    """Detectability, evaluation (cached per run) and the report of trained runs."""
    from ganforge.quality.compare import evaluate_runs
    from ganforge.quality.study_detect import detectability
    from ganforge.quality.study_summary import summarize

    settings = eval_settings or study_settings(opts.seed)
    study = _study_summary(opts, plans, configs)
    study["reference_note"] = reference_note(settings)
    found = None
    if detect is not None:
        first = {p.variant: p.run_dir for p in plans if p.seed == opts.training_seeds[0]}
        found = detectability(data, first, out / "report" / "detection", detect, progress)

    def finish(body: dict) -> None:
        body["study"]["detection"] = found
        body["study"]["summary"] = summarize(body, found)

    runs = [p.run_dir for p in plans]
    return evaluate_runs(
        runs,
        data,
        out / "report",
        settings,
        progress,
        {"study": study},
        reuse=True,
        finish=finish,
        jobs=opts.jobs,
    )


def _train_unfinished(plans: list[StudyPlan], configs: dict, progress: bool, opts=None) -> None:
    """Train every planned run that has not reached its step count: through Ray Train (resuming
    where it can), or with the single-process trainer, `opts.jobs` runs at a time."""
    todo = []
    for i, p in enumerate(plans, 1):
        at = f"[{i}/{len(plans)}] {p.variant} seed {p.seed}"  # each run's bar shows its ETA
        if p.finished:
            print(f"{at}: reusing {p.run_dir} (step {p.done_steps} >= {p.max_steps})")
            continue
        print(
            f"{at}: training {p.max_steps} generator steps "
            f"(n_critic={p.n_critic}, from step {p.done_steps})"
        )
        todo.append(configs[p.run_dir])
    if opts is not None and opts.trainer == "single":
        _train_single_process(todo, opts, progress)
        return
    from ganforge.cluster.launch import run_training

    for cfg in todo:
        run_training(cfg, resume=None, show_progress=progress)


def _train_single_process(todo: list, opts: StudyOptions, progress: bool) -> None:
    """`jobs` single-process runs at a time on `opts.device` (a GPU runs several small models
    faster together than one by one: each alone leaves it idle between kernel launches)."""
    from ganforge.cluster.single_process import train_single

    if opts.jobs <= 1 or len(todo) <= 1:
        for cfg in todo:
            train_single(cfg, opts.device, progress)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    spawn = multiprocessing.get_context("spawn")  # CUDA cannot be used in forked children
    with ProcessPoolExecutor(min(opts.jobs, len(todo)), mp_context=spawn) as pool:
        futures = {pool.submit(train_single, cfg, opts.device, False): cfg for cfg in todo}
        for done in as_completed(futures):
            print(f"trained {done.result()}")


def _study_summary(opts: StudyOptions, plans: list[StudyPlan], configs: dict) -> dict:
    """The report's `study` section: the budget and what each variant trained for."""
    variants = {
        p.variant: {
            "max_steps": p.max_steps,
            "n_critic": p.n_critic,
            "micro_batch": configs[p.run_dir].train.micro_batch,
        }
        for p in plans
    }
    return {
        "budget": opts.budget,
        "steps": opts.steps,
        "num_workers": opts.num_workers,
        "seeds": list(opts.training_seeds),
        "overrides": dict(opts.overrides),
        "trainer": opts.trainer,
        "variants": variants,
    }
