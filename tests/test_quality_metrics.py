"""Quality metrics on controlled inputs: identical, shifted, collapsed, blurred, noisy sets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from ganforge.quality import metrics as M
from ganforge.quality.image_stats import image_stats, wavelet_noise_sigma
from tests.quality_helpers import (
    CLASSES,
    make_shards,
    pack_shards,
    synthetic_image,
    train_tiny_classifier,
)


def gaussian(n: int, d: int = 16, shift: float = 0.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) + shift


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_shift():
    real = gaussian(600)
    assert M.fid(real, real) == pytest.approx(0.0, abs=1e-6)
    same = M.fid(real, gaussian(600, seed=1))
    small, large = (
        M.fid(real, gaussian(600, shift=0.5, seed=1)),
        M.fid(real, gaussian(600, shift=1.0, seed=1)),
    )
    assert same < small < large
    # ||mu1 - mu2||^2 = d * shift^2 dominates: 16 * 1.0 for the large shift
    assert large == pytest.approx(16.0, rel=0.25)


def test_fid_sampling_error_is_the_spread_over_resamples_and_falls_with_n():
    """The bootstrap's FID is torchmetrics' formula; its standard error falls about as
    1/sqrt(n) and matches the spread over independent fake sets."""
    real = gaussian(2000)
    fake = gaussian(500, shift=0.3, seed=1)
    assert M.frechet_to(M.real_gaussian(real), fake) == pytest.approx(M.fid(real, fake), rel=1e-9)
    # Fewer samples than dimensions (singular covariances, as a small Inception evaluation has).
    few_real, few_fake = gaussian(30, d=64), gaussian(20, d=64, shift=0.3, seed=1)
    assert M.frechet_to(M.real_gaussian(few_real), few_fake) == pytest.approx(
        M.fid(few_real, few_fake), rel=1e-6
    )
    small = M.fid_bootstrap_se(real, gaussian(250, shift=0.3, seed=1), replicates=40)
    large = M.fid_bootstrap_se(real, gaussian(2000, shift=0.3, seed=1), replicates=40)
    assert small > large > 0
    assert 1.5 < small / large < 5  # sqrt(8) = 2.8 expected
    # Spread of the FID over independent fake sets of 250: the same order as the bootstrap's.
    spread = torch.tensor([M.fid(real, gaussian(250, shift=0.3, seed=s)) for s in range(2, 22)])
    assert 0.5 < small / float(spread.std()) < 2


def test_per_class_kid():
    real, fake = gaussian(300), gaussian(300, shift=0.6, seed=1)
    labels = torch.arange(300) % 3
    same = M.intra_class_kid(real, labels, gaussian(300, seed=2), labels, ["a", "b", "c"], 50, 10)
    far = M.intra_class_kid(real, labels, fake, labels, ["a", "b", "c"], 50, 10)
    assert set(far) == {"a", "b", "c"} and all(far[c] > 5 * abs(same[c]) for c in far)


def test_kid_near_zero_for_same_distribution_and_larger_when_shifted():
    real = gaussian(400)
    same_mean, same_std = M.kid(real, gaussian(400, seed=1), subset_size=200, subsets=20)
    shifted_mean, _ = M.kid(real, gaussian(400, shift=0.7, seed=1), subset_size=200, subsets=20)
    assert abs(same_mean) < 3 * same_std + 1e-3
    assert shifted_mean > 10 * max(abs(same_mean), same_std)
    # subset size is capped at the set size instead of failing
    small_same, _ = M.kid(real[:50], gaussian(50, seed=5), subset_size=1000, subsets=5)
    small_shift, _ = M.kid(real[:50], gaussian(50, shift=0.7, seed=5), subset_size=1000, subsets=5)
    assert small_same < small_shift


def test_precision_recall_separates_realism_from_diversity():
    real = gaussian(500)
    p_same, r_same = M.precision_recall(real, gaussian(500, seed=1))
    assert p_same > 0.6 and r_same > 0.6
    p_shift, _ = M.precision_recall(real, gaussian(500, shift=2.0, seed=1))
    assert p_shift < p_same / 2
    # mode collapse: every fake sits near one real sample -> realistic but not diverse
    collapsed = real[:1].repeat(500, 1) + 0.01 * gaussian(500, seed=2)
    p_col, r_col = M.precision_recall(real, collapsed)
    assert p_col > 0.9 and r_col < 0.05


def test_classifier_score_bounds():
    n, k = 400, 5
    confident_varied = torch.nn.functional.one_hot(torch.arange(n) % k, k).double()
    assert M.classifier_score(confident_varied)[0] == pytest.approx(k, rel=1e-3)
    same_class = torch.nn.functional.one_hot(torch.zeros(n, dtype=torch.long), k).double()
    assert M.classifier_score(same_class)[0] == pytest.approx(1.0, abs=1e-3)
    uniform = torch.full((n, k), 1 / k, dtype=torch.float64)
    assert M.classifier_score(uniform)[0] == pytest.approx(1.0, abs=1e-6)


def _images(n: int = 40, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    arr = np.stack([synthetic_image(i % 3, rng) for i in range(n)])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def _to_u8(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.clip(np.round(x), 0, 255).astype(np.uint8))


def test_blur_lowers_sharpness_and_high_frequencies():
    x = _images()
    blurred = _to_u8(ndimage.gaussian_filter(x.double().numpy(), sigma=(0, 0, 1.2, 1.2)))
    sx, sb = image_stats(x), image_stats(blurred)
    assert sb["sharpness"] < 0.5 * sx["sharpness"]
    assert sb["high_freq_share"] < sx["high_freq_share"]


def test_noise_estimate_tracks_added_noise():
    # A flat image plus Gaussian noise: the wavelet MAD estimate should recover sigma.
    rng = np.random.default_rng(0)
    plane = 128 + rng.normal(0, 10, (20, 32, 32))
    assert wavelet_noise_sigma(plane).mean() == pytest.approx(10, rel=0.15)
    x = _images()
    noisy = _to_u8(x.double().numpy() + rng.normal(0, 12, x.shape))
    assert image_stats(noisy)["noise_sigma"] > image_stats(x)["noise_sigma"] + 5


def test_colour_noise_raises_chroma_noise_but_grey_noise_does_not():
    rng = np.random.default_rng(1)
    x = _images()
    base = x.double().numpy()
    grey = _to_u8(base + rng.normal(0, 12, (x.shape[0], 1, 32, 32)))  # same on R, G, B
    colour = _to_u8(base + rng.normal(0, 12, x.shape))  # independent per channel
    s0, sg, sc = image_stats(x), image_stats(grey), image_stats(colour)
    assert sg["noise_sigma"] > s0["noise_sigma"] + 5
    assert sg["chroma_noise"] < s0["chroma_noise"] + 1.5
    assert sc["chroma_noise"] > s0["chroma_noise"] + 4


def test_image_stats_rejects_float_input():
    with pytest.raises(ValueError, match="uint8"):
        image_stats(torch.zeros(2, 3, 8, 8))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("quality-metrics")
    shards = make_shards(root / "shards", {"train": 60, "test": 20})
    side = train_tiny_classifier(shards, root / "clf.pt")
    return shards, root / "clf.pt", side


def test_tiny_classifier_and_extractor_on_real_images(tiny):
    from ganforge.data.memory import load_real
    from ganforge.quality.features import build_classifier_extractor, extract

    shards, clf, side = tiny
    assert side["classes"] == CLASSES and side["test_accuracy"] > 0.9
    ext = build_classifier_extractor(clf)
    test = load_real(shards, "test")
    train = load_real(shards, "train")
    assert test.images.shape == (60, 3, 32, 32) and test.images.dtype == torch.uint8
    probs = extract(ext.probs, test.images)
    acc = M.per_class_accuracy(probs, test.labels, CLASSES)
    assert set(acc) == set(CLASSES) and min(acc.values()) > 0.8
    # held-out real vs real is closer than real vs a colour-shifted copy
    f_train, f_test = extract(ext, train.images), extract(ext, test.images)
    # The judge's probabilities from the features already extracted: the same numbers.
    assert torch.equal(ext.probs_from_features(f_test), probs)
    shifted = (test.images.int() + torch.tensor([60, -60, 0]).view(1, 3, 1, 1)).clamp(0, 255)
    f_shift = extract(ext, shifted.to(torch.uint8))
    assert M.fid(f_train, f_test) < M.fid(f_train, f_shift)
    assert M.precision_recall(f_train, f_test)[0] > M.precision_recall(f_train, f_shift)[0]


def test_extractor_layout_does_not_change_the_features(tiny):
    """The extractor runs its network in NHWC (faster on CPU): the features are the plain
    NCHW network's, up to rounding."""
    from ganforge.data.memory import load_real
    from ganforge.quality.classifier import load_classifier
    from ganforge.quality.features import build_classifier_extractor

    shards, clf, _ = tiny
    images = load_real(shards, "test").images
    plain = load_classifier(clf).eval()
    assert plain.stem[0].weight.is_contiguous()
    with torch.no_grad():
        want = plain.features(images)
        got = build_classifier_extractor(clf)(images)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_load_real_limit_and_errors(tiny, tmp_path):
    from ganforge.data import DataError
    from ganforge.data.memory import load_real

    shards, _, _ = tiny
    sub = load_real(shards, "train", limit=25, seed=3)
    assert len(sub.images) == 25
    assert torch.equal(sub.images, load_real(shards, "train", limit=25, seed=3).images)
    with pytest.raises(DataError, match="no split 'val'"):
        load_real(shards, "val")
    with pytest.raises(DataError, match="dataset.json"):
        load_real(tmp_path, "train")


