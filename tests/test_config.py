"""Typed config: shipped configs load, typos and wrong types fail with clear messages."""

from __future__ import annotations

import pytest

from ganforge.config import ConfigError, load_config, parse_override, resolve_config_path
from ganforge.models import VARIANTS, check_recipe


@pytest.mark.parametrize(
    "name",
    [
        "dcgan",
        "cdcgan",
        "wgan",
        "wgan-gp",
        "cwgan-gp",
        "stylegan2",
        "cstylegan2",
        "demo",
        "demo-cifar10",
    ],
)
def test_shipped_configs_are_valid_recipes(name):
    cfg = load_config(resolve_config_path(name))
    assert cfg.model.variant in VARIANTS
    if VARIANTS[cfg.model.variant].conditional:
        cfg.model.num_classes = 10  # filled from the manifest at launch
    check_recipe(cfg.model, cfg.loss)


def test_unknown_key_names_the_key_and_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("train:\n  max_stepz: 3\n")
    with pytest.raises(ConfigError, match=r"train\.max_stepz") as e:
        load_config(p)
    assert str(p) in str(e.value)


def test_wrong_type_is_reported(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("train:\n  micro_batch: lots\n")
    with pytest.raises(ConfigError, match=r"train\.micro_batch"):
        load_config(p)


def test_overrides_apply_and_are_validated():
    cfg = load_config(resolve_config_path("dcgan"), {"train.max_steps": 7, "data.urls": None})
    assert cfg.train.max_steps == 7
    assert parse_override("loss.gp_lambda=2.5") == ("loss.gp_lambda", 2.5)
    with pytest.raises(ConfigError):
        parse_override("no-equals-sign")
    with pytest.raises(ConfigError, match="precision"):
        load_config(None, {"train.precision": "fp16"})  # fp16 needs --gpu (tests/test_precision.py)


def test_missing_config_is_clear():
    with pytest.raises(ConfigError, match="config not found"):
        resolve_config_path("no-such-variant")


def test_recipe_contradictions_are_refused():
    cfg = load_config(resolve_config_path("wgan-gp"), {"loss.gp_lambda": 0.0})
    with pytest.raises(ValueError, match="gp_lambda must be > 0"):
        check_recipe(cfg.model, cfg.loss)
    cfg = load_config(None, {"model.variant": "nope"})
    with pytest.raises(ValueError, match="registered variants"):
        check_recipe(cfg.model, cfg.loss)


def test_weight_clipping_is_refused_where_deepspeed_would_undo_it():

    for override in ({"train.zero_stage": 1}, {"train.precision": "bf16", "cluster.gpu": True}):
        with pytest.raises(ConfigError, match="clip_value"):
            load_config(resolve_config_path("wgan"), override)
    assert load_config(resolve_config_path("wgan"), {"train.zero_stage": 0}).loss.clip_value


@pytest.mark.parametrize(
    "name", ["dcgan", "cdcgan", "wgan", "wgan-gp", "cwgan-gp", "stylegan2", "cstylegan2"]
)
def test_shipped_configs_follow_their_variants_recipe(name):
    """configs/<variant>.yaml and the spec's n_critic, optimisers and regulariser defaults agree;
    the spec's recipe alone is a valid config."""
    spec = VARIANTS[name]
    cfg = load_config(resolve_config_path(name)).model_dump()
    for dotted, value in spec.recipe().items():
        section, key = dotted.split(".")
        assert cfg[section][key] == value, dotted
    cfg = load_config(None, spec.recipe() | {"model.num_classes": 10 if spec.conditional else 0})
    check_recipe(cfg.model, cfg.loss)


def test_weight_clipping_belongs_to_its_variant():
    cfg = load_config(None, VARIANTS["wgan-gp"].recipe() | {"loss.clip_value": 0.01})
    with pytest.raises(ValueError, match="clip_value must be unset"):
        check_recipe(cfg.model, cfg.loss)
