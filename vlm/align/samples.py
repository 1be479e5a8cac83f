"""Seeded image sampling from data shards (read through :mod:`vlm.data.format`), split across ranks."""

from __future__ import annotations

import io
import logging
import random
from dataclasses import dataclass, field
from typing import Any

from vlm.data import format as fmt

log = logging.getLogger(__name__)


@dataclass
class ImageSample:
    key: str
    shard: str
    ext: str
    data: bytes
    meta: dict[str, Any] = field(default_factory=dict)

    def image(self):
        """The decoded image as PIL RGB."""
        from PIL import Image

        with Image.open(io.BytesIO(self.data)) as im:
            return im.convert("RGB")


def list_split_shards(data_uri: str, split: str) -> list[str]:
    try:
        shards = [s.uri for s in fmt.find_shards(data_uri, split)]
    except FileNotFoundError:
        shards = []
    if not shards:
        raise FileNotFoundError(f"no {split}-*.tar shards under {data_uri}")
    return shards


def select_keys(data_uri: str, n: int, seed: int, split: str = "train") -> list[tuple[str, str]]:
    """``n`` (shard, key) pairs drawn without replacement with ``seed``, in a stable order.

    The same (data, n, seed, split) always gives the same list, on every rank.
    """
    pairs = [(shard, key) for shard in list_split_shards(data_uri, split) for key in fmt.shard_keys(shard)]
    if not pairs:
        raise FileNotFoundError(f"the {split} shards under {data_uri} hold no images")
    if n > len(pairs):
        log.warning("asked for %d images, the %s split has %d: using all", n, split, len(pairs))
        n = len(pairs)
    chosen = random.Random(seed).sample(pairs, n)
    return sorted(chosen, key=lambda p: p[1])


def read_samples(pairs: list[tuple[str, str]]) -> list[ImageSample]:
    """Read the image bytes and json meta of the given (shard, key) pairs, in the given order."""
    by_shard: dict[str, set[str]] = {}
    for shard, key in pairs:
        by_shard.setdefault(shard, set()).add(key)
    found: dict[tuple[str, str], ImageSample] = {}
    for shard, keys in by_shard.items():
        for raw in fmt.iter_shard(shard, keys=keys):
            key = raw["__key__"]
            try:
                ext, data = fmt.image_member(raw)
            except fmt.SampleError:
                continue
            try:
                meta = fmt.sample_meta(raw)
            except fmt.SampleError as exc:
                log.warning("%s: sample %s: %s; ignoring its metadata", shard, key, exc)
                meta = {}
            found[(shard, key)] = ImageSample(key=key, shard=shard, ext=ext, data=data, meta=meta)
    missing = [p for p in pairs if p not in found]
    if missing:
        raise FileNotFoundError(f"{len(missing)} selected image(s) vanished from their shards, e.g. {missing[0]}")
    return [found[p] for p in pairs]
