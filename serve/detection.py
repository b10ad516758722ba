"""The deepfake detector behind `POST /v1/detect` (`ganforge serve --detector PATH`).

Loads a detector written by `ganforge detect train` (weights only, record checked: see
`ganforge.models.detector`), converts uploads to its size with the same decoder as /v1/score,
and answers its calibrated probability that each image is generated. What `/v1/models` shows of
it comes from its record, with paths cut to their last part.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ganforge.models.detector import load_detector
from ganforge.serve import codecs
from ganforge.serve.model_pool import without_paths
from ganforge.serve.schemas import DetectorInfo

DETECT_CAVEAT = (
    "p_fake is the detector's probability that an image is generated, calibrated (one "
    "temperature) on held-out real images and fresh fakes of the generators it was trained "
    "against. It is reliable only for images like those: the same kind of real data and those "
    "generators. A new generator, another domain, heavy editing or re-compression can fool it "
    "in either direction; a low p_fake is not proof that an image is real."
)
FAKE_THRESHOLD = 0.5


class ServedDetector:
    """One loaded detector: `info()` for /v1/models, `detect(uploads)` for /v1/detect."""

    def __init__(self, path: str | Path, device: str = "cpu") -> None:
        self.module, self.record = load_detector(path, device)
        self.device = device
        self.image_size = int(self.record.get("image_size") or 32)

    @property
    def trained_on(self) -> list[str]:
        return [str(n) for n in self.record.get("fakes") or []]

    def info(self) -> DetectorInfo:
        validation = dict(self.record.get("validation") or {})
        calibration = validation.pop("calibration", None) or {}
        real = self.record.get("real") or {}
        return DetectorInfo(
            image_size=self.image_size,
            channels=self.module.channels,
            trained_on=self.trained_on,
            real_data=str(without_paths(str(real.get("data", "unknown")))),
            calibration={
                "method": "temperature",
                "temperature": self.module.temperature,
                **without_paths(calibration),
            },
            validation=without_paths(validation),
            caveat=DETECT_CAVEAT,
        )

    def decode(self, uploads: list[tuple[bytes, str | None]]) -> tuple[torch.Tensor, list[bool]]:
        """Blocking: uploads -> (uint8 [N, C, S, S] at the detector's shape, resized? each).
        A bad upload raises the decoder's ApiError (415/413)."""
        size, channels = self.image_size, self.module.channels
        decoded = [codecs.decode_upload_uint8(d, n, size, channels) for d, n in uploads]
        return torch.stack([x for x, _ in decoded]), [r for _, r in decoded]

    def predict(self, images: torch.Tensor) -> list[float]:
        """Blocking: calibrated P(fake) of uint8 images [N, C, S, S]."""
        return self.module.predict(images.to(self.device)).cpu().tolist()


def detections(
    filenames: list[str | None], probs: list[float], resized: list[bool]
) -> list[dict[str, Any]]:
    """One /v1/detect entry per upload."""
    return [
        {
            "filename": name,
            "p_fake": p,
            "verdict": "fake" if p >= FAKE_THRESHOLD else "real",
            "resized": r,
        }
        for name, p, r in zip(filenames, probs, resized, strict=True)
    ]
