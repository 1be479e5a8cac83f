"""Prismer expert labels in training: attached by key, validated at start, reach the model, resume exactly."""

from __future__ import annotations

import itertools
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.train.conftest import TINY_MODEL, tiny_config, write_shards
from vlm.config import parse_config
from vlm.experts.config import ExpertsConfig
from vlm.experts.runner import run_experts
from vlm.experts.shards import read_label_shard
from vlm.train import train
from vlm.train.data import ExampleBuilder, ExampleStream, SampleStream, eval_examples, list_shards
from vlm.train.labels import ExpertAttacher, ExpertLabelsError

EXPERTS_INPUT = {"stem_channels": 8, "grid": 2, "num_tokens": 4}


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> dict[str, str]:
    """24 train + 4 val shape images, their ``edges`` labels, and labels for the first train shard only."""
    root = tmp_path_factory.mktemp("labelled")
    write_shards(root / "data", "train", 24, 8, corrupt=1)
    write_shards(root / "data", "val", 4, 4, offset=1)
    cfg = ExpertsConfig(experts=["edges"], resolution=32, batch_size=8, device="cpu")
    full = run_experts(str(root / "data"), str(root / "labels"), ["edges"], cfg)
    assert full.complete == {"edges": True} and full.labelled["edges"] == 27  # the corrupt image fails
    run_experts(str(root / "data"), str(root / "partial"), ["edges"], cfg, shards=["train-000000.tar"])
    return {"data": str(root / "data"), "labels": str(root / "labels"), "partial": str(root / "partial")}


def _all_labels(labels_uri: str) -> dict[str, np.ndarray]:
    return {k: v for p in sorted(Path(labels_uri, "edges").glob("*.tar")) for k, v in read_label_shard(str(p), "edges").items()}


def _stream(data: str, labels: ExpertAttacher) -> ExampleStream:
    samples = SampleStream(list_shards(data, "train"), seed=0, shuffle_buffer=8)
    return ExampleStream(samples, ExampleBuilder(["caption", "vqa"], ["Describe."]), labels)


def _cfg(tmp: Path, experts: list[str], labels: str = "", **train_kw):
    raw = tiny_config(tmp, **train_kw)
    raw["model"] = {**TINY_MODEL, "experts": experts, "experts_input": EXPERTS_INPUT}
    if labels:
        raw["train"]["labels"] = labels
    return raw


def test_examples_carry_their_own_expert_maps_and_resume_by_position(labelled):
    truth = _all_labels(labelled["labels"])
    attacher = ExpertAttacher(labelled["labels"], ["edges"], labelled["data"])
    assert attacher.by_shard  # the very data the labels were computed from: aligned label shards
    full = list(itertools.islice(_stream(labelled["data"], attacher).examples(), 30))  # > one epoch (23 usable)
    for _, ex in full:
        assert ex["experts"].keys() == {"edges"} and ex["experts"]["edges"].dtype == np.uint8
        np.testing.assert_array_equal(ex["experts"]["edges"], truth[ex["key"]])
    assert sum(int(ex["experts"]["edges"].any()) for _, ex in full) >= 20  # real edge maps, not blanks
    assert attacher.missing == {}
    # skipping to a position (resume) gives the same examples with the same maps
    resumed = list(itertools.islice(_stream(labelled["data"], attacher).examples(skip=full[9][0]), 20))
    assert [(p, ex["key"]) for p, ex in resumed] == [(p, ex["key"]) for p, ex in full[10:30]]
    for (_, a), (_, b) in zip(resumed, full[10:30], strict=True):
        np.testing.assert_array_equal(a["experts"]["edges"], b["experts"]["edges"])
    evals = eval_examples(labelled["data"], "val", 4, ["caption"], "Describe.", labels=attacher)
    assert len(evals) == 4
    for ex in evals:
        np.testing.assert_array_equal(ex["experts"]["edges"], truth[ex["key"]])


def test_labels_are_found_by_key_for_a_copied_dataset(labelled, tmp_path):
    copy = tmp_path / "curated"
    shutil.copytree(labelled["data"], copy)  # e.g. a curated stage-two set that kept the keys
    assert ExpertAttacher(labelled["labels"], ["edges"], str(copy)).by_shard  # an identical copy is aligned
    from vlm.data import format as fmt

    manifest = fmt.read_manifest(str(copy))
    fmt.write_manifest(str(copy), manifest.model_copy(update={"name": "curated", "kind": "curated"}))
    attacher = ExpertAttacher(labelled["labels"], ["edges"], str(copy))
    assert not attacher.by_shard
    truth = _all_labels(labelled["labels"])
    maps = attacher.maps("train00013")
    np.testing.assert_array_equal(maps["edges"], truth["train00013"])
    assert attacher.maps("not-a-key") == {} and attacher.missing["edges"] == 1


def test_labels_and_data_on_s3(labelled, s3_prefix):
    from vlm import storage

    storage.copy_tree(labelled["labels"], f"{s3_prefix}/labels")
    storage.copy_tree(labelled["data"], f"{s3_prefix}/data")
    attacher = ExpertAttacher(f"{s3_prefix}/labels", ["edges"], f"{s3_prefix}/data")
    truth = _all_labels(labelled["labels"])
    got = list(itertools.islice(_stream(f"{s3_prefix}/data", attacher).examples(), 10))
    assert len(got) == 10 and attacher.missing == {}
    for _, ex in got:
        np.testing.assert_array_equal(ex["experts"]["edges"], truth[ex["key"]])