@pytest.mark.parametrize("encoding", ["raw", "jpg"])
def test_load_real_reads_every_encoding_the_packer_writes(tmp_path, encoding):
    """Evaluation's reader and the packer share one codec: raw-pixel shards (`raw.npy`) read
    back to the same pixels as lossless PNG shards of the same source, JPEG ones within its loss."""
    from ganforge.data.memory import load_real

    png = load_real(pack_shards(tmp_path / "png", {"train": 4}, "png"), "train")
    other = load_real(pack_shards(tmp_path / encoding, {"train": 4}, encoding), "train")
    assert other.images.shape == png.images.shape == (12, 3, 32, 32)
    assert torch.equal(other.labels, png.labels) and other.classes == png.classes
    diff = (other.images.float() - png.images.float()).abs().mean().item()
    assert diff == 0 if encoding == "raw" else diff < 16  # JPEG q95, 4:2:0 chroma: ~10


def test_classifier_augmentation_crops_and_flips_each_image_on_its_own():
    from torch.nn import functional as F

    from ganforge.quality.classifier_training import augment

    x = torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8)
    out = augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = F.pad(x.float(), (4,) * 4, mode="reflect").to(torch.uint8)
    found = []
    for i in range(len(x)):
        hits = [
            (dy, dx, flip)
            for dy in range(9)
            for dx in range(9)
            for flip in (False, True)
            if torch.equal(
                padded[i, :, dy : dy + 16, dx : dx + 16].flip(-1)
                if flip
                else padded[i, :, dy : dy + 16, dx : dx + 16],
                out[i],
            )
        ]
        assert hits, f"image {i} is not a crop (or flipped crop) of its padded input"
        found.append(hits[0])
    assert len({(dy, dx) for dy, dx, _ in found}) > 4, "crop offsets should vary per image"
    assert 0 < sum(f for *_, f in found) < len(x), "flips should vary per image"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none here)")
def test_probs_from_cpu_features_after_the_network_moved_to_the_gpu(tiny):
    # The study's evaluation with --device cuda moves the network, then asks the judge for
    # probabilities of CPU features (the first H200 run of bench/gpu_study stopped here).
    from ganforge.data.memory import load_real
    from ganforge.quality.features import build_classifier_extractor, extract

    shards, clf, _ = tiny
    ext = build_classifier_extractor(clf)
    test = load_real(shards, "test")
    cpu_probs = extract(ext.probs, test.images)
    feats = extract(ext, test.images, device="cuda")
    probs = ext.probs_from_features(feats)
    assert probs.device.type == "cpu" and torch.allclose(probs, cpu_probs, atol=1e-4)
