"""Random access to expert labels by sample key, for training (:class:`vlm.train.labels.ExpertAttacher`).

``ExpertLabels(labels_uri, experts).get(key, shard=None) -> {expert: map or None}``. With the data shard's
name one label shard per expert is loaded (label shards align 1:1 with data shards) and kept in a small LRU
cache; without it (e.g. a curated set that kept the original keys) a key -> label shard index is built once
from the label shards' member names. S3 label shards are cached locally (``storage.local_copy``).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

import numpy as np

from vlm import storage
from vlm.data import format as fmt
from vlm.experts.shards import read_label_shard

log = logging.getLogger(__name__)


def _check_experts(labels_uri: str, experts: list[str]) -> dict[str, Any]:
    index = fmt.read_labels_index(labels_uri)
    missing = [e for e in experts if e not in index["experts"]]
    if missing:
        raise ValueError(f"{labels_uri} has no labels for {missing}; it has {sorted(index['experts'])}")
    for e in experts:
        if not index["experts"][e].get("complete"):
            log.warning("expert %r labels are incomplete (%s/%s shards)", e, index["experts"][e].get("shards_done"),
                        index["experts"][e].get("shards_total"))
    return index


class ExpertLabels:
    """Labels of ``experts`` under ``labels_uri``, looked up by key (see the module docstring)."""

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
        uri = fmt.label_shard_uri(self.labels_uri, expert, shard)
        data = read_label_shard(str(storage.local_copy(uri)), expert) if storage.exists(uri) else {}
        self._cache[k] = data
        while len(self._cache) > self._cache_shards * len(self.experts):
            self._cache.popitem(last=False)
        return data

    def _build_index(self) -> dict[str, dict[str, str]]:
        where: dict[str, dict[str, str]] = {}
        for e in self.experts:
            for uri in storage.list_uris(storage.join(self.labels_uri, e)):
                if uri.endswith(".tar"):
                    name = uri.replace("\\", "/").rsplit("/", 1)[-1]
                    where.setdefault(e, {}).update(dict.fromkeys(fmt.shard_keys(uri), name))
        return where

    def get(self, key: str, shard: str | None = None) -> dict[str, np.ndarray | None]:
        if shard is None:
            if self._where is None:
                self._where = self._build_index()
            return {e: (self._shard(e, self._where[e][key]).get(key) if key in self._where.get(e, {}) else None)
                    for e in self.experts}
        return {e: self._shard(e, shard).get(key) for e in self.experts}
