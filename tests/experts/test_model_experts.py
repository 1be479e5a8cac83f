"""Model-backed experts (depth, normals from depth, HF segmentation) with tiny random checkpoints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.experts.hf_tiny import tiny_depth_anything, tiny_dpt, tiny_segformer
from vlm.experts import ExpertError, ExpertsConfig
from vlm.experts.runner import run_experts
from vlm.data import format as fmt
from vlm.experts.shards import read_label_shard


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    return {"depth_anything": tiny_depth_anything(root / "da"), "dpt": tiny_dpt(root / "dpt"),
            "segformer": tiny_segformer(root / "seg")}


def test_depth_normals_detection_and_hf_segmentation(dataset: Path, tmp_path: Path, checkpoints):
    cfg = ExpertsConfig(batch_size=4, sources={"depth": str(checkpoints["depth_anything"]),
                                                "segmentation": str(checkpoints["segformer"])})
    labels = tmp_path / "labels"
    s = run_experts(str(dataset), str(labels), ["normals", "detection", "segmentation", "depth"], cfg)
    assert s.experts[0] == "depth" and s.experts.index("normals") > 0 and s.experts.index("detection") > 0
    assert s.labelled == {"depth": 8, "normals": 8, "detection": 8, "segmentation": 8}
    for shard in sorted(dataset.glob("*.tar")):
        depth = read_label_shard(str(labels / "depth" / shard.name), "depth")
        normals = read_label_shard(str(labels / "normals" / shard.name), "normals")
        seg = read_label_shard(str(labels / "segmentation" / shard.name), "segmentation", with_meta=True)
        det = read_label_shard(str(labels / "detection" / shard.name), "detection", with_meta=True)
        for key in fmt.shard_keys(str(shard)):
            d = depth[key]
            assert d.dtype == np.uint8 and d.ndim == 2 and d.min() == 0 and d.max() == 255  # per-image min-max
            assert normals[key].shape == (*d.shape, 3)
            from vlm.experts.zoo.normals import normals_from_depth

            assert np.array_equal(normals[key], normals_from_depth(d))  # derived from the stored depth
            arr, meta = seg[key]
            assert arr.shape == d.shape and arr.max() < 5
            assert set(meta["classes"]) == {str(c) for c in np.unique(arr)}
            assert all(v.startswith("class") for v in meta["classes"].values())
            assert det[key][1]["ordered_by"] == "depth"
    marker = json.loads((labels / "detection" / "train-000000.done.json").read_text())
    assert marker["used"] == ["depth"]
    index = json.loads((labels / "labels.json").read_text())
    assert index["experts"]["depth"]["source"] == str(checkpoints["depth_anything"])
    assert index["experts"]["segmentation"]["backend"] == "hf"
    assert index["experts"]["normals"]["requires"] == ["depth"]


def test_normals_later_from_depth_on_disk_and_dpt(dataset: Path, tmp_path: Path, checkpoints):
    labels = tmp_path / "labels"
    cfg = ExpertsConfig(sources={"depth": str(checkpoints["dpt"])})
    run_experts(str(dataset), str(labels), ["depth"], cfg)
    s = run_experts(str(dataset), str(labels), ["normals"], cfg)
    assert s.labelled == {"normals": 8}
    d = read_label_shard(str(labels / "depth" / "train-000001.tar"), "depth")
    n = read_label_shard(str(labels / "normals" / "train-000001.tar"), "normals")
    from vlm.experts.zoo.normals import normals_from_depth

    assert all(np.array_equal(n[k], normals_from_depth(d[k])) for k in d)


def test_bad_sources_are_clear_errors(dataset: Path, tmp_path: Path, checkpoints):
    with pytest.raises(ExpertError, match="not found"):
        run_experts(str(dataset), str(tmp_path / "l"), ["depth"], ExpertsConfig(sources={"depth": str(tmp_path / "nope")}))
    no_proc = tmp_path / "noproc"
    shutil.copytree(checkpoints["dpt"], no_proc)
    (no_proc / "preprocessor_config.json").unlink()
    with pytest.raises(ExpertError, match="preprocessor_config.json"):
        run_experts(str(dataset), str(tmp_path / "l"), ["depth"], ExpertsConfig(sources={"depth": str(no_proc)}))


def test_training_reads_normals_as_three_hxw_maps(dataset: Path, tmp_path: Path, checkpoints):
    from vlm.train.labels import ExpertAttacher

    labels = tmp_path / "labels"
    run_experts(str(dataset), str(labels), ["depth", "normals"], ExpertsConfig(sources={"depth": str(checkpoints["dpt"])}))
    attacher = ExpertAttacher(str(labels), ["depth", "normals_x", "normals_y", "normals_z"], str(dataset))
    sample = next(fmt.iter_samples(str(dataset), "train", rank=0, world_size=1, worker=0, num_workers=1))
    maps = attacher.attach(sample, sample["__shard__"])["experts"]
    assert set(maps) == {"depth", "normals_x", "normals_y", "normals_z"}
    assert all(a.ndim == 2 and a.dtype == np.uint8 for a in maps.values())
    name = sample["__shard__"].rsplit("/", 1)[-1]
    normals = read_label_shard(str(labels / "normals" / name), "normals")[sample["__key__"]]
    assert normals.shape[2] == 3 and np.array_equal(normals[..., 2], maps["normals_z"])
