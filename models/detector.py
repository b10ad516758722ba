"""The deepfake detector network and its safe loading (weights + JSON record).

Public API:
- `Detector(channels, widths)`: uint8 images [B, C, H, W] (or float in [-1, 1]) -> one logit
  per image [B] (positive = fake). `predict(images)` is what evaluation and serving call: it
  applies the record's canonical JPEG re-encoding, the fitted temperature and a sigmoid, and
  returns the calibrated probability of "fake" [B] (float32); `logits(images)` stops before
  the temperature.
- `load_detector(path) -> (module, record)`: `path` is the `.pt` state dict (or its `.json`
  record beside it); `torch.load(weights_only=True)`, both files size-capped, the record checked
  before anything is built. Raises `DetectorError` with the reason.
- `save_detector(module, record, path)`: writes both files (training calls it).
- `jpeg_roundtrip(images, quality)`: the JPEG re-encoding shared by training's augmentation and
  the canonical pass at inference.

The record (`<name>.json`) holds `format`, `arch` (what rebuilds the module), `image_size`,
`temperature` (fitted on held-out data at train time), `preprocess.jpeg_quality` (canonical JPEG
quality applied before the network, or null) and the training history and validation figures;
serving only reads it. Lives in `models` (not `quality`) so that serving, which sits below
quality, can load it.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

FORMAT = "ganforge-detector/1"
MAX_WEIGHTS_BYTES = 64 * 2**20  # the default net is ~0.1 MB; anything this big is not ours
MAX_RECORD_BYTES = 4 * 2**20
MAX_WIDTH, MAX_STAGES = 512, 6


class DetectorError(ValueError):
    """A detector file is missing, too large, corrupt or does not match its record."""


def _conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


class Detector(nn.Module):
    """A small real-vs-fake CNN. The stem and each stage's first convolution see the full
    resolution of their input: GAN upsampling leaves its traces at the highest frequencies, which
    pooling first would average away. Each stage then halves the resolution and convolves once
    more; global average pooling makes the net size-agnostic.
    """

    def __init__(self, channels: int = 3, widths: Sequence[int] = (8, 16, 32)) -> None:
        super().__init__()
        self.channels, self.widths = int(channels), tuple(int(w) for w in widths)
        layers = _conv_bn(channels, self.widths[0])
        for a, b in zip(self.widths[:-1], self.widths[1:], strict=True):
            layers += [*_conv_bn(a, b), nn.AvgPool2d(2), *_conv_bn(b, b)]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(self.widths[-1], 1)
        # Set from the record by load_detector / at the end of training (see `predict`).
        self.temperature: float = 1.0
        self.jpeg_quality: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 127.5 - 1 if x.dtype == torch.uint8 else x.float()
        return self.head(self.body(x).mean(dim=(2, 3))).squeeze(1)

    @torch.no_grad()
    def logits(self, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        """Uncalibrated logits [N] (float32) of uint8 images [N, C, H, W], after the canonical
        JPEG re-encoding (eval mode, no grad)."""
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != self.channels:
            raise ValueError(
                f"expected uint8 images [N, {self.channels}, H, W], got {images.dtype} "
                f"{list(images.shape)}"
            )
        self.eval()
        out = []
        for i in range(0, len(images), batch_size):
            x = images[i : i + batch_size]
            if self.jpeg_quality is not None:
                x = jpeg_roundtrip(x, self.jpeg_quality)
            out.append(self(x.contiguous(memory_format=torch.channels_last)))
        return torch.cat(out) if out else torch.zeros(0)

    def predict(self, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        """Calibrated P(fake) [N] (float32) of uint8 images [N, C, H, W]."""
        return torch.sigmoid(self.logits(images, batch_size) / self.temperature)

    def arch(self) -> dict[str, Any]:
        """What `load_detector` needs to rebuild the module (stored in the record)."""
        return {"channels": self.channels, "widths": list(self.widths)}


def jpeg_roundtrip(
    images: torch.Tensor, quality: int | Sequence[int], subsampling: int = -1
) -> torch.Tensor:
    """Encode each uint8 image [N, C, H, W] as JPEG (one quality, or one per image) and decode it.

    `subsampling`: PIL's chroma code (0: 4:4:4, 1: 4:2:2, 2: 4:2:0); -1, PIL's default (4:2:0
    below quality 95), like most JPEGs in the wild."""
    qualities = [int(quality)] * len(images) if isinstance(quality, int) else list(quality)
    arr = images.permute(0, 2, 3, 1).numpy()
    grey = arr.shape[-1] == 1
    out = np.empty_like(arr)
    opts = {"subsampling": subsampling} if subsampling >= 0 and not grey else {}
    for i, q in enumerate(qualities):
        buf = io.BytesIO()
        img = Image.fromarray(arr[i, ..., 0] if grey else arr[i])
        img.save(buf, format="JPEG", quality=q, **opts)
        decoded = np.asarray(Image.open(buf))
        out[i] = decoded[..., None] if grey else decoded
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def save_detector(module: Detector, record: dict[str, Any], path: str | Path) -> Path:
    """Write the state dict to `path` and the record to `path` with suffix `.json`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}
    torch.save(state, path)
    body = {"format": FORMAT, "arch": module.arch(), **record}
    path.with_suffix(".json").write_text(json.dumps(body, indent=1))
    return path


