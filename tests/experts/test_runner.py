"""run_experts: alignment, labels.json, resumption, dependency order, failures, fan-out helpers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.experts.conftest import key_of, noise_image, standard_samples, write_shards
from vlm.experts import ExpertBrokenError, ExpertError, ExpertsConfig, Label, PerImageExpert, order, register
from vlm.experts import registry as reg
from vlm.experts.runner import ExpertsResult, run_experts, shard_groups, write_labels_index
from vlm.data import format as fmt
from vlm.experts.shards import read_label_shard

CFG = ExpertsConfig(batch_size=2)


def members(tar: Path) -> list[str]:
    return [f"{s['__key__']}.{ext}" for s in fmt.iter_shard(str(tar)) for ext in s if not ext.startswith("__")]


def data_keys(shard: Path) -> list[str]:
    return fmt.shard_keys(str(shard))


@pytest.fixture
def test_experts():
    """Register test-only experts and remove them afterwards."""

    class Flaky(PerImageExpert):
        name, backend = "flaky", "test"
        bad: set[str] = set()

        def predict(self, batch):
            if any(k in self.bad for k in batch.keys):
                raise RuntimeError("boom on " + ",".join(sorted(set(batch.keys) & self.bad)))
            return super().predict(batch)

        def predict_one(self, image, deps):
            return Label(np.full(image.shape[:2], 7, np.uint8))

    class Broken(PerImageExpert):
        name, backend = "broken", "test"

        def predict_one(self, image, deps):
            raise RuntimeError("weights are garbage")

    class WrongShape(PerImageExpert):
        name, backend = "wrongshape", "test"

        def predict_one(self, image, deps):
            return Label(np.zeros((3, 3), np.uint8))

    for cls in (Flaky, Broken, WrongShape):
        register(cls)
    yield Flaky
    for n in ("flaky", "broken", "wrongshape"):
        reg._REGISTRY.pop(n, None)
        reg._DEFAULT.pop(n, None)


def test_labels_align_one_to_one_and_index_is_written(dataset: Path, tmp_path: Path):
    labels = tmp_path / "labels"
    s = run_experts(str(dataset), str(labels), ["edges", "segmentation", "detection"], CFG)
    assert s.shards_computed == 3 and s.images == 8
    assert s.labelled == {"edges": 8, "segmentation": 8, "detection": 8} and s.failed["edges"] == 0
    for shard in sorted(dataset.glob("*.tar")):
        keys = data_keys(shard)
        for e in ("edges", "segmentation", "detection"):
            lab = labels / e / shard.name
            assert lab.exists() and (labels / e / shard.name.replace(".tar", ".done.json")).exists()
            pngs = [m for m in members(lab) if m.endswith(".png")]
            assert pngs == [f"{k}.{e}.png" for k in keys]  # same keys, same order as the data shard
        maps = read_label_shard(str(labels / "edges" / shard.name), "edges")
        for sample in fmt.iter_samples(str(dataset), "train", rank=0, world_size=1, worker=0, num_workers=1):
            if sample["__shard__"].endswith(shard.name):
                w, h = sample["image"].size
                assert maps[sample["__key__"]].shape == (h, w) and maps[sample["__key__"]].dtype == np.uint8
    seg = read_label_shard(str(labels / "segmentation" / "train-000000.tar"), "segmentation", with_meta=True)
    arr, meta = next(iter(seg.values()))
    assert set(np.unique(arr).astype(str)) == set(meta["instances"])
    index = json.loads((labels / "labels.json").read_text())
    assert index["data"]["shards"] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    assert index["data"]["manifest_sha256"] and index["data"]["dataset"] == "test"
    e = index["experts"]["edges"]
    assert e["complete"] and e["labelled"] == 8 and e["version"] == "1" and e["backend"] == "canny"
    assert e["resolution"] == 224 and e["options"]["low"] == 100 and e["source"] is None
    assert index["experts"]["segmentation"]["kind"] == "instance"


def test_the_result_is_typed_and_to_dict_is_the_json_summary(dataset: Path, tmp_path: Path):
    s = run_experts(str(dataset), str(tmp_path / "labels"), ["edges"], CFG)
    assert isinstance(s, ExpertsResult)
    summary = json.loads(json.dumps(s.to_dict()))
    assert ExpertsResult(**summary) == s
    assert summary["labels_uri"] == str(tmp_path / "labels") and summary["experts"] == ["edges"]
    assert summary["labelled"] == {"edges": 8} and summary["complete"] == {"edges": True}


def test_resolution_shrinks_labels(dataset: Path, tmp_path: Path):
    run_experts(str(dataset), str(tmp_path / "l"), ["edges"], ExpertsConfig(resolution=64))
    for arr in read_label_shard(str(tmp_path / "l" / "edges" / "train-000000.tar"), "edges").values():
        assert max(arr.shape) == 64


def test_resume_skips_finished_shards_and_redoes_missing_ones(dataset: Path, tmp_path: Path):
    labels = tmp_path / "labels"
    run_experts(str(dataset), str(labels), ["edges"], CFG, shards=["train-000001.tar"])
    index = json.loads((labels / "labels.json").read_text())
    assert index["experts"]["edges"]["shards_done"] == 1 and not index["experts"]["edges"]["complete"]
    first = (labels / "edges" / "train-000001.tar").stat().st_mtime_ns
    s = run_experts(str(dataset), str(labels), ["edges", "segmentation"], CFG)
    assert s.shards_computed == 3 and s.expert_shards_skipped == 1
    assert s.labelled["edges"] == 5 and s.labelled["segmentation"] == 8
    assert (labels / "edges" / "train-000001.tar").stat().st_mtime_ns == first  # never recomputed
    # an interrupted shard (tar written, no marker) is recomputed; finished ones are not
    (labels / "edges" / "train-000002.done.json").unlink()
    s = run_experts(str(dataset), str(labels), ["edges", "segmentation"], CFG)
    assert s.shards_computed == 1 and s.labelled == {"edges": 2, "segmentation": 0}
    assert json.loads((labels / "labels.json").read_text())["experts"]["edges"]["complete"]
    s = run_experts(str(dataset), str(labels), ["edges", "segmentation"], CFG)
    assert s.shards_computed == 0 and s.images == 0


def test_changed_settings_or_data_are_not_silently_mixed(dataset: Path, tmp_path: Path):
    labels = tmp_path / "labels"
    run_experts(str(dataset), str(labels), ["edges"], CFG)
    with pytest.raises(ExpertError, match="other settings"):
        run_experts(str(dataset), str(labels), ["edges"], ExpertsConfig(edges={"low": 10, "high": 50}))
    s = run_experts(str(dataset), str(labels), ["edges"], ExpertsConfig(edges={"low": 10, "high": 50}), overwrite=True)
    assert s.shards_computed == 3
    # re-shard different data into the same folder: sha256 differs from the markers'
    write_shards(dataset, [(key_of(a), a) for a in [noise_image(50 + i) for i in range(8)]], per_shard=3)
    with pytest.raises(ExpertError, match="changed"):
        run_experts(str(dataset), str(labels), ["edges"], ExpertsConfig(edges={"low": 10, "high": 50}))


def test_dependency_order_and_on_disk_dependencies(dataset: Path, tmp_path: Path):
    cfg = ExpertsConfig(sources={"depth": "/x"})
    assert order(["detection", "edges", "normals", "depth"], cfg) == ["depth", "detection", "edges", "normals"]
    assert order(["detection", "edges"], cfg) == ["detection", "edges"]
    with pytest.raises(ExpertError, match="normals.*needs 'depth'"):
        order(["normals"], cfg)
    assert order(["normals"], cfg, on_disk=["depth"]) == ["normals"]
    with pytest.raises(ExpertError, match="unknown expert 'nope'"):
        order(["nope"], cfg)
    with pytest.raises(ExpertError, match="needs model weights"):
        run_experts(str(dataset), str(tmp_path / "l"), ["depth"], ExpertsConfig())


def test_one_bad_image_is_recorded_and_the_run_goes_on(tmp_path: Path, test_experts):
    samples = standard_samples(n_noise=3)
    samples.insert(1, ("deadbeefdeadbeef", b"this is not a jpeg"))
    data = tmp_path / "data"
    write_shards(data, samples, per_shard=4)
    test_experts.bad = {samples[5][0]}
    labels = tmp_path / "labels"
    s = run_experts(str(data), str(labels), ["edges", "flaky"], ExpertsConfig(batch_size=3))
    assert s.images == 7
    assert s.labelled == {"edges": 6, "flaky": 5} and s.failed == {"edges": 1, "flaky": 2}
    index = json.loads((labels / "labels.json").read_text())
    fl = {(f["key"], f["expert"]): f["reason"] for f in index["experts"]["flaky"]["failures"]}
    assert "undecodable image" in fl[("deadbeefdeadbeef", "flaky")]
    assert "boom on" in fl[(samples[5][0], "flaky")]
    keys = [m.split(".")[0] for m in members(labels / "flaky" / "train-000001.tar")]
    assert samples[5][0] not in keys and samples[4][0] in keys  # the batch-mates of the bad image are kept


def test_a_broken_expert_stops_the_run_with_a_clear_message(dataset: Path, tmp_path: Path, test_experts):
    labels = tmp_path / "labels"
    with pytest.raises(ExpertBrokenError, match="'broken'.*weights are garbage"):
        run_experts(str(dataset), str(labels), ["edges", "broken"], CFG)
    assert not list((labels / "broken").glob("*.done.json")) if (labels / "broken").exists() else True
    with pytest.raises(ExpertBrokenError, match="'wrongshape'.*bad output: map shape"):
        run_experts(str(dataset), str(labels), ["wrongshape"], ExpertsConfig(broken_after=2))


def test_shard_groups_are_contiguous_and_balanced(tmp_path: Path):
    data = tmp_path / "data"
    names = write_shards(data, [(f"k{i:03d}", noise_image(i, (16, 16))) for i in range(20)], per_shard=2)
    for n in (1, 3, 4, 10, 50):
        groups = shard_groups(str(data), n)
        assert [s for g in groups for s in g] == names
        assert len(groups) == min(n, len(names))
        sizes = [len(g) for g in groups]
        assert max(sizes) - min(sizes) <= 1


def test_fan_out_over_groups_then_index(dataset: Path, tmp_path: Path):
    labels = tmp_path / "labels"
    for group in shard_groups(str(dataset), 2):
        run_experts(str(dataset), str(labels), ["edges"], CFG, shards=group)
    index = write_labels_index(str(dataset), str(labels))
    assert index["experts"]["edges"]["complete"] and index["experts"]["edges"]["labelled"] == 8
    with pytest.raises(ValueError, match="unknown shard"):
        run_experts(str(dataset), str(labels), ["edges"], CFG, shards=["train-000099.tar"])


def test_parallel_workers_match_serial(dataset: Path, tmp_path: Path):
    run_experts(str(dataset), str(tmp_path / "serial"), ["edges", "segmentation"], CFG)
    s = run_experts(str(dataset), str(tmp_path / "par"), ["edges", "segmentation"], CFG.model_copy(update={"workers": 2}))
    assert s.shards_computed == 3 and s.labelled["edges"] == 8
    for e in ("edges", "segmentation"):
        for shard in ("train-000000.tar", "train-000002.tar"):
            a = read_label_shard(str(tmp_path / "serial" / e / shard), e)
            b = read_label_shard(str(tmp_path / "par" / e / shard), e)
            assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
