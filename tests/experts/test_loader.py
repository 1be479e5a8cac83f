"""Looking expert labels up by key, by aligned shard or through the key index."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from tests.experts.conftest import standard_samples
from vlm.data import format as fmt
from vlm.experts import ExpertsConfig
from vlm.experts.loader import ExpertLabels
from vlm.experts.runner import run_experts
from vlm.experts.shards import read_label_shard


@pytest.fixture
def labelled(dataset: Path, tmp_path: Path) -> Path:
    labels = tmp_path / "labels"
    run_experts(str(dataset), str(labels), ["edges", "segmentation"], ExpertsConfig(batch_size=4))
    return labels


def test_lookup_by_shard_and_by_key_agree(dataset: Path, labelled: Path):
    keys = {k for k, _ in standard_samples()}
    store = ExpertLabels(str(labelled), ["edges", "segmentation"])
    samples = [s for s in fmt.iter_shard(str(dataset / "train-000001.tar"))]
    edges = read_label_shard(str(labelled / "edges" / "train-000001.tar"), "edges")
    assert {s["__key__"] for s in samples} == set(edges) and set(edges) <= keys
    shuffled = [s["__key__"] for s in samples]
    random.Random(0).shuffle(shuffled)
    for key in shuffled:
        by_shard = store.get(key, "train-000001.tar")
        by_key = ExpertLabels(str(labelled), ["edges", "segmentation"]).get(key)  # builds the key index
        assert np.array_equal(by_shard["edges"], edges[key]) and np.array_equal(by_key["edges"], edges[key])
        assert by_shard["segmentation"].dtype == np.uint8 and by_key["segmentation"].shape == edges[key].shape
    assert store.get("0000000000000000") == {"edges": None, "segmentation": None}  # unknown key: no labels


def test_missing_labels_and_unknown_experts(tmp_path: Path):
    from tests.experts.conftest import write_shards

    samples = standard_samples(n_noise=2)
    samples.insert(1, ("deadbeefdeadbeef", b"not an image"))
    data = tmp_path / "data"
    write_shards(data, samples, per_shard=5)
    labels = tmp_path / "labels"
    run_experts(str(data), str(labels), ["edges"], ExpertsConfig())
    store = ExpertLabels(str(labels), ["edges"])
    assert store.get("deadbeefdeadbeef") == {"edges": None}  # the undecodable image has no label
    assert all(store.get(k)["edges"] is not None for k, _ in samples if k != "deadbeefdeadbeef")
    with pytest.raises(ValueError, match="no labels for \\['depth'\\]"):
        ExpertLabels(str(labels), ["depth"])
    with pytest.raises(FileNotFoundError, match="labels.json"):
        ExpertLabels(str(tmp_path / "none"), ["edges"])


def test_interop_with_the_data_stage_writer_and_reader(tmp_path: Path):
    """Real shards from vlm.data.shard, labels looked up for the format reader's (shuffled) stream."""
    from vlm.data.config import ShardConfig
    from vlm.data.shard import shard_dataset

    data = tmp_path / "data"
    manifest = shard_dataset("builtin:shapes", str(data), ShardConfig(builtin_size=24, samples_per_shard=8, max_side=64))
    labels = tmp_path / "labels"
    s = run_experts(str(data), str(labels), ["edges", "segmentation"], ExpertsConfig(resolution=64))
    total = sum(sh.num_samples for sh in manifest.shards)
    assert s.images == total and s.labelled["edges"] == total
    stream = list(fmt.iter_samples(str(data), split="train", shuffle_buffer=4, seed=1, rank=0, world_size=1,
                                   worker=0, num_workers=1))
    store = ExpertLabels(str(labels), ["edges", "segmentation"])
    assert stream
    for sample in stream:
        maps = store.get(sample["__key__"], sample["__shard__"].rsplit("/", 1)[-1])
        assert maps["edges"].shape == (sample["image"].height, sample["image"].width)
