"""Prismer expert labels for training: which labels feed each of the model's expert inputs, attached by key.

The model names its expert inputs in ``model.experts`` (e.g. ``["edges", "normals_x"]``); the labels URI
(``vlm experts`` output, ``docs/formats.md``) holds one folder per expert plus ``labels.json``. A model input
is served by the expert of the same name, or, for ``{expert}_x|_y|_z``, by one channel of a three-channel
expert (``normals``), as in :mod:`vlm.experts.loader`. Lookups go through
:class:`vlm.experts.loader.ExpertLabels`: by the aligned label shard when the data shards are the ones the
labels were computed from, else by key (e.g. a curated stage-two set that kept the original keys).

A sample without a label for an expert (the expert failed on it, or its shard is not done) gets no map for
that expert (the model's ``experts_present`` is then false) and is counted in :attr:`ExpertAttacher.missing`.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from typing import Any

import numpy as np

from vlm import storage
from vlm.data import format as fmt

log = logging.getLogger(__name__)

LABELS_INDEX = fmt.LABELS_INDEX
AXES = "xyz"


class ExpertLabelsError(ValueError):
    """The labels cannot serve the model's experts (missing URI, index or expert)."""


def read_index(labels_uri: str) -> dict[str, Any]:
    """``labels.json`` of a labels URI, or a clear :class:`ExpertLabelsError`."""
    try:
        return fmt.read_labels_index(labels_uri)
    except FileNotFoundError:
        raise ExpertLabelsError(f"expert labels {labels_uri}: no {LABELS_INDEX} (compute the labels with "
                                "`vlm experts` first, or check the --labels / train.labels URI)") from None
    except fmt.FormatError as exc:
        raise ExpertLabelsError(str(exc)) from None


def label_sources(index: dict[str, Any], labels_uri: str, names: list[str]) -> dict[str, tuple[str, int | None]]:
    """Model expert name -> (label expert, channel or None). Raises naming the first expert the labels lack."""
    have = index["experts"]
    out: dict[str, tuple[str, int | None]] = {}
    for name in names:
        base, _, axis = name.rpartition("_")
        if name in have:
            channels = int(have[name].get("channels", 1))
            if channels != 1:
                raise ExpertLabelsError(
                    f"the model needs expert {name!r} as one HxW map, but the {name!r} labels under {labels_uri} have "
                    f"{channels} channels: list {', '.join(f'{name}_{a}' for a in AXES[:channels])} in model.experts")
            out[name] = (name, None)
        elif base in have and len(axis) == 1 and axis in AXES and int(have[base].get("channels", 1)) > AXES.index(axis):
            out[name] = (base, AXES.index(axis))
        else:
            raise ExpertLabelsError(
                f"the model needs expert {name!r} but the expert labels {labels_uri} have no {name!r} labels "
                f"(they have {sorted(have) or 'none'}); compute them with `vlm experts` (add {name!r} to "
                f"experts.experts) or remove {name!r} from model.experts")
        info = have[out[name][0]]
        if not info.get("complete", True):
            log.warning("expert %r labels under %s are incomplete (%s/%s shards): samples of the other shards train "
                        "without it", out[name][0], labels_uri, info.get("shards_done"), info.get("shards_total"))
    return out


def _norm(uri: str) -> str:
    uri = str(uri).rstrip("/")
    return uri if storage.is_s3(uri) else os.path.realpath(uri.removeprefix("file://"))


def aligned(index: dict[str, Any], data_uri: str) -> bool:
    """Were the labels computed from these very data shards (so label shards match data shards by name)?"""
    data = index.get("data") or {}
    theirs = data.get("manifest_sha256")
    mine = fmt.manifest_sha256(data_uri)
    if theirs and mine:
        return theirs == mine
    return bool(data.get("uri")) and _norm(data["uri"]) == _norm(data_uri)


class ExpertAttacher:
    """Adds ``experts={model expert: uint8 HxW}`` to decoded samples, looked up by key in a labels URI.

    Validates the labels against ``names`` on construction (fail at start). Picklable: the label shards are
    opened lazily in the process (dataloader worker) that uses them.
    """

    def __init__(self, labels_uri: str, names: list[str], data_uri: str | None = None, cache_shards: int = 2):
        self.labels_uri, self.names, self.cache_shards = str(labels_uri), list(names), cache_shards
        index = read_index(self.labels_uri)
        self.sources = label_sources(index, self.labels_uri, self.names)
        self.data_uri = str(data_uri).rstrip("/") if data_uri else None
        self.by_shard = self.data_uri is not None and aligned(index, self.data_uri)
        self.missing: Counter[str] = Counter()
        self._store = None
        log.info("expert labels %s -> model experts %s (lookup by %s)", self.labels_uri, self.names,
                 "aligned shard" if self.by_shard else "key")

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_store": None}

    def _labels(self):
        if self._store is None:
            from vlm.experts.loader import ExpertLabels

            self._store = ExpertLabels(self.labels_uri, sorted({src for src, _ in self.sources.values()}),
                                       self.cache_shards)
        return self._store

    def _shard_name(self, shard_uri: str | None) -> str | None:
        if not self.by_shard or not shard_uri:
            return None
        shard_uri = str(shard_uri).replace("\\", "/")
        base = (self.data_uri or "").replace("\\", "/") + "/"
        return shard_uri[len(base):] if shard_uri.startswith(base) else shard_uri.rsplit("/", 1)[-1]

    def maps(self, key: str, shard_uri: str | None = None) -> dict[str, np.ndarray]:
        """The model expert maps of one sample (experts without a label are left out and counted)."""
        found = self._labels().get(key, self._shard_name(shard_uri))
        out: dict[str, np.ndarray] = {}
        for name, (src, channel) in self.sources.items():
            arr = found.get(src)
            if arr is None:
                self.missing[name] += 1
                n = self.missing[name]
                if n in (1, 10, 100, 1000) or n % 10000 == 0:
                    log.warning("%d sample(s) without a %r label (e.g. %s): trained without that expert", n, name, key)
                continue
            out[name] = np.ascontiguousarray(arr[..., channel]) if channel is not None else arr
        return out

    def attach(self, sample: dict[str, Any], shard_uri: str | None = None) -> dict[str, Any]:
        """``sample`` (``__key__``, ``image``, ``meta``) plus ``experts``."""
        return {**sample, "experts": self.maps(sample["__key__"], shard_uri)}


def expert_labels(names: list[str], labels_uri: str | None, data_uri: str | None,
                  trained_from: str | None = None) -> ExpertAttacher | None:
    """The attacher for a model with expert inputs ``names``, or None when the model has none.

    A model whose experts input starts untrained needs labels; one loaded from an artefact (``trained_from``)
    may go on without them (e.g. stage two on a curated set), every expert then absent, with a warning.
    """
    if not names:
        if labels_uri:
            log.info("the model has no expert inputs; ignoring the expert labels %s", labels_uri)
        return None
    if not labels_uri:
        if trained_from:
            log.warning("model experts %s but no expert labels given: training with every expert absent (pass "
                        "--labels URI to feed them)", names)
            return None
        raise ExpertLabelsError(f"model.experts is {names} but no expert labels were given: pass --labels URI "
                                "(or set train.labels) to the output of `vlm experts`, or empty model.experts")
    return ExpertAttacher(labels_uri, names, data_uri)
