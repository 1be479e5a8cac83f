"""Joining data shards with expert labels by key."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from tests.experts.conftest import standard_samples, write_shards
from vlm.experts import ExpertsConfig
from vlm.experts.loader import ExpertLabels, MissingLabelError, iter_labelled, join_experts
from vlm.experts.runner import run_experts
from vlm.experts.shards import read_label_shard


@pytest.fixture
def labelled(dataset: Path, tmp_path: Path) -> Path:
    labels = tmp_path / "labels"
    run_experts(str(dataset), str(labels), ["edges", "segmentation"], ExpertsConfig(batch_size=4))
    return labels


def test_iter_labelled_yields_reader_samples_plus_expert_maps(dataset: Path, labelled: Path):
    samples = list(iter_labelled(str(dataset), str(labelled), ["edges", "segmentation"]))
    assert [s["__key__"] for s in samples] == [k for k, _ in standard_samples()]
    edges = read_label_shard(str(labelled / "edges" / "train-000000.tar"), "edges")
    for s in samples:
        assert s["image"].mode == "RGB" and s["meta"]["caption"] == f"sample {s['__key__']}"
        assert set(s["experts"]) == {"edges", "segmentation"}
        for arr in s["experts"].values():
            assert arr.dtype == np.uint8 and arr.shape == (s["image"].height, s["image"].width)
        if s["__key__"] in edges:
            assert np.array_equal(s["experts"]["edges"], edges[s["__key__"]])
    only = list(iter_labelled(str(dataset), str(labelled), ["segmentation"]))
    assert all(set(s["experts"]) == {"segmentation"} for s in only)


def test_ranks_split_shards_without_duplicates(dataset: Path, labelled: Path):
    parts = [[s["__key__"] for s in iter_labelled(str(dataset), str(labelled), ["edges"], rank=r, world_size=2)]
             for r in range(2)]
    assert not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == sorted(k for k, _ in standard_samples())


def test_labels_are_resized_to_the_image(dataset: Path, tmp_path: Path):
    labels = tmp_path / "small"
    run_experts(str(dataset), str(labels), ["segmentation"], ExpertsConfig(resolution=32))
    s = next(iter_labelled(str(dataset), str(labels), ["segmentation"]))
    assert s["experts"]["segmentation"].shape == (s["image"].height, s["image"].width)
    raw = next(iter_labelled(str(dataset), str(labels), ["segmentation"], resize=False))
    assert max(raw["experts"]["segmentation"].shape) == 32


def test_join_experts_on_a_shuffled_stream(dataset: Path, labelled: Path):
    base = list(iter_labelled(str(dataset), str(labelled), ["edges"]))
    stream = [{k: v for k, v in s.items() if k not in ("experts", "__shard__")} for s in base]
    random.Random(0).shuffle(stream)
    joined = list(join_experts(stream, str(labelled), ["edges", "segmentation"]))  # key index, no shard names
    by_key = {s["__key__"]: s for s in base}
    assert [s["__key__"] for s in joined] == [s["__key__"] for s in stream]
    for s in joined:
        assert np.array_equal(s["experts"]["edges"], by_key[s["__key__"]]["experts"]["edges"])
    with_url = [{**s, "__url__": f"/somewhere/{b['__shard__']}"} for s, b in zip(stream, [by_key[s["__key__"]] for s in stream])]
    assert len(list(join_experts(with_url, str(labelled), ["edges"]))) == len(stream)


def test_missing_labels_skip_keep_or_error(tmp_path: Path):
    samples = standard_samples(n_noise=2)
    samples.insert(1, ("deadbeefdeadbeef", b"not an image"))
    data = tmp_path / "data"
    write_shards(data, samples, per_shard=5)
    labels = tmp_path / "labels"
    run_experts(str(data), str(labels), ["edges"], ExpertsConfig())
    keys = [s["__key__"] for s in iter_labelled(str(data), str(labels), ["edges"])]
    assert "deadbeefdeadbeef" not in keys and len(keys) == 5
    stream = [{"__key__": "0000000000000000", "image": None, "meta": {}}]
    assert list(join_experts(stream, str(labels), ["edges"], on_missing="skip")) == []
    kept = list(join_experts(stream, str(labels), ["edges"], on_missing="keep"))
    assert kept[0]["experts"] == {}
    with pytest.raises(MissingLabelError):
        list(join_experts(stream, str(labels), ["edges"], on_missing="error"))
    with pytest.raises(ValueError, match="no labels for \\['depth'\\]"):
        ExpertLabels(str(labels), ["depth"])
    with pytest.raises(FileNotFoundError, match="labels.json"):
        list(iter_labelled(str(data), str(tmp_path / "none"), ["edges"]))


def test_interop_with_the_data_stage_writer_and_reader(tmp_path: Path):
    """Real shards from vlm.data.shard, labels joined onto vlm.data.reader's (shuffled) stream."""
    shard_mod = pytest.importorskip("vlm.data.shard")
    reader = pytest.importorskip("vlm.data.reader")
    from vlm.data.config import ShardConfig

    data = tmp_path / "data"
    manifest = shard_mod.shard_dataset("builtin:shapes", str(data),
                                       ShardConfig(builtin_size=24, samples_per_shard=8, max_side=64))
    labels = tmp_path / "labels"
    s = run_experts(str(data), str(labels), ["edges", "segmentation"], ExpertsConfig(resolution=64))
    total = sum(sh["num_samples"] for sh in manifest["shards"])
    assert s["images"] == total and s["labelled"]["edges"] == total
    stream = list(reader.iter_samples(str(data), split="train", shuffle_buffer=4, seed=1))
    joined = list(join_experts(stream, str(labels), ["edges", "segmentation"]))
    assert [j["__key__"] for j in joined] == [x["__key__"] for x in stream] and joined
    for j in joined:
        assert j["experts"]["edges"].shape == (j["image"].height, j["image"].width)
