"""Data in S3, labels to S3, checkpoints from S3 (real SeaweedFS via the s3_prefix fixture)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tests.experts.hf_tiny import tiny_dpt
from vlm import storage
from vlm.experts import ExpertsConfig
from vlm.data import format as fmt
from vlm.experts.runner import run_experts, shard_groups
from vlm.experts.shards import read_label_shard


def test_s3_in_and_out_with_resume_and_loader(dataset: Path, tmp_path: Path, s3_prefix: str, monkeypatch):
    monkeypatch.setenv("VLM_CACHE_DIR", str(tmp_path / "cache"))
    data = storage.join(s3_prefix, "data")
    labels = storage.join(s3_prefix, "labels")
    storage.upload_tree(dataset, data)
    ckpt = storage.join(s3_prefix, "models", "dpt")
    storage.upload_tree(tiny_dpt(tmp_path / "dpt"), ckpt)
    groups = shard_groups(data, 2)
    assert len(groups) == 2 and sum(groups, []) == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]

    cfg = ExpertsConfig(sources={"depth": ckpt}, batch_size=4)
    s = run_experts(data, labels, ["edges", "depth"], cfg, shards=["train-000000.tar"])
    assert s.labelled == {"edges": 3, "depth": 3}
    s = run_experts(data, labels, ["edges", "depth", "detection"], cfg)
    assert s.expert_shards_skipped == 2 and s.labelled == {"edges": 5, "depth": 5, "detection": 8}
    det = json.loads(storage.read_text(storage.join(labels, "detection", "train-000000.done.json")))
    assert det["used"] == ["depth"]  # depth for shard 0 came from S3 labels written by the first run

    names = storage.list_uris(labels)
    for e in ("edges", "depth", "detection"):
        for i in range(3):
            assert storage.join(labels, e, f"train-00000{i}.tar") in names
    index = json.loads(storage.read_text(storage.join(labels, "labels.json")))
    assert index["experts"]["depth"]["complete"] and index["experts"]["depth"]["source"] == ckpt

    edges0 = read_label_shard(storage.join(labels, "edges", "train-000000.tar"), "edges")
    assert len(edges0) == 3 and all(a.dtype == np.uint8 for a in edges0.values())
    # training reads S3 data through the format's reader and attaches the S3 labels by aligned shard and by key
    from vlm.experts.loader import ExpertLabels
    from vlm.train.labels import ExpertAttacher

    samples = list(fmt.iter_samples(data, "train", rank=0, world_size=1, worker=0, num_workers=1))
    assert len(samples) == 8
    attacher = ExpertAttacher(labels, ["edges", "depth"], data)
    assert attacher.by_shard
    by_shard = [attacher.attach(s, s["__shard__"])["experts"] for s in samples]
    by_key = ExpertLabels(labels, ["depth"])
    for s, maps in zip(samples, by_shard, strict=True):
        assert maps["depth"].shape == (s["image"].height, s["image"].width)
        assert np.array_equal(by_key.get(s["__key__"])["depth"], maps["depth"])
