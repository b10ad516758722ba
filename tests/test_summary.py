"""The one-screen summary `ganforge train` ends with, read from a run dir (no training here: a
real checkpoint written by the serving tests' helper, and a metrics.jsonl as the loop writes)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ganforge.cluster.summary import print_summary, summary_rows

sys.path.insert(0, str(Path(__file__).parent))
from serve_helpers import make_checkpoint  # noqa: E402


def test_summary_of_a_run(tmp_path, capsys):
    run = tmp_path / "cifar"
    ckpt = make_checkpoint(run, "dcgan")
    (run / "samples").mkdir()
    (run / "samples" / "step-000010.png").write_bytes(b"png")
    records = [
        {"step": 5, "images_seen": 320, "loss_d": 1.0, "loss_g": 2.0, "images_per_s": 10.0},
        {"step": 10, "images_seen": 640, "loss_d": 0.5, "loss_g": 1.5, "gp": 0.25}
        | {"images_per_s": 1234.4, "input_wait_frac": 0.125},
    ]
    lines = [json.dumps(r) for r in records] + ['{"step": 11, "loss']  # cut short by a crash
    (run / "metrics.jsonl").write_text("\n".join(lines))
    rows = dict(summary_rows(run, 90.0, "s3://bucket/runs/cifar"))
    assert rows["run dir"] == "s3://bucket/runs/cifar" and rows["local mirror"] == str(run)
    assert rows["step"] == "10 (640 real images seen)"
    assert rows["last losses"] == "loss_d 0.5000, loss_g 1.5000, gp 0.2500"
    assert rows["throughput"] == "1,234 images/s, 12% of the time waiting for input"
    assert rows["wall time"] == "1.5 min"
    assert rows["checkpoint"] == str(ckpt)
    assert rows["samples"].endswith("step-000010.png")
    assert rows["serve it"] == "ganforge serve --model cifar=s3://bucket/runs/cifar"
    print_summary("ganforge train: cifar", list(rows.items()))
    out = capsys.readouterr().out
    assert "ganforge train: cifar" in out and "1,234 images/s" in out


def test_summary_of_a_run_without_records(tmp_path):
    rows = dict(summary_rows(tmp_path / "new", 3.0))
    assert rows["checkpoint"] == rows["samples"] == "(none yet)"
    assert "step" not in rows and "local mirror" not in rows
