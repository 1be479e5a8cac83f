"""The streaming reader: coverage across ranks x workers, shuffling, resampling, errors."""

from __future__ import annotations

import collections

import pytest
import torch
from PIL import Image

from vlm.data.config import ShardConfig
from vlm.data.reader import ShardDataset, iter_samples, partition, read_manifest, shard_uris
from vlm.data.shard import shard_dataset


def _all_keys(uri: str, split: str) -> list[str]:
    return [s["__key__"] for s in iter_samples(uri, split, rank=0, world_size=1, worker_id=0, num_workers=1)]


def _loader_keys(uri: str, split: str, monkeypatch, world: int = 2, workers: int = 2, **kw) -> list[list[str]]:
    """Keys seen by each rank through a real multi-worker DataLoader (ranks set via RANK/WORLD_SIZE)."""
    per_rank = []
    for rank in range(world):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", str(world))
        ds = ShardDataset(uri, split, **kw)
        loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=workers, collate_fn=list)
        per_rank.append([s["__key__"] for batch in loader for s in batch])
    return per_rank


def test_every_sample_exactly_once_across_2_ranks_x_2_workers(shapes_dataset, monkeypatch):
    uri, manifest = shapes_dataset
    expected = _all_keys(uri, "train")
    assert len(expected) == manifest["splits"]["train"]["num_samples"] > 0
    assert manifest["splits"]["train"]["num_shards"] >= 4  # more shards than consumers: whole-shard split
    per_rank = _loader_keys(uri, "train", monkeypatch, shuffle_buffer=5)
    seen = [k for keys in per_rank for k in keys]
    assert collections.Counter(seen) == collections.Counter(expected)
    assert all(keys for keys in per_rank)


def test_fewer_shards_than_consumers_splits_samples(tmp_path, monkeypatch):
    uri = str(tmp_path / "one")
    shard_dataset("builtin:shapes", uri, ShardConfig(builtin_size=23, samples_per_shard=100, builtin_image_size=32,
                                                     split={"train": 1, "val": 0, "test": 0}))
    assert len(shard_uris(uri, "train")) == 1
    expected = _all_keys(uri, "train")
    assert len(expected) == 23
    per_rank = _loader_keys(uri, "train", monkeypatch)
    seen = [k for keys in per_rank for k in keys]
    assert sorted(seen) == sorted(expected)
    assert min(len(k) for k in per_rank) >= 10  # the work really is split


def test_partition_is_disjoint_and_complete():
    for shards in range(1, 9):
        for consumers in range(1, 7):
            owners = collections.Counter()
            for c in range(consumers):
                picked, stride, offset = partition(shards, c, consumers)
                # 10 samples per shard, counted over the picked shards in order
                owners.update((s, j) for s in picked for j in range(10)
                              if ((picked.index(s) * 10 + j) % stride) == offset)
            assert len(owners) == shards * 10 and set(owners.values()) == {1}, (shards, consumers)


def test_samples_are_rgb_images_with_meta(shapes_dataset):
    uri, _ = shapes_dataset
    sample = next(iter(ShardDataset(uri, "val")))
    assert isinstance(sample["image"], Image.Image) and sample["image"].mode == "RGB"
    assert sample["image"].size == (sample["meta"]["width"], sample["meta"]["height"])
    assert sample["meta"]["caption"] == sample["meta"]["captions"][0]
    assert sample["meta"]["source"] == "shapes"


def test_shuffle_is_deterministic_and_changes_per_epoch(shapes_dataset):
    uri, _ = shapes_dataset
    plain = _all_keys(uri, "train")
    ds = ShardDataset(uri, "train", shuffle_buffer=16, seed=1)
    a, b = [s["__key__"] for s in ds], [s["__key__"] for s in ds]
    ds.set_epoch(1)
    c = [s["__key__"] for s in ds]
    assert a == b and sorted(a) == sorted(plain) and a != plain and c != a
    other_seed = [s["__key__"] for s in ShardDataset(uri, "train", shuffle_buffer=16, seed=2)]
    assert other_seed != a


def test_resample_is_infinite_and_reshuffles_each_pass(shapes_dataset):
    uri, _ = shapes_dataset
    kw = dict(split="train", shuffle_buffer=4, seed=3, world_size=2, worker_id=0, num_workers=1)
    epochs = {(r, e): [s["__key__"] for s in iter_samples(uri, rank=r, epoch=e, **kw)]
              for r in range(2) for e in range(3)}
    for e in range(3):  # every pass is a disjoint cover across ranks
        both = epochs[(0, e)] + epochs[(1, e)]
        assert sorted(both) == sorted(_all_keys(uri, "train"))
    it = iter_samples(uri, rank=1, resample=True, **kw)
    expected = epochs[(1, 0)] + epochs[(1, 1)] + epochs[(1, 2)]
    assert [next(it)["__key__"] for _ in range(len(expected))] == expected
    assert epochs[(1, 0)] != epochs[(1, 1)]
    with pytest.raises(TypeError):
        len(ShardDataset(uri, "train", resample=True))


def test_len_and_errors(shapes_dataset, tmp_path):
    uri, manifest = shapes_dataset
    assert len(ShardDataset(uri, "test")) == manifest["splits"]["test"]["num_samples"]
    assert read_manifest(uri + "/manifest.json")["num_samples"] == manifest["num_samples"]
    with pytest.raises(ValueError, match="available: test, train, val"):
        ShardDataset(uri, "dev")
    with pytest.raises(FileNotFoundError, match="no manifest"):
        read_manifest(str(tmp_path))
