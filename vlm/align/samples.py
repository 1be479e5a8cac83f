"""Seeded image sampling from data shards (read through :mod:`vlm.data.format`), split across ranks.

Damaged input (``docs/formats.md``): a shard whose members cannot be listed (truncated or corrupt tar) is left
out of the draw and counted; a sampled image whose shard fails its manifest check (size, sha256), or that
does not decode, is reported by :func:`read_samples` with its reason, so the stage records it as rejected.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
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
        return fmt.decode_image(self.data)


def list_split_shards(data_uri: str, split: str) -> list[fmt.ShardRef]:
    try:
        shards = fmt.find_shards(data_uri, split)
    except FileNotFoundError:
        shards = []
    if not shards:
        raise FileNotFoundError(f"no {split}-*.tar shards under {data_uri}")
    return shards


def select_keys(data_uri: str, n: int, seed: int, split: str = "train",
                rejected: Counter | None = None) -> list[tuple[str, str]]:
    """``n`` (shard URI, key) pairs drawn without replacement with ``seed``, in a stable order.

    The same (data, n, seed, split) always gives the same list, on every rank. A shard whose keys cannot be
    listed is left out, counted in ``rejected`` by reason and logged.
    """
    pairs, damaged = [], []
    for shard in list_split_shards(data_uri, split):
        try:
            pairs += [(shard.uri, key) for key in fmt.shard_keys(shard.uri)]
        except fmt.ShardError as exc:
            if rejected is not None:
                rejected[exc.reason] += 1
            damaged.append(str(exc))
            log.warning("skipping %s [%s]: none of its images is sampled", exc, exc.reason)
    if not pairs:
        raise FileNotFoundError(f"the {split} shards under {data_uri} hold no images"
                                + "".join(f"; {d}" for d in damaged))
    if n > len(pairs):
        log.warning("asked for %d images, the %s split has %d: using all", n, split, len(pairs))
        n = len(pairs)
    chosen = random.Random(seed).sample(pairs, n)
    return sorted(chosen, key=lambda p: p[1])


def read_samples(pairs: list[tuple[str, str]], shards: dict[str, fmt.ShardRef] | None = None,
                 bad: dict[tuple[str, str], str] | None = None) -> list[ImageSample]:
    """Read the image bytes and json meta of the given (shard URI, key) pairs, in the given order.

    ``shards`` (URI -> manifest entry): check each shard against the manifest first. With ``bad``, a pair
    that cannot be used (shard damaged, image missing or undecodable) goes there with its reason and is left
    out (a warning names it); without, a damaged shard raises :class:`~vlm.data.format.ShardError` and a
    missing image ``FileNotFoundError``.
    """
    by_shard: dict[str, set[str]] = {}
    for shard, key in pairs:
        by_shard.setdefault(shard, set()).add(key)
    found: dict[tuple[str, str], ImageSample] = {}
    for shard, keys in by_shard.items():
        ref = (shards or {}).get(shard)
        try:
            raws = list(fmt.iter_shard(ref or shard, verify=ref is not None, keys=keys))
        except fmt.ShardError as exc:
            if bad is None:
                raise
            log.warning("skipping %s [%s]: its %d sampled image(s) are rejected", exc, exc.reason, len(keys))
            bad.update({(shard, key): exc.reason for key in keys})
            continue
        for raw in raws:
            key = raw["__key__"]
            try:
                ext, data = fmt.image_member(raw)
                if bad is not None:
                    fmt.decode_image(data)  # a bad image is found here, not in the model's batch
            except fmt.SampleError as exc:
                if bad is not None:
                    log.warning("skipping sample %s of %s: %s", key, shard, exc)
                    bad[(shard, key)] = exc.reason
                continue
            try:
                meta = fmt.sample_meta(raw)
            except fmt.SampleError as exc:
                log.warning("%s: sample %s: %s; ignoring its metadata", shard, key, exc)
                meta = {}
            found[(shard, key)] = ImageSample(key=key, shard=shard, ext=ext, data=data, meta=meta)
    missing = [p for p in pairs if p not in found and p not in (bad or {})]
    if missing:
        raise FileNotFoundError(f"{len(missing)} selected image(s) vanished from their shards, e.g. {missing[0]}")
    return [found[p] for p in pairs if p in found]

