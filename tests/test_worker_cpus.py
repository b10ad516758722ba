"""Worker CPUs and threads: `cluster.cpus_per_worker` auto resolution, the command-line precedence
that once dropped `--set cluster.cpus_per_worker=2` (so `ganforge train` trained on one thread
while `run_training` used two), the summary row that states the threads, and the training
benchmark's `ganforge train` path (its arguments and bookkeeping; nothing is timed here).
The threads a real worker runs on are checked end to end in test_train.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from bench.train_cli import median_rate, train_command
from bench.train_throughput import _config, _overrides, parser
from bench.worker_probe import WorkerProbe, summarize
from ganforge.cli import app
from ganforge.cluster.summary import summary_rows
from ganforge.cluster.worker_cpus import resolve_worker_cpus
from ganforge.config import ConfigError, cli_overrides, load_config, resolve_config_path
from ganforge.rundir import RunDir

sys.path.insert(0, str(Path(__file__).parent))
from serve_helpers import make_checkpoint  # noqa: E402


@pytest.mark.parametrize(
    ("local_cpus", "workers", "per_worker"),
    [(2.0, 1, 2), (8.0, 3, 2), (4.0, 4, 1), (16.0, 2, 8)],
)
def test_auto_divides_the_local_node_among_the_workers(local_cpus, workers, per_worker):
    cpus = resolve_worker_cpus(None, workers, local_cpus)
    assert cpus.per_worker == per_worker
    assert cpus.how == f"auto: {local_cpus:g} free local CPUs / {workers}"


def test_an_explicit_value_wins_and_a_joined_cluster_gets_one_per_worker():
    assert resolve_worker_cpus(3, 1, 2.0).per_worker == 3  # even above what the node has
    assert resolve_worker_cpus(3, 2, None).how == "cluster.cpus_per_worker"
    joined = resolve_worker_cpus(None, 4, None)
    assert joined.per_worker == 1 and "joined Ray cluster" in joined.how
    assert joined.banner(4, gpu=True) == f"4 workers x 1 GPU + 1 CPU torch threads ({joined.how})"


def test_auto_refuses_more_workers_than_local_cpus():
    with pytest.raises(ConfigError, match="--num-workers 3 needs at least one CPU per worker"):
        resolve_worker_cpus(None, 3, 2.0)


def test_auto_counts_only_the_cpus_other_ray_work_leaves_free():
    """A process that already runs Ray work (here an actor holding one CPU; in test_serve a Serve
    replica) gets the free CPUs: asking for the node's total would leave the workers waiting."""
    import ray

    from ganforge.cluster.worker_cpus import local_node_cpus

    ray.init(num_cpus=2, include_dashboard=False, address="local")
    try:

        @ray.remote(num_cpus=1)
        class Holder:
            def ready(self) -> bool:
                return True

        holder = Holder.remote()
        assert ray.get(holder.ready.remote())
        assert local_node_cpus() == 1.0
        assert resolve_worker_cpus(None, 1, local_node_cpus()).per_worker == 1
    finally:
        ray.shutdown()
    assert local_node_cpus() is None  # not initialised


def test_the_config_default_is_auto():
    dcgan = resolve_config_path("dcgan")
    assert load_config(dcgan).cluster.cpus_per_worker is None
    assert load_config(dcgan, {"cluster.cpus_per_worker": "auto"}).cluster.cpus_per_worker is None
    assert load_config(dcgan, {"cluster.cpus_per_worker": 2}).cluster.cpus_per_worker == 2
    with pytest.raises(ConfigError, match="cluster.cpus_per_worker"):
        load_config(dcgan, {"cluster.cpus_per_worker": 0})
    with pytest.raises(ConfigError, match="a positive integer or 'auto', got 'lots'"):
        load_config(dcgan, {"cluster.cpus_per_worker": "lots"})


def test_flags_win_over_set_and_an_absent_flag_keeps_the_set_value():
    sets = ["cluster.cpus_per_worker=2", "train.max_steps=7", "model.width=8"]
    flags = {"cluster.cpus_per_worker": None, "train.max_steps": 9, "cluster.gpu": None}
    assert cli_overrides(sets, flags) == {
        "cluster.cpus_per_worker": 2,
        "train.max_steps": 9,
        "model.width": 8,
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        # Each key also has a flag; left out, the flag once erased the --set value.
        (["--set", "cluster.cpus_per_worker=0"], "cluster.cpus_per_worker"),
        (["--set", "train.precision=fp16"], "train.precision=fp16 needs a GPU"),
        # The flag, given, wins over --set.
        (["--set", "train.precision=fp32", "--precision", "fp16"], "fp16 needs a GPU"),
    ],
)
def test_the_train_command_applies_set_for_keys_that_have_flags(tmp_path, args, message):
    """Refused while the config is validated, before Ray starts: the value reached the config."""
    cmd = ["train", "--config", "dcgan", "--run-dir", str(tmp_path / "run"), "--no-progress"]
    res = CliRunner().invoke(app, cmd + args)
    assert res.exit_code == 2, res.output
    assert "error:" in res.output and message in res.output
    assert not (tmp_path / "run").exists()


