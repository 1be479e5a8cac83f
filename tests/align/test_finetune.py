"""Stage-two fine-tuning through the training engine, the CLI, and the ITC scorer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vlm.align import finetune, generate_and_curate
from vlm.align.config import DETAILED_INSTRUCTIONS, AlignConfig
from vlm.align.tune import stage_two_config
from vlm.config import parse_config


def pipeline_cfg(tmp_path: Path, **finetune_kw):
    ft = dict(strategy="none", precision="fp32", steps=2, batch_size=2, warmup_steps=0, eval_samples=0,
              checkpoint_every=100, shuffle_buffer=0, **finetune_kw)
    return parse_config({"name": "align-test", "root": str(tmp_path / "runs"),
                         "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}, "align": {"finetune": ft}})


def test_stage_two_config_uses_caption_task_and_description_requests(tmp_path):
    cfg = stage_two_config(pipeline_cfg(tmp_path, tasks=["caption", "vqa"]))
    assert cfg.align.finetune.tasks == ["caption"]
    assert cfg.align.finetune.caption_instructions == DETAILED_INSTRUCTIONS
    own = stage_two_config(pipeline_cfg(tmp_path, caption_instructions=["Tell me everything."]))
    assert own.align.finetune.caption_instructions == ["Tell me everything."]


def test_finetune_from_stage_one(stage_one, shards, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    curated = str(tmp_path / "curated")
    generate_and_curate(stage_one, shards, curated, AlignConfig(num_images=6, min_answer_tokens=30, min_words=3))
    out = str(tmp_path / "stage-two")
    summary = finetune(pipeline_cfg(tmp_path), curated, stage_one, out)
    assert Path(out, "vlm_config.json").exists() and Path(out, "adapter.safetensors").exists()
    from safetensors.torch import load_file

    before, after = load_file(Path(stage_one, "adapter.safetensors")), load_file(Path(out, "adapter.safetensors"))
    assert before.keys() == after.keys()
    assert any(not before[k].equal(after[k]) for k in before), "fine-tuning did not change the adapter"
    assert json.loads(json.dumps(summary, default=str))  # JSON-able


def test_finetune_errors_are_clear(stage_one, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a curated set"):
        finetune(pipeline_cfg(tmp_path), str(tmp_path / "none"), stage_one, str(tmp_path / "out"))
    with pytest.raises(FileNotFoundError, match="not a model artefact"):
        finetune(pipeline_cfg(tmp_path), str(tmp_path / "none"), str(tmp_path), str(tmp_path / "out"))


def test_cli_curate(stage_one, shards, tmp_path, monkeypatch):
    from vlm.cli import app

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "curated"
    result = CliRunner().invoke(app, ["align", "curate", "--model", stage_one, "--data", shards, "--output", str(out),
                                      "--num-images", "3"])
    assert result.exit_code == 0, result.output
    assert json.loads(out.joinpath("summary.json").read_text())["sampled"] == 3
    bad = CliRunner().invoke(app, ["align", "curate", "--model", stage_one, "--data", str(tmp_path / "nope"),
                                   "--output", str(out)])
    assert bad.exit_code == 1 and "no train-*.tar shards" in bad.output


def test_itc_scores_from_the_fusion_head():
    from PIL import Image

    from vlm.align.itc import itc_scores
    from vlm.models import ModelConfig, build_model

    model = build_model(ModelConfig(vision={"type": "tiny"}, llm={"type": "tiny"},
                                    fusion={"enabled": True, "hidden_size": 32, "embed_dim": 16},
                                    losses={"itc": 1.0}))
    images = [Image.new("RGB", (32, 32), c) for c in ("red", "blue")]
    scores = itc_scores(model, images, ["a red square.", "a blue circle with a long description " * 40])
    assert len(scores) == 2 and all(-1.0 <= s <= 1.0 for s in scores) and scores[0] != scores[1]
    with pytest.raises(ValueError, match="images for"):
        itc_scores(model, images, ["one"])
