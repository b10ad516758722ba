"""The served models: loading, label resolution, latents, and plain generate/score calls.

Nothing here knows about HTTP or Ray: the Serve deployment calls these methods, and tests can
call them directly.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import torch

from ganforge.models import LoadedModel, load_model
from ganforge.rundir import RunDir
from ganforge.serve.schemas import ApiError, GenerateRequest, ModelInfo

log = logging.getLogger("ganforge.serve")
# Seeds for requests that give none: seeded once from OS entropy, so a request costs no syscall.
_SEEDS = random.Random()


def find_quality(loaded: LoadedModel) -> dict[str, Any] | None:
    """Quality figures of a model: `<run_dir>/quality/metrics.json`, else the checkpoint's
    `quality` meta key (a checkpoint dir sits at `<run_dir>/checkpoints/<name>`)."""
    run = RunDir.of_checkpoint(loaded.path)
    if run is not None:
        report = run.quality_metrics
        if report.is_file():
            try:
                data = json.loads(report.read_text())
                if isinstance(data, dict):
                    return data
            except (OSError, json.JSONDecodeError) as e:
                log.warning("ignoring unreadable quality report %s: %s", report, e)
    q = loaded.meta.get("quality")
    return q if isinstance(q, dict) else None


def without_paths(value: Any) -> Any:
    """`value` (JSON-like) with every string that looks like a path or URI cut to its last part:
    what the API shows of records written on the server (they name files and buckets)."""
    if isinstance(value, dict):
        return {str(k): without_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_paths(v) for v in value]
    if isinstance(value, str) and ("/" in value or "\\" in value):
        return value.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1]
    return value


def public_quality(quality: dict[str, Any] | None) -> dict[str, Any] | None:
    """A quality report as `/v1/models` shows it: a string that looks like a path or URI (the
    report records e.g. the feature extractor's weights file) becomes its last part."""
    return None if quality is None else without_paths(quality)


@dataclass
class ServedModel:
    """One loaded checkpoint plus what the API reports about it."""

    name: str
    loaded: LoadedModel
    load_time_s: float
    device: torch.device

    @property
    def generator(self) -> torch.nn.Module:
        return self.loaded.generator

    @property
    def num_classes(self) -> int:
        return int(getattr(self.generator, "num_classes", 0))

    @property
    def class_names(self) -> list[str]:
        return self.loaded.classes or [str(i) for i in range(self.num_classes)]

    @property
    def truncates_in_w(self) -> bool:
        """The generator truncates toward its tracked mean w itself (`truncation_space = "w"`,
        StyleGAN2); other generators get truncated z."""
        return getattr(self.generator, "truncation_space", "z") == "w"

    def info(self) -> ModelInfo:
        m = self.loaded.config.model
        return ModelInfo(
            name=self.name,
            variant=m.variant,
            conditional=self.num_classes > 0,
            classes=self.class_names if self.num_classes else [],
            num_classes=self.num_classes,
            resolution=m.resolution,
            channels=m.channels,
            z_dim=m.z_dim,
            step=int(self.loaded.meta.get("step", 0)),
            images_seen=int(self.loaded.meta.get("images_seen", 0)),
            checkpoint=self.loaded.path.name,  # paths and URIs stay inside the server
            load_time_s=round(self.load_time_s, 4),
            quality=public_quality(find_quality(self.loaded)),
        )

    def class_index(self, label: int | str) -> int:
        if isinstance(label, str):
            try:
                return self.class_names.index(label)
            except ValueError:
                raise ApiError(
                    422,
                    f"unknown class {label!r} for model {self.name!r}; classes: "
                    f"{', '.join(self.class_names)}",
                ) from None
        if not 0 <= label < self.num_classes:
            raise ApiError(
                422,
                f"class index {label} out of range for model {self.name!r} "
                f"(0..{self.num_classes - 1})",
            )
        return label


@dataclass
class GenerationPlan:
    """Everything a request's images depend on, drawn before batching: the batch a request
    lands in cannot change its latents."""

    model: ServedModel
    seed: int
    z: torch.Tensor  # [N, z_dim] float32 on CPU
    labels: list[int] | None  # N class indices, None for unconditional models
    truncation: float | None = None  # psi for a generator that truncates in w, else None


def sample_latents(
    n: int, z_dim: int, gen: torch.Generator, truncation: float | None
) -> torch.Tensor:
    """[n, z_dim] standard normal latents, truncated to [-t, t] for the truncation trick."""
    if truncation is None:
        return torch.randn(n, z_dim, generator=gen)  # the values of empty().normal_(gen)
    # Inverse-CDF truncated normal: the same law as resampling |z| > t, in one pass.
    z = torch.empty(n, z_dim)
    return torch.nn.init.trunc_normal_(z, 0.0, 1.0, -truncation, truncation, generator=gen)


class ModelPool:
    """Loads every named checkpoint once (EMA generator + discriminator), warms it up."""

    def __init__(self, paths: dict[str, str], device: str = "cpu", warmup_batch: int = 8):
        self.device = torch.device(device)
        self.models: dict[str, ServedModel] = {}
        self._gen = torch.Generator()
        for name, path in paths.items():
            t0 = time.perf_counter()
            loaded = load_model(path, device=self.device)
            model = self.models[name] = ServedModel(name, loaded, 0.0, self.device)
            self._warm_up(model, warmup_batch)
            model.load_time_s = time.perf_counter() - t0
            log.info("loaded %s from %s in %.2fs", name, loaded.path, model.load_time_s)

    def _forward(self, model: ServedModel, n: int) -> torch.Tensor:
        """n images from fixed noise (seed 0) and class 0: warm-up and health probe."""
        z = sample_latents(n, model.generator.z_dim, torch.Generator().manual_seed(0), None)
        labels = torch.zeros(n, dtype=torch.long) if model.num_classes else None
        return self.generate(model.name, z, labels)

    def _warm_up(self, model: ServedModel, batch: int) -> None:
        # The first forward passes pick kernels and allocate; do them before traffic arrives.
        for n in {1, max(1, batch)}:
            self._forward(model, n)

    def probe(self) -> None:
        """A 1-image forward pass of every model; raises RuntimeError naming the first model
        that cannot run one (a persistent fault, as opposed to one failed batch)."""
        for model in self.models.values():
            try:
                images = self._forward(model, 1)
            except Exception as e:
                raise RuntimeError(
                    f"model {model.name!r} cannot run a 1-image forward pass: "
                    f"{type(e).__name__}: {e}"
                ) from None
            if not torch.isfinite(images).all():
                raise RuntimeError(f"model {model.name!r} produces non-finite images")

    def get(self, name: str) -> ServedModel:
        try:
            return self.models[name]
        except KeyError:
            raise ApiError(
                404, f"unknown model {name!r}; served models: {', '.join(self.models)}"
            ) from None

    def plan(self, req: GenerateRequest, max_images: int) -> GenerationPlan:
        """Validate a generate request against its model and draw its latents and labels."""
        model = self.get(req.model)
        given = None
        if req.labels is not None:
            count = len(req.labels)
            if model.num_classes:
                given = [model.class_index(x) for x in req.labels]
        else:
            count = 1 if req.count is None else req.count
            if req.class_ is not None and model.num_classes:
                given = [model.class_index(req.class_)] * count
        if count > max_images:
            raise ApiError(422, f"{count} images requested; the limit is {max_images} per request")
        seed = req.seed
        if seed is None:  # a fresh seed, reported back so the images can be reproduced
            seed = _SEEDS.getrandbits(63)
        # One generator reseeded per request (requests are planned one at a time on the
        # replica's event loop): each torch call on the request path releases the GIL, which a
        # busy replica then has to win back.
        gen = self._gen.manual_seed(seed)
        psi = req.truncation if model.truncates_in_w else None
        if psi is not None and psi > 1:
            raise ApiError(
                422,
                f"truncation for model {req.model!r} is psi in (0, 1] (w = w_avg + psi * (w - "
                f"w_avg)); got {psi}",
            )
        # Fixed draw order (z first, then any random labels) keeps a seed's meaning stable.
        z = sample_latents(
            count, model.generator.z_dim, gen, None if model.truncates_in_w else req.truncation
        )
        labels = None
        if model.num_classes:
            labels = (
                given
                if given is not None
                else torch.randint(model.num_classes, (count,), generator=gen).tolist()
            )
        return GenerationPlan(model, seed, z, labels, psi)

    @torch.inference_mode()
    def generate(
        self,
        name: str,
        z: torch.Tensor,
        labels: torch.Tensor | None,
        truncation: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """z [N, z_dim] (+ labels [N] int64) -> images [N, C, H, W] float in [-1, 1] on CPU.

        `truncation` [N] (psi per image, 1 = none) only for a model with `truncates_in_w`."""
        model = self.get(name)
        lab = labels.to(self.device) if labels is not None else None
        if truncation is None:
            return model.generator(z.to(self.device), lab).float().cpu()
        psi = truncation.to(self.device)
        return model.generator(z.to(self.device), lab, truncation=psi).float().cpu()

    @torch.inference_mode()
    def score(self, name: str, images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """images [N, C, H, W] float in [-1, 1] (+ labels [N]) -> discriminator scores [N]."""
        model = self.get(name)
        lab = labels.to(self.device) if labels is not None else None
        return model.loaded.discriminator(images.to(self.device), lab).float().reshape(-1).cpu()