def test_the_summary_states_the_workers_threads(tmp_path):
    run = tmp_path / "cifar"
    make_checkpoint(run, "dcgan", extra_meta={"torch_threads": 2, "world_size": 1})
    rows = dict(summary_rows(run, 60.0))
    assert rows["threads"] == "1 worker x 2 torch threads (auto)"  # config.yaml: null

    make_checkpoint(run, "dcgan", extra_meta={"torch_threads": 3, "world_size": 2})
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["cluster"]["cpus_per_worker"] = 3
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    rows = dict(summary_rows(run, 60.0))
    assert rows["threads"] == "2 workers x 3 torch threads (cluster.cpus_per_worker)"


def test_a_summary_of_checkpoints_without_the_thread_count_has_no_threads_row(tmp_path):
    make_checkpoint(tmp_path / "old", "dcgan")
    assert "threads" not in dict(summary_rows(tmp_path / "old", 1.0))


def test_benchmark_arguments():
    args = parser().parse_args(["--variants", "dcgan", "--threads", "auto"])
    assert args.threads is None and args.paths == ["in-process", "cli"]
    assert parser().parse_args(["--threads", "3", "--paths", "cli"]).threads == 3
    for bad in (["--threads", "0"], ["--threads", "two"], ["--paths", "gpu"]):
        with pytest.raises(SystemExit):
            parser().parse_args(bad)


@pytest.mark.parametrize("threads", [2, None])
def test_the_cli_path_trains_the_config_the_in_process_path_trains(tmp_path, threads):
    """The `ganforge train` command the benchmark runs, parsed as the command parses it, gives
    the same config as the in-process measurement (the same settings, as --set)."""
    sets = _overrides("shards/cifar10", 60, 64, threads)
    cmd = train_command("wgan-gp", sets | {"cluster.gpu": True}, str(tmp_path / "run"))
    i, run = cmd.index("train"), str(tmp_path / "run")
    flags = ["--config", "wgan-gp", "--run-dir", run, "--max-steps", "60", "--no-progress"]
    assert cmd[i : i + 8] == ["train", *flags]
    assert "cluster.gpu=true" in cmd
    given = [cmd[i + 1] for i, arg in enumerate(cmd) if arg == "--set"]
    sets_threads = any(s.startswith("cluster.cpus_per_worker=") for s in given)
    assert sets_threads == (threads is not None)  # auto: left to ganforge's default
    via_cli = load_config(
        resolve_config_path("wgan-gp"),
        cli_overrides(given, {"run_dir": run, "train.max_steps": 60}),
    )
    in_process = _config("wgan-gp", "shards/cifar10", 60, 64, threads, run)
    in_process.cluster.gpu = True
    assert via_cli == in_process


def test_the_benchmark_reads_the_windows_after_the_warm_up(tmp_path):
    rates = [5.0, 200.0, 100.0, 300.0]
    lines = [json.dumps({"step": 10 * (i + 1), "images_per_s": r}) for i, r in enumerate(rates)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    assert median_rate(tmp_path) == 200.0
    (tmp_path / "metrics.jsonl").write_text(lines[0] + "\n")
    with pytest.raises(RuntimeError, match="fewer than two metrics windows"):
        median_rate(tmp_path)


def test_the_probe_counts_the_threads_that_did_the_work():
    first = {1: 10.0, 2: 5.0, 3: 0.0}
    last = {1: 30.0, 2: 24.0, 3: 0.1, 4: 0.5}  # thread 4 started inside the window
    report = summarize(first, last, driver_cpu_s=0.4, seconds=20.0)
    assert report["busy_threads"] == 2
    assert report["worker_thread_cpu_s"] == [20.0, 19.0, 0.5, 0.1]
    assert report["driver_cpu_cores"] == 0.02


def test_the_probe_samples_a_live_worker_from_its_pid_file(tmp_path):
    """A stand-in worker process (one busy thread, OMP_NUM_THREADS set) found through the pid
    file a rank writes; sampling starts with the first metrics record."""
    run = RunDir(tmp_path)
    spin = "import time\nend = time.time() + 30\nwhile time.time() < end: pass\n"
    env = {**os.environ, "OMP_NUM_THREADS": "3"}
    worker = subprocess.Popen([sys.executable, "-c", spin], env=env)
    try:
        run.pid_file(0).parent.mkdir(parents=True)
        run.pid_file(0).write_text(str(worker.pid))
        with WorkerProbe(tmp_path, os.getpid(), interval=0.2) as probe:
            time.sleep(0.5)
            run.metrics_path.write_text('{"step": 1}\n')  # the window opens
            time.sleep(1.5)
            with open(run.metrics_path, "a") as f:
                f.write('{"step": 2}\n')  # and, for now, ends here
            time.sleep(1.0)
        report = probe.report()
    finally:
        worker.kill()
        worker.wait()
    assert report["busy_threads"] == 1 and report["worker_thread_cpu_s"][0] > 0
    assert report["worker_thread_env"]["OMP_NUM_THREADS"] == "3"
    assert report["worker_affinity"] == sorted(os.sched_getaffinity(0))  # inherited
    assert 0 <= report["driver_cpu_cores"] < 1 and report["window_s"] > 0


def test_a_probe_that_saw_no_training_window_says_so(tmp_path):
    with WorkerProbe(tmp_path, os.getpid(), interval=0.05) as probe:
        time.sleep(0.2)
    assert "no sample of a training window" in probe.report()["error"]