def test_missing_labels_leave_the_expert_absent_and_are_counted(labelled, caplog):
    with caplog.at_level(logging.WARNING, logger="vlm.train.labels"):
        attacher = ExpertAttacher(labelled["partial"], ["edges"], labelled["data"])
    assert "incomplete (1/4 shards)" in caplog.text
    got = [ex for _, ex in itertools.islice(_stream(labelled["data"], attacher).examples(), 23)]
    with_map = {ex["key"] for ex in got if "edges" in ex["experts"]}
    assert with_map == {f"train{i:05d}" for i in range(1, 8)}  # only the first shard has labels (key 0 is corrupt)
    assert attacher.missing["edges"] == 23 - 7
    assert "without a 'edges' label" in caplog.text


def test_labels_lacking_a_model_expert_fail_at_start(labelled, tmp_path):
    from vlm.train.launch import main

    built = []
    cfg = parse_config(_cfg(tmp_path, ["edges", "depth"]))
    with pytest.raises(ExpertLabelsError, match=rf"needs expert 'depth' but the expert labels {labelled['labels']} "
                                                r"have no 'depth' labels \(they have \['edges'\]\)"):
        train(cfg, "pretrain", labelled["data"], str(tmp_path / "m"), labels_uri=labelled["labels"],
              model_factory=lambda c: built.append(c))
    assert not built  # before the model is built
    with pytest.raises(ExpertLabelsError, match=r"model.experts is \['edges', 'depth'\] but no expert labels"):
        train(cfg, "pretrain", labelled["data"], str(tmp_path / "m"))
    with pytest.raises(ExpertLabelsError, match="no labels.json"):
        train(cfg, "pretrain", labelled["data"], str(tmp_path / "m"), labels_uri=str(tmp_path / "nowhere"))
    # the entrypoints: `python -m vlm.train --labels` and `vlm train --labels` (train.labels is the fallback)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(_cfg(tmp_path, ["edges", "depth"])))
    assert main(["--config", str(path), "--data", labelled["data"], "--labels", labelled["labels"]]) == 2
    from typer.testing import CliRunner

    from vlm.cli import app

    res = CliRunner().invoke(app, ["train", "--config", str(path), "--data", labelled["data"],
                                   "--labels", labelled["labels"]])
    assert res.exit_code == 2 and "'depth'" in res.output and labelled["labels"] in res.output
    path.write_text(yaml.safe_dump(_cfg(tmp_path, ["edges", "depth"], labels=labelled["partial"])))
    res = CliRunner().invoke(app, ["train", "--config", str(path), "--data", labelled["data"]])
    assert res.exit_code == 2 and labelled["partial"] in res.output


class Recorder:
    """A model factory that watches what reaches the experts input (maps, presence) and its stem's gradients."""

    def __init__(self):
        self.calls: list[tuple[bool, torch.Tensor, float]] = []
        self.grads: list[float] = []
        self.initial: dict[str, torch.Tensor] = {}

    def __call__(self, model_cfg):
        from vlm.models import build_model

        model = build_model(model_cfg)
        self.initial = {k: v.detach().clone() for k, v in model.trainable_state_dict().items()}
        model.experts_input.register_forward_pre_hook(
            lambda mod, args: self.calls.append((torch.is_grad_enabled(), args[1].clone(), float(args[0].float().sum()))))
        model.experts_input.stems["edges"].convs[0].weight.register_hook(
            lambda g: self.grads.append(float(g.abs().sum())))
        return model


def test_training_feeds_the_expert_maps_and_resumes_exactly(labelled, tmp_path):
    kw = {"steps": 4, "checkpoint_every": 2, "keep_checkpoints": 2, "eval_samples": 4, "batch_size": 4}
    rec = Recorder()
    full = train(parse_config(_cfg(tmp_path / "a", ["edges"], **kw)), "pretrain", labelled["data"],
                 str(tmp_path / "a" / "model"), labels_uri=labelled["labels"], model_factory=rec)
    assert full.steps == 4 and full.labels_uri == labelled["labels"] and full.missing_labels == {"edges": 0}
    train_calls = [c for c in rec.calls if c[0]]
    eval_calls = [c for c in rec.calls if not c[0]]
    assert len(train_calls) == 4 and len(eval_calls) >= 2  # eval before + after
    for _, present, total in rec.calls:  # every example (train and eval) had its edge map, and maps are not blank
        assert present.all() and total > 0
    assert len(rec.grads) == 4 and all(g > 0 for g in rec.grads)  # the stem learns from the maps
    ckpt = Path(full.checkpoint_uri)
    final = load_file(str(ckpt / "step-000004" / "trainable.safetensors"))
    stems = [k for k in final if k.startswith("experts_input.stems.edges")]
    assert stems and any(not torch.equal(final[k], rec.initial[k]) for k in stems)

    # resume from step 2 (as if the run died at step 3): same data positions, same maps -> same weights
    ckpt_b = tmp_path / "b" / "checkpoints" / "pretrain"
    shutil.copytree(ckpt / "step-000002", ckpt_b / "step-000002")
    (ckpt_b / "latest").write_text("step-000002")
    rec_b = Recorder()
    resumed = train(parse_config(_cfg(tmp_path / "b", ["edges"], labels=labelled["labels"], **kw)), "pretrain",
                    labelled["data"], str(tmp_path / "b" / "model"), model_factory=rec_b)
    assert resumed.resumed_from_step == 2 and resumed.final_loss == pytest.approx(full.final_loss, abs=1e-6)
    again = load_file(str(ckpt_b / "step-000004" / "trainable.safetensors"))
    for k in final:
        torch.testing.assert_close(again[k], final[k], atol=1e-6, rtol=0)
    assert all(p.all() for g, p, _ in rec_b.calls if g)
