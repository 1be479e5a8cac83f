"""Seeded image sampling from data shards (the DESIGN.md shard format), split across ranks."""

from __future__ import annotations

import io
import json
import logging
import random
import tarfile
from dataclasses import dataclass, field
from typing import Any

from vlm import storage

log = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


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
    shards = sorted(u for u in storage.list_uris(data_uri)
                    if u.rsplit("/", 1)[-1].startswith(f"{split}-") and u.endswith(".tar"))
    if not shards:
        raise FileNotFoundError(f"no {split}-*.tar shards under {data_uri}")
    return shards


def _key_ext(name: str) -> tuple[str, str]:
    base = name.rsplit("/", 1)[-1]
    key, _, ext = base.partition(".")
    return name[: len(name) - len(base)] + key, ext.lower()


def _shard_keys(shard_uri: str) -> list[str]:
    with tarfile.open(storage.local_copy(shard_uri)) as tar:
        keys = {_key_ext(m.name)[0] for m in tar.getmembers() if m.isfile() and _key_ext(m.name)[1] in IMAGE_EXTS}
    return sorted(keys)


def select_keys(data_uri: str, n: int, seed: int, split: str = "train") -> list[tuple[str, str]]:
    """``n`` (shard, key) pairs drawn without replacement with ``seed``, in a stable order.

    The same (data, n, seed, split) always gives the same list, on every rank.
    """
    pairs = [(shard, key) for shard in list_split_shards(data_uri, split) for key in _shard_keys(shard)]
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
        with tarfile.open(storage.local_copy(shard)) as tar:
            for member in tar.getmembers():
                key, ext = _key_ext(member.name)
                if key not in keys or not member.isfile():
                    continue
                sample = found.setdefault((shard, key), ImageSample(key=key, shard=shard, ext="", data=b""))
                payload = tar.extractfile(member).read()  # type: ignore[union-attr]
                if ext in IMAGE_EXTS:
                    sample.ext, sample.data = ext, payload
                elif ext == "json":
                    try:
                        sample.meta = json.loads(payload)
                    except ValueError:
                        log.warning("%s: %s.json is not valid JSON; ignoring its metadata", shard, key)
    missing = [p for p in pairs if p not in found or not found[p].data]
    if missing:
        raise FileNotFoundError(f"{len(missing)} selected image(s) vanished from their shards, e.g. {missing[0]}")
    return [found[p] for p in pairs]
