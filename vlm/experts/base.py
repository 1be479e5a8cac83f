"""The expert interface: a frozen model (or algorithm) that turns images into uint8 label maps.

An expert declares what it produces and what it needs; the runner batches images, orders experts by their
dependencies, isolates per-image failures and writes the label shards. To add one, subclass
:class:`Expert` in a new file under ``vlm/experts/zoo/`` and decorate it with ``@register``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np

from vlm.experts.config import ExpertsConfig

Kind = Literal["dense", "instance", "text"]
"""dense: a per-pixel value (edges, depth, normals, semantic classes); instance: per-pixel instance ids
(0 = background) with a json id -> class map; text: a text mask plus the words and their boxes."""


class ExpertError(RuntimeError):
    """An expert cannot run at all (missing weights, missing dependency, bad source)."""


class ExpertBrokenError(ExpertError):
    """An expert failed on every image it was given: the run stops instead of writing empty labels."""


@dataclass
class Label:
    """One expert's output for one image: ``map`` is uint8 HxW (or HxWx3), ``meta`` goes to ``{key}.{expert}.json``."""

    map: np.ndarray
    meta: dict[str, Any] | None = None


@dataclass
class Failure:
    key: str
    expert: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"key": self.key, "expert": self.expert, "reason": self.reason}


@dataclass
class Batch:
    """What an expert sees: RGB uint8 images (HxWx3, already at label size) and its dependencies' maps."""

    keys: list[str]
    images: list[np.ndarray]
    deps: dict[str, list[np.ndarray | None]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.keys)

    def subset(self, index: int) -> Batch:
        return Batch([self.keys[index]], [self.images[index]], {k: [v[index]] for k, v in self.deps.items()})


class Expert(ABC):
    """Base class of every expert. Class attributes describe it; ``predict`` does the work.

    ``requires``: experts whose maps this one cannot do without (normals needs depth).
    ``after``: experts that, when present in the run or already on disk, are computed first and passed in
    (detection orders overlapping boxes by depth, as in Prismer).
    """

    name: ClassVar[str]
    backend: ClassVar[str]
    version: ClassVar[str] = "1"
    kind: ClassVar[Kind] = "dense"
    channels: ClassVar[int] = 1
    needs_weights: ClassVar[bool] = False
    requires: ClassVar[tuple[str, ...]] = ()
    after: ClassVar[tuple[str, ...]] = ()
    batched: ClassVar[bool] = False  # True when predict really runs the batch at once (model-backed experts)

    def __init__(self, cfg: ExpertsConfig, device: str = "cpu", source: str | None = None):
        self.cfg = cfg
        self.device = device
        self.source = source
        if self.needs_weights and not source:
            raise ExpertError(f"expert {self.name!r} ({self.backend}) needs model weights: set "
                              f"experts.sources.{self.name} (CLI: --source {self.name}=PATH_OR_S3_URI)")

    def setup(self) -> None:
        """Load models (called once per process, before the first batch)."""

    def options(self) -> dict[str, Any]:
        """The settings that change this expert's output (recorded in labels.json, checked on resume)."""
        return {}

    @abstractmethod
    def predict(self, batch: Batch) -> list[Label]:
        """Labels for every image of ``batch``, in order. Raise on failure; the runner isolates the image."""

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "backend": self.backend, "version": self.version, "kind": self.kind,
                "channels": self.channels, "source": self.source, "requires": list(self.requires),
                "after": list(self.after), "options": self.options(), "resolution": self.cfg.resolution}


class PerImageExpert(Expert):
    """An expert that labels one image at a time (the offline, CPU ones)."""

    @abstractmethod
    def predict_one(self, image: np.ndarray, deps: Mapping[str, np.ndarray | None]) -> Label: ...

    def predict(self, batch: Batch) -> list[Label]:
        return [self.predict_one(img, {k: v[i] for k, v in batch.deps.items()}) for i, img in enumerate(batch.images)]


def check_label(expert: Expert, image: np.ndarray, label: Any) -> Label:
    """Validate one output; raises ValueError with the reason when it does not fit the contract."""
    if not isinstance(label, Label):
        raise ValueError(f"returned {type(label).__name__}, expected Label")
    m = label.map
    if not isinstance(m, np.ndarray) or m.dtype != np.uint8:
        raise ValueError(f"map must be a uint8 numpy array, got {getattr(m, 'dtype', type(m))}")
    want = image.shape[:2] if expert.channels == 1 else (*image.shape[:2], expert.channels)
    if m.shape != tuple(want):
        raise ValueError(f"map shape {m.shape} != expected {tuple(want)}")
    return label
