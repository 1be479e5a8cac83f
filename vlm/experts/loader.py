"""Joining data shards with any subset of expert labels, by key, for training.

Yields the data reader's sample dict (``__key__``, ``image`` (PIL RGB), ``meta``) plus
``experts: {name: np.ndarray uint8 HxW}``, resized to the image's size with nearest-neighbour when they
differ. A three-channel expert (``normals``, stored as an RGB PNG) is split into ``{name}_x``, ``{name}_y``,
``{name}_z`` HxW maps so every map is HxW as the model library expects (``split_channels=False`` keeps it
HxWx3). Two ways in:

- :func:`iter_labelled` walks the data shards itself, shard by shard, split across ranks and dataloader
  workers, loading the matching label shards once per shard.
- :func:`join_experts` adds labels to any stream of samples (e.g. ``vlm.data.reader`` with shuffling);
  it looks each key up through :class:`ExpertLabels`, which indexes the label shards lazily.

A sample missing a requested label (the expert failed on it) is skipped and counted (``on_missing="skip"``),
passed on without that expert (``"keep"``), or raises (``"error"``).
"""

from __future__ import annotations

import io
import json
import logging
import os
import sys
import tarfile
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import Any, Literal

import numpy as np

from vlm import storage
from vlm.experts.shards import IMAGE_EXTS, iter_tar, list_data_shards, read_label_shard, split_name

log = logging.getLogger(__name__)

OnMissing = Literal["skip", "keep", "error"]


class MissingLabelError(KeyError):
    """A sample has no label for a requested expert and ``on_missing="error"``."""


def _check_experts(labels_uri: str, experts: list[str]) -> dict[str, Any]:
    try:
        index = json.loads(storage.read_text(storage.join(labels_uri, "labels.json")))
    except FileNotFoundError:
        raise FileNotFoundError(f"{labels_uri}: no labels.json (run `vlm experts` first)") from None
    missing = [e for e in experts if e not in index.get("experts", {})]
    if missing:
        raise ValueError(f"{labels_uri} has no labels for {missing}; it has {sorted(index.get('experts', {}))}")
    for e in experts:
        if not index["experts"][e].get("complete"):
            log.warning("expert %r labels are incomplete (%d/%d shards)", e, index["experts"][e]["shards_done"],
                        index["experts"][e]["shards_total"])
    return index


