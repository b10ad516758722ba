"""The checkpoint format's checks: a marker vouches for exactly the files a reader loads."""

from __future__ import annotations

import json

import pytest
import torch

from ganforge.checkpoint import CheckpointError, verify, write_weights_checkpoint
from ganforge.config import load_config, resolve_config_path
from ganforge.models import build_discriminator, build_generator, load_model
from ganforge.rundir import CheckpointDir


@pytest.fixture
def ckpt(tmp_path) -> CheckpointDir:
    cfg = load_config(resolve_config_path("dcgan"), {"model.width": 8, "model.z_dim": 8})
    g, d = build_generator(cfg.model), build_discriminator(cfg.model)
    return CheckpointDir(write_weights_checkpoint(tmp_path / "step-000001", cfg, g, g, d, 1, 64))


def _rewrite_marker(ckpt: CheckpointDir, edit) -> None:
    meta = json.loads(ckpt.marker.read_text())
    edit(meta)
    ckpt.marker.write_text(json.dumps(meta))


def test_a_weights_file_the_marker_does_not_list_is_refused(ckpt):
    """Removing weights.pt from the marker's list once made `verify(only=...)` check nothing:
    planted weights then loaded unverified."""
    assert verify(ckpt.path, only={CheckpointDir.WEIGHTS})
    _rewrite_marker(ckpt, lambda m: m["files"].pop(CheckpointDir.WEIGHTS))
    with pytest.raises(CheckpointError, match="weights.pt not listed in its marker"):
        verify(ckpt.path, only={CheckpointDir.WEIGHTS})
    with pytest.raises(CheckpointError, match="not listed"):
        load_model(ckpt.path)


def test_a_marker_without_a_file_list_is_refused(ckpt):
    _rewrite_marker(ckpt, lambda m: m.pop("files"))
    with pytest.raises(CheckpointError, match="lists no files"):
        verify(ckpt.path)


def test_swapped_weights_fail_their_hash(ckpt):
    torch.save({"generator": {}}, ckpt.weights)
    with pytest.raises(CheckpointError, match="does not match its sha256"):
        load_model(ckpt.path)
