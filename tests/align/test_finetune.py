"""Stage-two fine-tuning through the training engine, the CLI, and the ITC scorer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vlm.align import finetune, generate_and_curate
from vlm.align.config import DESCRIBE_INSTRUCTION, DETAILED_INSTRUCTIONS, AlignConfig
from vlm.align.tune import stage_two_config
from vlm.config import parse_config


def pipeline_cfg(tmp_path: Path, **finetune_kw):
    ft = dict(strategy="none", precision="fp32", steps=2, batch_size=2, warmup_steps=0, eval_samples=0,
              checkpoint_every=100, shuffle_buffer=0, **finetune_kw)
    return parse_config({"name": "align-test", "root": str(tmp_path / "runs"),
                         "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}, "align": {"finetune": ft}})


def with_replay(cfg, share: float):
    return cfg.model_copy(update={"align": cfg.align.model_copy(update={"replay_vqa": share})})


def test_stage_two_config_uses_caption_task_and_description_requests(tmp_path):
    cfg = stage_two_config(pipeline_cfg(tmp_path, tasks=["caption", "vqa"]))
    assert cfg.align.finetune.tasks == ["caption"]  # MiniGPT-4: descriptions only
    # the four requests, and the prompt the curated descriptions answer
    assert cfg.align.finetune.caption_instructions == [*DETAILED_INSTRUCTIONS, DESCRIBE_INSTRUCTION]
    base = pipeline_cfg(tmp_path)
    paper = base.model_copy(update={"align": base.align.model_copy(update={"train_on_prompt": False})})
    assert stage_two_config(paper).align.finetune.caption_instructions == DETAILED_INSTRUCTIONS
    replay = with_replay(pipeline_cfg(tmp_path, tasks=["vqa"]), 0.25)
    # descriptions, and a quarter of the time the image's own QA pairs
    assert stage_two_config(replay).align.finetune.tasks == ["caption", "vqa"]
    assert stage_two_config(replay).align.finetune.task_weights == {"caption": 0.75, "vqa": 0.25}
    own = stage_two_config(pipeline_cfg(tmp_path, caption_instructions=["Tell me everything."]))
    assert own.align.finetune.caption_instructions == ["Tell me everything.", DESCRIBE_INSTRUCTION]
    listed = stage_two_config(pipeline_cfg(tmp_path, caption_instructions=[DESCRIBE_INSTRUCTION]))
    assert listed.align.finetune.caption_instructions == [DESCRIBE_INSTRUCTION]  # not twice


def test_every_finetune_entry_point_gets_the_stage_two_recipe(tmp_path):
    """The pipeline runs stage two through `vlm train --stage finetune` (torchrun or a PyTorchJob), not through
    vlm.align.finetune: the engine's stage config must be the stage-two recipe too."""
    from vlm.train.job import stage_config

    cfg = pipeline_cfg(tmp_path, tasks=["caption", "vqa"])
    ft = stage_config(cfg, "finetune")
    assert ft.tasks == ["caption"]
    assert ft.caption_instructions == [*DETAILED_INSTRUCTIONS, DESCRIBE_INSTRUCTION]
    assert stage_config(stage_two_config(cfg), "finetune") == ft  # applying it twice changes nothing
    assert stage_config(cfg, "pretrain").caption_instructions == cfg.train.caption_instructions


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
    assert summary.model_uri == out and summary.stage == "finetune"
    assert json.loads(json.dumps(summary.to_dict(), default=str))["model_uri"] == out  # JSON-able


def test_curated_samples_keep_their_qa_for_replay(stage_one, shards, tmp_path):
    from vlm.train.data import ExampleBuilder

    curated = tmp_path / "curated"
    generate_and_curate(stage_one, shards, str(curated), AlignConfig(num_images=6, min_answer_tokens=30, min_words=3))
    listing = {r["key"]: r for r in json.loads((curated / "curated.json").read_text()) if r["kept"]}
    assert listing
    from vlm.data import format as fmt

    metas = [s["meta"] for s in fmt.iter_samples(str(curated), "train", rank=0, world_size=1, worker=0, num_workers=1)]
    assert len(metas) == len(listing)
    for meta in metas:
        assert meta["caption"] in {r["final"] for r in listing.values()}
        [qa] = meta["qa"]  # the source sample's own pair: its colour is the one of the source caption
        assert qa["question"] == "what colour is it?" and meta["original_caption"] == f"a {qa['answers'][0]} shape"
    # stage two's example builder draws both tasks from curated samples
    ft = stage_two_config(with_replay(pipeline_cfg(tmp_path), 0.25)).align.finetune
    builder = ExampleBuilder(ft.tasks, ft.caption_instructions, task_weights=ft.task_weights)
    tasks = [builder.build({"meta": metas[0], "image": None, "__key__": "k"}, epoch=e)["task"] for e in range(400)]
    assert 0.15 < tasks.count("vqa") / len(tasks) < 0.35  # replay_vqa = 0.25


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
