"""Streaming reader for the shards written by ``vlm.data.shard``, local or on S3.

Samples are ``{"__key__": str, "image": PIL.Image (RGB), "meta": dict}``. Work is split across
distributed ranks (``RANK``/``WORLD_SIZE``, or an initialised torch.distributed group) and DataLoader
workers without duplicates: with at least as many shards as consumers (ranks x workers) each consumer
reads whole shards (round robin); with fewer, every consumer streams all shards and keeps every
n-th sample, so nothing is lost or read twice either way.

    from vlm.data.reader import ShardDataset
    ds = ShardDataset("s3://bucket/data", split="train", shuffle_buffer=1000, resample=True, seed=0)
    loader = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=2, collate_fn=list)
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import tarfile
from collections.abc import Iterator
from typing import Any

from PIL import Image

from vlm import storage

log = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")

__all__ = ["read_manifest", "shard_uris", "iter_samples", "iter_shard", "ShardDataset", "partition",
           "dataset_root"]


def dataset_root(uri: str) -> str:
    """The dataset folder for a dataset URI or a path to its ``manifest.json``."""
    uri = str(uri).rstrip("/")
    return uri[: -len("/manifest.json")] if uri.endswith("/manifest.json") else uri


def read_manifest(uri: str) -> dict[str, Any]:
    """The manifest of a dataset (``uri`` = dataset folder/prefix or its manifest.json)."""
    path = storage.join(dataset_root(uri), "manifest.json")
    try:
        return json.loads(storage.read_text(path))
    except FileNotFoundError:
        raise FileNotFoundError(f"no manifest at {path}: not a sharded dataset (run `vlm shard` first)") from None


def shard_uris(uri: str, split: str = "train", manifest: dict[str, Any] | None = None) -> list[str]:
    """URIs of the (non-empty) shards of ``split`` in manifest order. ``split="all"`` lists every split."""
    manifest = manifest or read_manifest(uri)
    shards = manifest["shards"]
    splits = sorted({s.get("split", s["name"].split("-")[0]) for s in shards})
    if split != "all" and split not in splits:
        raise ValueError(f"split {split!r} has no shards in {uri}; available: {', '.join(splits) or 'none'}")
    root = dataset_root(uri)
    return [storage.join(root, s["name"]) for s in shards
            if (split == "all" or s.get("split", s["name"].split("-")[0]) == split) and s.get("num_samples", 1) > 0]


def _decode(key: str, files: dict[str, bytes]) -> dict[str, Any] | None:
    ext = next((e for e in IMAGE_EXTS if e in files), None)
    if ext is None:
        log.warning("sample %s has no image member; skipped", key)
        return None
    meta = json.loads(files["json"]) if "json" in files else {}
    if "caption" not in meta and "txt" in files:
        meta["caption"] = files["txt"].decode("utf-8")
    image = Image.open(io.BytesIO(files[ext]))
    image = image.convert("RGB")
    return {"__key__": key, "image": image, "meta": meta}


def iter_shard(uri: str, decode: bool = True) -> Iterator[dict[str, Any]]:
    """Samples of one tar shard, streamed (S3 bodies are not buffered whole)."""
    with storage.open_read(uri) as fh, tarfile.open(fileobj=fh, mode="r|*") as tf:
        key, files = None, {}
        for member in tf:
            if not member.isfile():
                continue
            base = member.name.rsplit("/", 1)[-1]
            prefix = member.name[: len(member.name) - len(base)]
            if "." not in base:
                continue
            stem, ext = base.split(".", 1)
            k = prefix + stem
            data = tf.extractfile(member).read()
            if k != key and key is not None:
                sample = _decode(key, files) if decode else {"__key__": key, **files}
                if sample is not None:
                    yield sample
                files = {}
            key = k
            files[ext.lower()] = data
        if key is not None and files:
            sample = _decode(key, files) if decode else {"__key__": key, **files}
            if sample is not None:
                yield sample


def _dist_rank_world() -> tuple[int, int]:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except ImportError:  # pragma: no cover
        pass
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _worker() -> tuple[int, int]:
    try:
        from torch.utils.data import get_worker_info
    except ImportError:  # pragma: no cover
        return 0, 1
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def partition(num_shards: int, consumer: int, consumers: int) -> tuple[list[int], int, int]:
    """Which shards a consumer reads and which of their samples it keeps.

    Returns ``(shard_indices, sample_stride, sample_offset)``: keep the j-th sample (counted over the
    listed shards) when ``j % stride == offset``.
    """
    if not 0 <= consumer < consumers:
        raise ValueError(f"consumer {consumer} out of range for {consumers} consumers")
    if num_shards >= consumers:
        return list(range(consumer, num_shards, consumers)), 1, 0
    return list(range(num_shards)), consumers, consumer


def iter_samples(uri: str, split: str = "train", shuffle_buffer: int = 0, resample: bool = False, seed: int = 0,
                 epoch: int = 0, rank: int | None = None, world_size: int | None = None,
                 worker_id: int | None = None, num_workers: int | None = None,
                 decode: bool = True) -> Iterator[dict[str, Any]]:
    """Stream the samples of ``split`` for this consumer (rank x dataloader worker).

    ``shuffle_buffer`` > 0 shuffles shard order per epoch (same permutation on every consumer, so the
    partition stays disjoint) and samples through a buffer of that size. ``resample`` loops forever,
    reshuffling each pass (step-based training). Rank/worker default to the environment.
    """
    manifest = read_manifest(uri)
    shards = shard_uris(uri, split, manifest)
    env_rank, env_world = _dist_rank_world()
    env_worker, env_workers = _worker()
    rank = env_rank if rank is None else rank
    world_size = env_world if world_size is None else world_size
    worker_id = env_worker if worker_id is None else worker_id
    num_workers = env_workers if num_workers is None else num_workers
    consumers = world_size * num_workers
    consumer = rank * num_workers + worker_id
    if not shards:
        return
    while True:
        order = list(range(len(shards)))
        if shuffle_buffer > 0 or resample:
            random.Random(f"{seed}:{epoch}:shards").shuffle(order)
        picked, stride, offset = partition(len(order), consumer, consumers)
        rng = random.Random(f"{seed}:{epoch}:{consumer}:samples")
        stream = _strided((s for i in picked for s in iter_shard(shards[order[i]], decode=decode)), stride, offset)
        yield from (_shuffled(stream, shuffle_buffer, rng) if shuffle_buffer > 1 else stream)
        if not resample:
            return
        epoch += 1


def _strided(it: Iterator, stride: int, offset: int) -> Iterator:
    for j, item in enumerate(it):
        if j % stride == offset:
            yield item


def _shuffled(it: Iterator, size: int, rng: random.Random) -> Iterator:
    buf: list = []
    for item in it:
        if len(buf) < size:
            buf.append(item)
            continue
        i = rng.randrange(size)
        buf[i], item = item, buf[i]
        yield item
    rng.shuffle(buf)
    yield from buf


def _iterable_base():
    try:
        from torch.utils.data import IterableDataset

        return IterableDataset
    except ImportError:  # pragma: no cover
        return object


class ShardDataset(_iterable_base()):
    """A torch ``IterableDataset`` over a split of a sharded dataset (see module docstring).

    Call ``set_epoch(e)`` before each epoch to change the shuffle; ``num_samples`` is the split's total
    sample count (across all consumers).
    """

    def __init__(self, uri: str, split: str = "train", shuffle_buffer: int = 0, resample: bool = False,
                 seed: int = 0, decode: bool = True):
        super().__init__()
        self.uri = str(uri)
        self.split = split
        self.shuffle_buffer = shuffle_buffer
        self.resample = resample
        self.seed = seed
        self.decode = decode
        self.epoch = 0
        self.manifest = read_manifest(self.uri)
        shard_uris(self.uri, split, self.manifest)  # fail fast on an unknown split
        self.num_samples = sum(s["num_samples"] for s in self.manifest["shards"]
                               if split == "all" or s.get("split", s["name"].split("-")[0]) == split)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter_samples(self.uri, self.split, shuffle_buffer=self.shuffle_buffer, resample=self.resample,
                            seed=self.seed, epoch=self.epoch, decode=self.decode)

    def __len__(self) -> int:
        if self.resample:
            raise TypeError("a resampled ShardDataset is infinite")
        return self.num_samples
