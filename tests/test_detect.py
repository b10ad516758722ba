"""Deepfake detection: the detector learns a real generator defect and no non-defect, the JPEG
augmentation removes an encoding cue, the matrix and the spectrum, safe loading, and
`ganforge detect ...` end to end on real shards (packed by `data pack`) and real ganforge
checkpoints (random weights written by `write_weights_checkpoint`: no training needed to have a
generator whose fakes differ from the data).

Everything is tiny (32x32 synthetic images, a few hundred of them, detectors of widths 8-16,
a few epochs), so the figures are loose bounds, not the ones a real run reaches.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from ganforge.checkpoint import write_weights_checkpoint
from ganforge.cli import app
from ganforge.config import load_config, resolve_config_path
from ganforge.models import build_discriminator, build_generator
from ganforge.models.detector import Detector, DetectorError, load_detector, save_detector
from ganforge.quality.detect_augment import Augment, gaussian_blur
from ganforge.quality.detect_eval import evaluate_detector
from ganforge.quality.detect_matrix import cross_generator_matrix, matrix_markdown
from ganforge.quality.detect_spectrum import ratio_peaks, spectral_distance, spectrum_profile
from ganforge.quality.detect_train import DetectorTraining, train_detector
from tests.quality_helpers import CLASSES, pack_shards, synthetic_image

runner = CliRunner()
TINY = DetectorTraining(epochs=4, batch_size=32, lr=3e-3, widths=(8, 16), val_fraction=0.2)


def fresh(n: int, seed: int) -> torch.Tensor:
    """n new images from the distribution the shards were drawn from (uint8 [n, 3, 32, 32])."""
    rng = np.random.default_rng(10_000 + seed)
    imgs = [synthetic_image(i % len(CLASSES), rng) for i in range(n)]
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()


def blurred(n: int, seed: int) -> torch.Tensor:
    """A deliberately poor 'generator': fresh images, blurred (sigma 1.2)."""
    x = gaussian_blur(fresh(n, seed), torch.full((n,), 1.2))
    return x.round().clamp(0, 255).to(torch.uint8)


def noisy(n: int, seed: int) -> torch.Tensor:
    """Another poor 'generator': fresh images with Gaussian noise (sigma 12) added."""
    x = fresh(n, seed).float() + 12 * torch.randn(
        n, 3, 32, 32, generator=torch.Generator().manual_seed(seed)
    )
    return x.round().clamp(0, 255).to(torch.uint8)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """Real images stored losslessly (PNG), packed by `data pack`."""
    root = tmp_path_factory.mktemp("detect")
    return pack_shards(root / "shards", {"train": 120, "test": 50}, "png")


@pytest.fixture(scope="module")
def jpeg_shards(tmp_path_factory) -> Path:
    """Real images stored as this project's CIFAR-10 is: JPEG quality 75, 4:2:0, kept as they are
    by `data pack --encoding keep`."""
    from ganforge.data.pack import PackOptions, pack

    root = tmp_path_factory.mktemp("detect-jpeg")
    rng = np.random.default_rng(5)
    for split, n in {"train": 120, "test": 50}.items():
        for c, name in enumerate(CLASSES):
            folder = root / "src" / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(synthetic_image(c, rng)).save(folder / f"{i:04d}.jpg", quality=75)
    pack(root / "src", root / "shards", PackOptions(shard_size=50, encoding="keep", progress=False))
    return root / "shards"


def auc_of(detector, shards: Path, fakes: dict, **kw) -> float:
    body = evaluate_detector(detector, shards, fakes, bootstrap=50, progress=False, **kw)
    return next(iter(body["generators"].values()))["auc"]


def test_detector_catches_a_degraded_generator_and_not_real_images(shards, tmp_path):
    detector = train_detector(shards, {"blurred": blurred}, tmp_path / "d.pt", TINY, False)
    assert auc_of(detector, shards, {"blurred": blurred}) > 0.95
    check_record(tmp_path / "d.pt", detector)
    # The same recipe against fresh real images: nothing to learn, held-out AUC near chance.
    detector = train_detector(shards, {"real": fresh}, None, TINY, progress=False)
    assert 0.35 < auc_of(detector, shards, {"real": fresh}) < 0.65


def test_storing_fakes_like_the_reals_makes_an_encoding_cue_useless(jpeg_shards):
    # Reals are JPEGs, fakes the same kind of images but lossless: the encoding is the only
    # difference. Random JPEG re-compression of both (the default augmentation) does not hide it:
    as_generated = replace(TINY, match_encoding=False)
    detector = train_detector(jpeg_shards, {"lossless": fresh}, None, as_generated, False)
    assert detector[1]["fake_encoding"] is None
    assert auc_of(detector, jpeg_shards, {"lossless": fresh}, match_encoding=False) > 0.9
    # Storing the fakes as the reals are stored (the default) leaves nothing to learn.
    detector = train_detector(jpeg_shards, {"lossless": fresh}, None, TINY, progress=False)
    assert detector[1]["fake_encoding"] == {"format": "jpeg", "quality": 75, "subsampling": 2}
    assert 0.35 < auc_of(detector, jpeg_shards, {"lossless": fresh}) < 0.65


def test_canonical_jpeg_is_applied_at_inference_when_training_always_re_encodes():
    assert Augment().canonical_quality is None  # half the training images are seen as they come
    always = Augment(jpeg_prob=1.0, jpeg_quality=(70, 90))
    assert always.canonical_quality == 80
    d = Detector(3, (4, 8)).eval()
    x = fresh(8, 3)
    d.jpeg_quality = 80
    from ganforge.models.detector import jpeg_roundtrip

    torch.testing.assert_close(d.logits(x), d(jpeg_roundtrip(x, 80)))


def check_record(path: Path, trained) -> None:
    """The record holds the validation figures and the calibration; the files round-trip."""
    module, record = trained
    on_disk = json.loads(path.with_suffix(".json").read_text())
    assert on_disk == json.loads(json.dumps(record))
    assert on_disk["format"] == "ganforge-detector/1" and on_disk["fakes"] == ["blurred"]
    cal = on_disk["validation"]["calibration"]
    assert on_disk["temperature"] > 0
    assert cal["calibrated"]["nll"] <= cal["uncalibrated"]["nll"] + 1e-9
    assert set(on_disk["validation"]["all"]) >= {"auc", "auc_ci", "eer", "tpr_at_1pct_fpr"}
    loaded, rec = load_detector(path)
    assert rec["temperature"] == loaded.temperature == module.temperature
    x = fresh(20, 99)
    torch.testing.assert_close(loaded.predict(x), module.predict(x))


def test_load_detector_refuses_bad_files(tmp_path, monkeypatch):
    good = save_detector(Detector(3, (4, 8)), {"temperature": 1.0}, tmp_path / "ok.pt")
    load_detector(good)
    record = json.loads((tmp_path / "ok.json").read_text())

    def case(name: str, weights=None, **changes) -> Path:
        """A detector `name`.pt/.json: the good files with the weights or record fields replaced."""
        path = tmp_path / f"{name}.pt"
        if isinstance(weights, bytes):
            path.write_bytes(weights)
        else:
            torch.save(
                weights if weights is not None else torch.load(good, weights_only=True), path
            )
        path.with_suffix(".json").write_text(json.dumps(record | changes))
        return path

    cases = [
        (tmp_path / "none.pt", "not found"),
        (case("garbage", b"not a torch file"), "cannot be read"),
        # A pickle that would build an object on load: weights_only refuses it.
        (case("object", {"w": Path("/etc/passwd")}), "cannot be read"),
        (case("other", {"conv": torch.zeros(1)}), "do not match"),
        (case("wide", arch={"channels": 3, "widths": [9999]}), "arch.widths"),
        (case("format", format="something-else/1"), "not a ganforge detector record"),
        (case("temperature", temperature=-1), "temperature must be a positive number"),
    ]
    for path, message in cases:
        with pytest.raises(DetectorError, match=message):
            load_detector(path)
    monkeypatch.setattr("ganforge.models.detector.MAX_WEIGHTS_BYTES", 100)
    with pytest.raises(DetectorError, match="over the 100-byte limit"):
        load_detector(good)


def test_matrix_has_one_row_and_column_per_generator(shards):
    recipe = replace(TINY, epochs=2)
    fakes = {"blurred": blurred, "noisy": noisy, "real": fresh}
    body = cross_generator_matrix(shards, fakes, recipe, bootstrap=20, progress=False)
    names = list(fakes)
    assert body["rows"] == body["columns"] == names
    assert len(body["auc"]) == 3 and all(len(r) == 3 for r in body["auc"])
    assert all(0 <= v <= 1 for r in body["auc"] for v in r)
    for i, row in enumerate(names):  # row i: the detector trained on generator i
        for j, col in enumerate(names):
            assert body["auc"][i][j] == body["evaluations"][row]["generators"][col]["auc"]
    assert body["auc"][0][0] > 0.8  # blur is learnt in two tiny epochs; "real" is not
    assert 0.35 < body["auc"][2][2] < 0.65
    md = matrix_markdown(body)
    assert "| trained on \\ tested on | blurred | noisy | real |" in md
    assert [line.split(" |")[0] for line in md.splitlines() if line.startswith("| ")][1:] == [
        f"| {n}" for n in names
    ]


def test_spectrum_shows_an_injected_periodic_pattern():
    clean = fresh(64, 1)
    # The checkerboard a stride-2 transposed convolution leaves: (-1)^(x+y), i.e. frequency
    # (0.5, 0.5) cycles/pixel, radius 0.71, the outermost ring (index round(32 * 0.707) = 23).
    yy, xx = np.mgrid[0:32, 0:32]
    board = torch.from_numpy(((-1.0) ** (xx + yy)) * 6)
    marked = (clean.double() + board).round().clamp(0, 255).to(torch.uint8)
    freqs, p_clean = spectrum_profile(clean)
    _, p_marked = spectrum_profile(marked)
    peak = int(round(32 * np.sqrt(0.5)))
    assert len(freqs) == peak + 1 and freqs[peak] == pytest.approx(peak / 32)
    ratio = p_marked / p_clean
    assert ratio[peak] > 10  # the peak
    assert np.all(ratio[1 : peak - 1] < 1.5)  # and nothing else moved much
    assert [p["freq"] for p in ratio_peaks(p_marked, p_clean, freqs)] == [peak / 32]
    # Vertical stripes with a period of 4 pixels (0.25 cycles/pixel, an inner ring; the images
    # hold much more power there than in the corner, hence the larger amplitude).
    stripes = torch.from_numpy(np.cos(np.pi / 2 * xx) * 16)
    striped = (clean.double() + stripes).round().clamp(0, 255).to(torch.uint8)
    found = ratio_peaks(spectrum_profile(striped)[1], p_clean, freqs)
    assert [p["freq"] for p in found] == [0.25]
    # The distance to the clean spectrum: none for itself, mostly from the outermost rings.
    assert spectral_distance(p_clean, p_clean) == 0
    assert spectral_distance(p_clean * 2, p_clean) == pytest.approx(np.log10(2))
    assert spectral_distance(p_marked, p_clean) > 0.05
    assert spectral_distance(p_marked, p_clean, freqs, 0.6) > 0.3


# ---- the CLI on real checkpoints -------------------------------------------------------------


def make_run(root: Path, variant: str, seed: int) -> Path:
    """A run dir with one checkpoint of a random-weight generator of `variant`."""
    cfg = load_config(
        resolve_config_path(variant),
        {"model.width": 8, "model.z_dim": 16, "model.kernels": "torch", "run_dir": str(root)},
    )
    torch.manual_seed(seed)
    g, d = build_generator(cfg.model), build_discriminator(cfg.model)
    write_weights_checkpoint(root / "checkpoints" / "checkpoint_000010", cfg, g, g, d, 10, 640)
    return root


def invoke(*args):
    """-> (result, everything printed: Click 8.2+ mixes stderr into `output`)."""
    res = runner.invoke(app, [str(a) for a in args])
    return res, res.output


def test_cli_train_eval_matrix_spectrum(shards, tmp_path):
    runs = [make_run(tmp_path / "dcgan", "dcgan", 0), make_run(tmp_path / "wgan-gp", "wgan-gp", 1)]
    quick = ["--epochs", 1, "--widths", "8,16", "--batch-size", 32]
    det = tmp_path / "det" / "d.pt"
    res, out = invoke("detect", "train", "--real", shards, "--fake", runs[0], "--out", det, *quick)
    assert res.exit_code == 0, out
    assert "validation AUC" in out and det.is_file()
    res, out = invoke(
        "detect", "eval", det, "--real", shards, "--fake", runs[0], "--fake", runs[1],
        "--out", tmp_path / "eval", "--bootstrap", 50,
    )  # fmt: skip
    assert res.exit_code == 0, out
    body = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert list(body["generators"]) == ["dcgan", "wgan-gp"]
    assert body["generators"]["dcgan"]["seen_in_training"] is True
    assert body["generators"]["dcgan"]["auc"] > 0.9  # random weights make obvious fakes
    assert "| dcgan | yes |" in (tmp_path / "eval" / "report.md").read_text()
    res, out = invoke(
        "detect", "matrix", "--real", shards, "--fake", runs[0], "--fake", runs[1],
        "--out", tmp_path / "matrix", "--bootstrap", 10, *quick,
    )  # fmt: skip
    assert res.exit_code == 0, out
    assert json.loads((tmp_path / "matrix" / "matrix.json").read_text())["rows"] == [
        "dcgan",
        "wgan-gp",
    ]
    res, out = invoke(
        "detect", "spectrum", "--real", shards, "--fake", runs[0], "--out", tmp_path / "spec",
        "--num-images", 100,
    )  # fmt: skip
    assert res.exit_code == 0, out
    spec = json.loads((tmp_path / "spec" / "spectrum.json").read_text())
    assert spec["generators"]["dcgan"]["distance"] > 0
    assert (tmp_path / "spec" / "spectrum.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_bad_input_is_one_error_line(shards, tmp_path):
    empty = tmp_path / "empty-run"
    empty.mkdir()
    run = make_run(tmp_path / "dcgan", "dcgan", 0)
    (tmp_path / "bad.pt").write_bytes(b"junk")
    cases = [
        (
            ["detect", "train", "--real", tmp_path / "nope", "--fake", run, "--out", "x.pt"],
            "dataset.json",
        ),  # fmt: skip
        (["detect", "train", "--real", shards, "--fake", empty, "--out", "x.pt"], "checkpoints"),
        (
            [
                "detect",
                "train",
                "--real",
                shards,
                "--fake",
                empty,
                "--out",
                "x.pt",
                "--widths",
                "8,x",
            ],
            "--widths",
        ),  # fmt: skip
        (
            [
                "detect",
                "eval",
                tmp_path / "bad.pt",
                "--real",
                shards,
                "--fake",
                empty,
                "--out",
                tmp_path / "o",
            ],
            "record",
        ),  # fmt: skip
    ]
    for args, word in cases:
        res, out = invoke(*args)
        assert res.exit_code == 2, out
        assert "error:" in out and word in out and "Traceback" not in out, out


def test_a_generator_of_another_size_is_refused(shards):
    from ganforge.quality.detect_sources import DetectError

    def small(n: int, seed: int) -> torch.Tensor:
        return torch.zeros(n, 3, 16, 16, dtype=torch.uint8)

    with pytest.raises(DetectError, match=r"small: makes torch.uint8 images \[3, 16, 16\]"):
        train_detector(shards, {"small": small}, None, TINY, progress=False)


def test_temperature_recovers_a_known_scale_and_stops_at_its_bound():
    from ganforge.quality import detect_metrics as DM

    g = torch.Generator().manual_seed(0)
    z = 4 * torch.randn(20_000, generator=g)
    labels = (torch.rand(20_000, generator=g) < torch.sigmoid(z / 2)).float()  # true T = 2
    t = DM.fit_temperature(z, labels)
    assert t == pytest.approx(2.0, rel=0.1)
    assert DM.calibration(z, labels, t)["at_bound"] is False
    separable = (z > 0).float()  # NLL falls without end as T -> 0: the fit stops at the bound
    t = DM.fit_temperature(z, separable)
    assert t == pytest.approx(DM.MIN_TEMPERATURE, rel=1e-3)
    assert DM.calibration(z, separable, t)["at_bound"] is True
    figures = DM.point_metrics(torch.sigmoid(z), separable)
    assert figures == {"auc": 1.0, "accuracy": 1.0, "eer": 0.0, "tpr_at_1pct_fpr": 1.0}
