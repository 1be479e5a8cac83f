"""Checkpoints (local and S3), automatic resume and its equivalence with an uninterrupted run (1 process)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.train.conftest import tiny_config
from vlm import storage
from vlm.config import parse_config
from vlm.train import train


def _cfg(tmp: Path, **train_kw):
    return parse_config(tiny_config(tmp, **train_kw))


def test_resume_matches_uninterrupted_run(shards, tmp_path):
    full = train(_cfg(tmp_path / "a", steps=6, checkpoint_every=3, keep_checkpoints=2), "pretrain", shards,
                 str(tmp_path / "a" / "model"))
    ckpt_a = Path(full.checkpoint_uri)
    assert (ckpt_a / "latest").read_text() == "step-000006"
    assert sorted(p.name for p in ckpt_a.glob("step-*")) == ["step-000003", "step-000006"]
    state = json.loads((ckpt_a / "step-000003" / "state.json").read_text())
    assert state["step"] == 3 and state["world_size"] == 1

    # a second run whose checkpoint folder only holds step 3 (as if it died after step 4 or 5)
    ckpt_b = tmp_path / "b" / "checkpoints" / "pretrain"
    shutil.copytree(ckpt_a / "step-000003", ckpt_b / "step-000003")
    (ckpt_b / "latest").write_text("step-000003")
    resumed = train(_cfg(tmp_path / "b", steps=6, checkpoint_every=3, keep_checkpoints=2), "pretrain", shards,
                    str(tmp_path / "b" / "model"))
    assert resumed.resumed_from_step == 3 and resumed.steps == 6
    assert resumed.final_loss == pytest.approx(full.final_loss, abs=1e-6)
    wa = load_file(str(ckpt_a / "step-000006" / "trainable.safetensors"))
    wb = load_file(str(ckpt_b / "step-000006" / "trainable.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-6, rtol=0)
    w0 = load_file(str(ckpt_a / "step-000003" / "trainable.safetensors"))
    assert any(not torch.equal(w0[k], wa[k]) for k in wa)  # training did move the weights
    # the artefact holds the final trainable weights and loads back
    assert (Path(full.model_uri) / "vlm_config.json").exists()
    assert full.eval_after["eval/caption_loss"] == pytest.approx(resumed.eval_after["eval/caption_loss"], abs=1e-5)

    again = train(_cfg(tmp_path / "b", steps=6), "pretrain", shards, str(tmp_path / "b" / "model"))
    assert again.resumed_from_step == 6 and again.steps == 6  # finished runs are not retrained


def test_checkpoints_and_model_on_s3(shards, tmp_path, s3_prefix):
    cfg = _cfg(tmp_path, steps=4, checkpoint_every=1, keep_checkpoints=2, eval_samples=0,
               checkpoint_dir=f"{s3_prefix}/ckpt", grad_accum=2)
    out = train(cfg, "pretrain", shards, f"{s3_prefix}/model")
    files = storage.list_uris(f"{s3_prefix}/ckpt")
    tags = sorted({u.split("/ckpt/")[1].split("/")[0] for u in files} - {"latest"})
    assert tags == ["step-000003", "step-000004"]  # keep the newest 2
    assert storage.read_text(f"{s3_prefix}/ckpt/latest") == "step-000004"
    assert storage.exists(f"{s3_prefix}/ckpt/step-000004/trainable.safetensors")
    assert storage.exists(f"{s3_prefix}/model/vlm_config.json")
    more = train(_cfg(tmp_path, steps=6, checkpoint_every=1, keep_checkpoints=2, eval_samples=0,
                      checkpoint_dir=f"{s3_prefix}/ckpt", grad_accum=2), "pretrain", shards, f"{s3_prefix}/model")
    assert more.resumed_from_step == 4 and more.steps == 6 and out.steps == 4
    assert storage.read_text(f"{s3_prefix}/ckpt/latest") == "step-000006"


def test_a_dangling_latest_pointer_is_ignored(shards, tmp_path):
    ckpt = tmp_path / "run" / "ckpt"
    ckpt.mkdir(parents=True)
    (ckpt / "latest").write_text("step-000099")  # e.g. its folder was deleted by hand
    out = train(_cfg(tmp_path, steps=2, eval_samples=0, checkpoint_dir=str(ckpt)), "pretrain", shards,
                str(tmp_path / "model"))
    assert out.resumed_from_step == 0 and (ckpt / "latest").read_text() == "step-000002"


def test_finetune_starts_from_the_stage_one_artefact(shards, tmp_path):
    ask = ["Describe this image."]  # the same request in both stages, so their held-out losses are comparable
    raw = tiny_config(tmp_path, steps=2, eval_samples=4, tasks=["caption"], caption_instructions=ask)
    raw["align"] = {"train_on_prompt": False,
                    "finetune": {"strategy": "none", "precision": "fp32", "steps": 1, "batch_size": 2, "lr": 1e-9,
                                 "eval_samples": 4, "tasks": ["caption"], "eval_split": "val",
                                 "caption_instructions": ask}}
    cfg = parse_config(raw)
    one = train(cfg, "pretrain", shards, str(tmp_path / "stage1"))
    two = train(cfg, "finetune", shards, str(tmp_path / "stage2"), init_from=one.model_uri)
    assert two.stage == "finetune" and two.checkpoint_uri == str(tmp_path / "checkpoints" / "finetune")
    # it starts where stage one ended (same weights -> same held-out caption loss), not from scratch
    assert two.eval_before["eval/caption_loss"] == pytest.approx(one.eval_after["eval/caption_loss"], abs=1e-5)
