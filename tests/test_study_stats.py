"""The study's statistics (quality/study_stats.py) on data with a known answer: interval
coverage over many simulated studies, the sample-error side of the interval, the tie rule and the
verdicts on claims."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ganforge.quality.study_stats import (
    CONTRADICTED,
    SUPPORTED,
    UNDECIDED,
    Estimate,
    best,
    combine,
    compare_groups,
    estimate,
    order,
    separated,
)


def test_three_seeds_give_the_t_interval():
    e = estimate([1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3)  # t(0.975, 2) x sd 1 / sqrt(3)
    assert (e.mean, e.n, e.source) == (2.0, 3, "seeds")
    assert e.lo == pytest.approx(2 - half) and e.hi == pytest.approx(2 + half)
    one = estimate([5.0])
    assert (one.lo, one.hi, one.source) == (5.0, 5.0, "none")  # one seed: no seed interval


def test_the_sample_error_wins_when_it_is_wider():
    e = estimate([10.0, 10.0, 10.0], sample_se=[3.0, 4.0, 0.0])
    assert e.source == "sampling"
    assert e.hi - e.mean == pytest.approx(1.959964 * 5.0 / 3, rel=1e-5)
    with pytest.raises(ValueError, match="2 standard errors for 3 values"):
        estimate([1, 2, 3], sample_se=[1, 1])
    with pytest.raises(ValueError, match="finite"):
        estimate([1.0, float("nan")])


@pytest.mark.parametrize("n_seeds", [3, 5])
def test_intervals_cover_the_true_mean_95_percent_of_the_time(n_seeds):
    """Simulated studies: per-seed figures ~ N(mu, 2); the interval holds mu in about 95% of
    them (2000 studies: the binomial 99.9% band is about +-1.6 points)."""
    rng = np.random.default_rng(0)
    mu, trials = 40.0, 2000
    hits = sum(
        (e := estimate(rng.normal(mu, 2.0, n_seeds).tolist())).lo <= mu <= e.hi
        for _ in range(trials)
    )
    assert 0.93 <= hits / trials <= 0.97


def test_the_sample_side_covers_when_seeds_agree_by_chance():
    """Each run's figure = mu + sampling noise of known SE, seeds otherwise identical: the
    combined interval still covers mu about 95% (or more) of the time."""
    rng = np.random.default_rng(1)
    mu, se, trials = 5.0, 0.5, 2000
    hits = 0
    for _ in range(trials):
        values = (mu + rng.normal(0, se, 3)).tolist()
        e = estimate(values, sample_se=[se] * 3)
        hits += e.lo <= mu <= e.hi
    assert hits / trials >= 0.94


def _e(mean, half):
    return Estimate(mean, mean - half, mean + half, 3, "seeds")


def test_ties_are_said_as_ties():
    # The v1 study's KIDs: WGAN, WGAN-GP and cWGAN-GP within each other's error.
    kid = {
        "cdcgan": _e(1.19, 0.1),
        "dcgan": _e(2.05, 0.1),
        "wgan-gp": _e(6.22, 0.28),
        "cwgan-gp": _e(6.41, 0.30),
        "wgan": _e(6.46, 0.28),
    }
    assert order(kid, lower_is_better=True) == "cdcgan < dcgan < wgan-gp ~ cwgan-gp ~ wgan"
    assert best(kid, lower_is_better=True) == ["cdcgan"]
    assert separated(kid, True)["wgan-gp"] == [] and separated(kid, True)["dcgan"] == [
        "wgan-gp",
        "cwgan-gp",
        "wgan",
    ]
    tied = {"a": _e(1.0, 0.5), "b": _e(1.4, 0.5), "c": _e(3.0, 0.1)}
    assert best(tied, lower_is_better=True) == ["a", "b"]
    # Higher is better (precision): the order flips, the rule does not.
    assert order(tied, lower_is_better=False) == "c > b ~ a"
    assert best(tied, lower_is_better=False) == ["c"]


def test_claims_are_supported_contradicted_or_undecided():
    fid = {"dcgan": _e(60, 3), "cdcgan": _e(45, 3), "wgan-gp": _e(120, 5), "cwgan-gp": _e(121, 5)}
    verdict, lines = compare_groups(fid, ["cdcgan"], ["dcgan"], lower_is_better=True)
    assert verdict == SUPPORTED and lines[0].startswith("cdcgan 45.0 [42.0, 48.0] vs dcgan 60.0")
    assert compare_groups(fid, ["wgan-gp"], ["dcgan"], True)[0] == CONTRADICTED
    assert compare_groups(fid, ["cwgan-gp"], ["wgan-gp"], True)[0] == UNDECIDED
    # Mixed pairs are undecided; a pair that was not measured says so.
    assert compare_groups(fid, ["cdcgan", "cwgan-gp"], ["dcgan"], True)[0] == UNDECIDED
    assert compare_groups(fid, ["cstylegan2"], ["stylegan2"], True) == (
        UNDECIDED,
        ["no pair of these variants was measured"],
    )
    assert combine([SUPPORTED, SUPPORTED]) == SUPPORTED
    assert combine([SUPPORTED, CONTRADICTED]) == UNDECIDED and combine([]) == UNDECIDED


# --- the summary over seeds (quality/study_summary.py) on a synthetic evaluation -------------


def _run(variant: str, seed: int, fid: float, sharp: float, chroma: float, first_fid: float):
    stats = {
        "sharpness": sharp,
        "noise_sigma": 5.0,
        "chroma_noise": chroma,
        "high_freq_share": 0.08,
    }
    jitter = 0.3 * (seed - 1)  # seeds 0, 1, 2 around the value: sd 0.3
    last = {"step": 20, "images_seen": 1280, "fid": fid + jitter, "kid_mean": (fid + jitter) / 1e4}
    last |= {"fid_se": 0.1, "kid_se": 1e-6, "precision": 0.8, "recall": 0.2, "stats": stats}
    first = {"step": 10, "images_seen": 640, "fid": first_fid + jitter}
    first["kid_mean"] = first["fid"] / 1e4
    name = variant if seed == 0 else f"{variant}-seed{seed}"
    return {"name": name, "variant": variant, "checkpoints": [first, last], "latest": last}


def _body(values: dict[str, tuple[float, float, float, float]]) -> dict:
    runs = [_run(v, s, *vals) for s in range(3) for v, vals in values.items()]
    real = {"split": "test", "encoding": None}
    real["stats"] = {
        "sharpness": 2300.0,
        "noise_sigma": 4.8,
        "chroma_noise": 0.3,
        "high_freq_share": 0.086,
    }
    return {"runs": runs, "real": real}


def test_the_summary_gives_each_claim_its_verdict():
    from ganforge.quality.study_summary import summarize

    # variant: (FID, sharpness, chroma noise, FID at the first checkpoint)
    body = _body(
        {
            "dcgan": (60.0, 1800.0, 1.7, 90.0),  # still improving: 90 -> 60
            "cdcgan": (45.0, 1850.0, 1.6, 45.5),  # flat
            "wgan": (130.0, 2100.0, 4.4, 130.2),
            "wgan-gp": (120.0, 2050.0, 3.9, 120.1),
            "cwgan-gp": (120.4, 2000.0, 3.8, 120.3),
        }
    )
    s = summarize(body)
    assert s["seeds"] == {v: 3 for v in ("dcgan", "cdcgan", "wgan", "wgan-gp", "cwgan-gp")}
    fid = s["estimates"]["fid"]
    assert fid["cdcgan"]["mean"] == pytest.approx(45.0) and fid["cdcgan"]["source"] == "seeds"
    assert s["rankings"]["fid"]["order"] == "cdcgan < dcgan < wgan-gp ~ cwgan-gp < wgan"
    assert s["rankings"]["fid"]["best"] == ["cdcgan"]
    assert "wgan-gp < wgan" in s["rankings"]["fid"]["separated"]
    assert "wgan-gp < cwgan-gp" not in s["rankings"]["fid"]["separated"]  # a tie
    verdicts = {c["claim"]: c["verdict"] for c in s["claims"]}
    # (1) cDCGAN beats DCGAN but cWGAN-GP ties WGAN-GP: not every pair agrees -> undecided.
    assert verdicts[1] == UNDECIDED
    # (2) every WGAN variant sharper with more chroma noise than every DCGAN one: the
    # sharpness half holds, the noise half is contradicted -> undecided as a whole.
    assert verdicts[2] == UNDECIDED
    claim2 = next(c for c in s["claims"] if c["claim"] == 2)
    assert all("better" in e for e in claim2["evidence"] if e.startswith("sharpness"))
    assert all("worse" in e for e in claim2["evidence"] if e.startswith("chroma"))
    # (3) cDCGAN is alone best: cWGAN-GP is not the best -> contradicted.
    assert verdicts[3] == CONTRADICTED
    assert verdicts[4] == UNDECIDED  # never measured
    improving = s["curves"]["still_improving"]["fid"]
    assert improving["dcgan"] is True and improving["cdcgan"] is False
    assert [p["images_seen"] for p in s["curves"]["fid"]["dcgan"]] == [640, 1280]

    # Conditioning separating in both pairs, with less chroma noise: supported.
    body = _body(
        {
            "dcgan": (60.0, 1800.0, 4.0, 60.0),
            "cdcgan": (45.0, 1850.0, 4.0, 45.0),
            "wgan-gp": (120.0, 2050.0, 1.0, 120.0),
            "cwgan-gp": (30.0, 2000.0, 1.0, 30.0),
        }
    )
    verdicts = {c["claim"]: c["verdict"] for c in summarize(body)["claims"]}
    assert verdicts[1] == verdicts[2] == verdicts[3] == SUPPORTED


def test_detectability_ranks_lower_auc_as_the_harder_fake():
    from ganforge.quality.study_summary import summarize

    body = _body({"dcgan": (60.0, 1800.0, 1.7, 60.0), "cdcgan": (45.0, 1850.0, 1.6, 45.0)})
    detect = {
        "own": {
            "dcgan": {"auc": 0.99, "auc_ci": [0.98, 1.0]},
            "cdcgan": {"auc": 0.7, "auc_ci": [0.65, 0.75]},
        },
        "all": {
            "dcgan": {"auc": 0.95, "auc_ci": [0.9, 0.99]},
            "cdcgan": {"auc": 0.93, "auc_ci": [0.9, 0.96]},
        },
    }
    r = summarize(body, detect)["rankings"]
    assert r["detect_own"]["order"] == "cdcgan < dcgan" and r["detect_own"]["best"] == ["cdcgan"]
    assert r["detect_all"]["order"] == "cdcgan ~ dcgan" and len(r["detect_all"]["best"]) == 2


def test_the_reference_is_held_out_of_the_feature_network(tmp_path):
    """The study compares with the split the classifier never trained on, and says so; a
    classifier whose record does not name that split as held out gets the warning instead."""
    from ganforge.quality.study import reference_note, study_settings

    s = study_settings()
    assert s.real_split == "test" and s.num_samples >= 10_000 and s.fid_bootstrap > 0
    assert "never trained on" in reference_note(s)
    clf = tmp_path / "clf.pt"
    clf.with_suffix(".json").write_text('{"test_split": "test"}')
    assert "may be in-sample" in reference_note(
        study_settings(real_split="train", classifier=str(clf))
    )
    assert "never trained on" in reference_note(study_settings(classifier=str(clf)))
