"""Feature extractors for the distribution metrics.

An extractor is an `nn.Module` mapping uint8 images [B, C, H, W] to float features
[B, num_features]; `name` says which network it is (reports always print it). The domain
classifier also gives class probabilities (`probs`) for the classifier score and per-class accuracy.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from ganforge.quality.classifier import LOGIT_SCALE, CifarClassifier, load_classifier

DEFAULT_CLASSIFIER = Path(__file__).parent / "weights" / "cifar10-classifier.pt"


class ExtractorError(ValueError):
    """The requested feature extractor cannot be built (missing weights or package)."""


def _fit(x: torch.Tensor, channels: int, size: int) -> torch.Tensor:
    """Match the extractor's channel count and input size (uint8 in, uint8 out)."""
    if x.shape[1] != channels:
        x = x.expand(-1, channels, -1, -1) if x.shape[1] == 1 else x.float().mean(1, keepdim=True)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True)
    return x.round().clamp(0, 255).to(torch.uint8) if x.dtype != torch.uint8 else x


class ClassifierExtractor(nn.Module):
    """Penultimate-layer features of the project's CIFAR-style classifier (the default)."""

    def __init__(self, model: CifarClassifier, name: str, classes: list[str] | None = None):
        super().__init__()
        # NHWC weights (the input follows them): oneDNN's fast layout on CPU, where features are
        # most of an evaluation's time, and cuDNN's preferred one. Same features up to rounding.
        self.model = model.eval().to(memory_format=torch.channels_last)
        self.name = name
        self.classes = list(classes or [])
        self.num_features = model.feature_dim
        self.input_size = 32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(_fit(x, self.model.channels, self.input_size))

    def probs(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax class probabilities [B, num_classes]."""
        return self.model(_fit(x, self.model.channels, self.input_size)).softmax(-1)

    @torch.no_grad()
    def probs_from_features(self, feats: torch.Tensor) -> torch.Tensor:
        """What `probs` gives, from this network's own features [N, D] (no second pass); float64
        like `extract`'s output."""
        # The head runs where the network was moved (`extract(device=...)`); features are CPU.
        head = self.model.head
        device = next(head.parameters()).device
        logits = head(feats.to(device, torch.float32)) * LOGIT_SCALE
        return logits.softmax(-1).double().cpu()


class InceptionExtractor(nn.Module):
    """Inception-v3 pool features (2048-d) through torch-fidelity, from a local weights file."""

    def __init__(self, weights: str | Path):
        super().__init__()
        try:
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        except ImportError as e:  # torch-fidelity's package __init__ imports torchvision
            raise ExtractorError(
                "--inception-weights needs the torch-fidelity package (and torchvision, which "
                f"its package imports): pip install torch-fidelity ({e})"
            ) from None
        if not Path(weights).is_file():
            raise ExtractorError(f"{weights}: Inception weights file not found")
        self.net = FeatureExtractorInceptionV3(
            "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(weights)
        ).eval()
        self.name = f"Inception-v3 (torch-fidelity, {Path(weights).name})"
        self.num_features = 2048

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # torch-fidelity resizes to 299 itself; it wants uint8 RGB.
        return self.net(_fit(x, 3, x.shape[-1]))[0].float()


def build_extractor(
    inception_weights: str | Path | None = None, classifier: str | Path | None = None
) -> ClassifierExtractor | InceptionExtractor:
    """Inception-v3 when its weights are given, else the classifier (shipped one by default)."""
    if inception_weights:
        return InceptionExtractor(inception_weights)
    return build_classifier_extractor(classifier)


def build_classifier_extractor(classifier: str | Path | None = None) -> ClassifierExtractor:
    import json

    path = Path(classifier) if classifier else DEFAULT_CLASSIFIER
    if not path.is_file():
        raise ExtractorError(
            f"{path}: classifier weights not found; train them with "
            "`ganforge quality train-classifier --data SHARDS --out FILE`"
        )
    sidecar = path.with_suffix(".json")
    meta = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    acc = meta.get("test_accuracy")
    name = f"CIFAR-style classifier {path.name}" + (
        f" (test accuracy {acc:.1%})" if acc is not None else ""
    )
    return ClassifierExtractor(load_classifier(path), name, meta.get("classes"))


@torch.no_grad()
def extract(
    fn,
    images: torch.Tensor,
    batch_size: int = 500,
    progress: str | None = None,
    device: str | None = None,
) -> torch.Tensor:
    """Apply `fn` (an extractor or its `probs`) to uint8 images in batches -> float64 [N, D] on
    the CPU; with `device`, `fn`'s network is moved there and the batches run there."""
    from tqdm import tqdm

    if device is not None:
        net = getattr(fn, "__self__", fn)  # a bound `probs`: its extractor
        if isinstance(net, nn.Module):
            net.to(device)
    out = []
    starts = range(0, len(images), batch_size)
    for i in tqdm(starts, desc=progress, disable=progress is None, leave=False):
        batch = images[i : i + batch_size]
        out.append(fn(batch.to(device) if device else batch).double().cpu())
    return torch.cat(out)