def _fit(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a label map to ``size`` = (width, height) with nearest neighbour (ids stay ids)."""
    if arr.shape[1] == size[0] and arr.shape[0] == size[1]:
        return arr
    import cv2

    return cv2.resize(arr, size, interpolation=cv2.INTER_NEAREST)


def _sample(key: str, group: dict[str, bytes]) -> dict[str, Any]:
    from PIL import Image

    ext = next((e for e in IMAGE_EXTS if e in group), None)
    if ext is None:
        raise ValueError(f"sample {key!r} has no image")
    with Image.open(io.BytesIO(group[ext])) as im:
        image = im.convert("RGB")
    meta = json.loads(group["json"]) if "json" in group else {}
    return {"__key__": key, "image": image, "meta": meta}


def _partition(items: list[Any], rank: int | None, world_size: int | None) -> list[Any]:
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    world = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
    items = items[rank::world]
    torch = sys.modules.get("torch")
    info = torch.utils.data.get_worker_info() if torch is not None else None
    if info is not None:
        items = items[info.id :: info.num_workers]
    return items


class _Joiner:
    def __init__(self, experts: list[str], on_missing: OnMissing, resize: bool, split_channels: bool = True):
        if on_missing not in ("skip", "keep", "error"):
            raise ValueError(f"on_missing must be skip, keep or error; got {on_missing!r}")
        self.experts, self.on_missing, self.resize = experts, on_missing, resize
        self.split_channels = split_channels
        self.skipped = 0

    def attach(self, sample: dict[str, Any], labels: dict[str, np.ndarray | None]) -> dict[str, Any] | None:
        out: dict[str, np.ndarray] = {}
        for e in self.experts:
            arr = labels.get(e)
            if arr is None:
                if self.on_missing == "error":
                    raise MissingLabelError(f"sample {sample['__key__']!r} has no {e!r} label")
                if self.on_missing == "skip":
                    self.skipped += 1
                    if self.skipped in (1, 10, 100, 1000) or self.skipped % 10000 == 0:
                        log.warning("skipped %d sample(s) without all of the labels %s", self.skipped, self.experts)
                    return None
                continue
            arr = _fit(arr, sample["image"].size) if self.resize else arr
            if arr.ndim == 3 and self.split_channels:
                out.update({f"{e}_{axis}": np.ascontiguousarray(arr[..., i]) for i, axis in enumerate("xyz"[: arr.shape[2]])})
            else:
                out[e] = arr
        return {**sample, "experts": out}


def iter_labelled(data_uri: str, labels_uri: str, experts: list[str], shards: list[str] | None = None,
                  on_missing: OnMissing = "skip", resize: bool = True, rank: int | None = None,
                  world_size: int | None = None, split_channels: bool = True) -> Iterator[dict[str, Any]]:
    """Data samples joined with the ``experts`` labels, shard by shard (split over ranks and workers)."""
    _check_experts(labels_uri, experts)
    all_shards = list_data_shards(data_uri)
    chosen = [s for s in all_shards if shards is None or s.name in shards]
    joiner = _Joiner(experts, on_missing, resize, split_channels)
    for shard in _partition(chosen, rank, world_size):
        labels = {}
        for e in experts:
            uri = storage.join(labels_uri, e, shard.name)
            labels[e] = read_label_shard(uri, e) if storage.exists(uri) else {}
        for key, group in iter_tar(shard.uri):
            try:
                sample = _sample(key, group)
            except Exception as exc:  # noqa: BLE001
                log.warning("skipping undecodable sample %s in %s: %s", key, shard.name, exc)
                continue
            sample["__shard__"] = shard.name
            joined = joiner.attach(sample, {e: labels[e].get(key) for e in experts})
            if joined is not None:
                yield joined


class ExpertLabels:
    """Random access to labels by key: ``labels.get(key, shard=None) -> {expert: map}``.

    With the shard name (``__shard__``, or the basename of ``__url__``) one label shard is loaded and kept
    in a small LRU cache; without it a key -> shard index is built once from the label tars' member names.
    S3 label shards are cached locally (``storage.local_copy``).
    """

    def __init__(self, labels_uri: str, experts: list[str], cache_shards: int = 4):
        self.labels_uri, self.experts = labels_uri, list(experts)
        self.index = _check_experts(labels_uri, self.experts)
        self._cache: OrderedDict[tuple[str, str], dict[str, np.ndarray]] = OrderedDict()
        self._cache_shards = cache_shards
        self._where: dict[str, dict[str, str]] | None = None

    def _shard(self, expert: str, shard: str) -> dict[str, np.ndarray]:
        k = (expert, shard)
        if k in self._cache:
            self._cache.move_to_end(k)
            return self._cache[k]
        uri = storage.join(self.labels_uri, expert, shard)
        data = read_label_shard(str(storage.local_copy(uri)), expert) if storage.exists(uri) else {}
        self._cache[k] = data
        while len(self._cache) > self._cache_shards * len(self.experts):
            self._cache.popitem(last=False)
        return data

    def _build_index(self) -> dict[str, dict[str, str]]:
        where: dict[str, dict[str, str]] = {}
        for e in self.experts:
            for uri in storage.list_uris(storage.join(self.labels_uri, e)):
                if not uri.endswith(".tar"):
                    continue
                name = uri.replace("\\", "/").rsplit("/", 1)[-1]
                with tarfile.open(storage.local_copy(uri)) as tar:
                    for member in tar.getnames():
                        where.setdefault(e, {})[split_name(member)[0]] = name
        return where

    def get(self, key: str, shard: str | None = None) -> dict[str, np.ndarray | None]:
        if shard is None:
            if self._where is None:
                self._where = self._build_index()
            return {e: (self._shard(e, self._where[e][key]).get(key) if key in self._where.get(e, {}) else None)
                    for e in self.experts}
        return {e: self._shard(e, shard).get(key) for e in self.experts}


def join_experts(samples: Iterable[dict[str, Any]], labels_uri: str, experts: list[str],
                 on_missing: OnMissing = "skip", resize: bool = True,
                 split_channels: bool = True) -> Iterator[dict[str, Any]]:
    """Add ``experts`` labels to each sample of any sample stream (keys must match the data shards')."""
    labels = ExpertLabels(labels_uri, experts)
    joiner = _Joiner(experts, on_missing, resize, split_channels)
    for sample in samples:
        shard = sample.get("__shard__")
        if shard is None and sample.get("__url__"):
            shard = str(sample["__url__"]).replace("\\", "/").rsplit("/", 1)[-1]
        joined = joiner.attach(sample, labels.get(sample["__key__"], shard))
        if joined is not None:
            yield joined