def _read_capped(path: Path, cap: int, what: str) -> None:
    if not path.is_file():
        raise DetectorError(f"{path}: detector {what} not found")
    size = path.stat().st_size
    if size > cap:
        raise DetectorError(f"{path}: {size} bytes, over the {cap}-byte limit of a detector {what}")


def _check_record(record: Any, where: Path) -> tuple[int, list[int], float, int | None]:
    """-> (channels, widths, temperature, jpeg quality), or DetectorError saying what is wrong."""
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        got = record.get("format") if isinstance(record, dict) else type(record).__name__
        raise DetectorError(f"{where}: not a ganforge detector record (format {got!r})")
    arch = record.get("arch")
    channels = arch.get("channels") if isinstance(arch, dict) else None
    widths = arch.get("widths") if isinstance(arch, dict) else None
    if channels not in (1, 3):
        raise DetectorError(f"{where}: arch.channels must be 1 or 3, not {channels!r}")
    if (
        not isinstance(widths, list)
        or not 1 <= len(widths) <= MAX_STAGES
        or not all(isinstance(w, int) and 1 <= w <= MAX_WIDTH for w in widths)
    ):
        raise DetectorError(
            f"{where}: arch.widths must be 1..{MAX_STAGES} integers in 1..{MAX_WIDTH}"
        )
    t = record.get("temperature", 1.0)
    if not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
        raise DetectorError(f"{where}: temperature must be a positive number, not {t!r}")
    q = (record.get("preprocess") or {}).get("jpeg_quality")
    if q is not None and (not isinstance(q, int) or not 1 <= q <= 100):
        raise DetectorError(f"{where}: preprocess.jpeg_quality must be 1..100 or null, not {q!r}")
    return channels, widths, float(t), q


def load_detector(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[Detector, dict[str, Any]]:
    """Rebuild a detector from `path` (.pt, or its .json) -> (module in eval mode, record)."""
    path = Path(path)
    weights = path.with_suffix(".pt") if path.suffix == ".json" else path
    sidecar = weights.with_suffix(".json")
    _read_capped(weights, MAX_WEIGHTS_BYTES, "weights file")
    _read_capped(sidecar, MAX_RECORD_BYTES, "record (.json beside the weights)")
    try:
        record = json.loads(sidecar.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DetectorError(f"{sidecar}: not valid JSON ({e})") from None
    channels, widths, temperature, jpeg_quality = _check_record(record, sidecar)
    module = Detector(channels, widths)
    try:
        state = torch.load(weights, map_location=device, weights_only=True)
    except Exception as e:  # torch raises several types for truncated/garbled files
        raise DetectorError(f"{weights}: cannot be read ({e})") from None
    try:
        module.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise DetectorError(f"{weights}: weights do not match the record's arch ({e})") from None
    module.temperature, module.jpeg_quality = temperature, jpeg_quality
    return module.to(device).eval(), record
