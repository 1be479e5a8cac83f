"""The engine's structure: a resolved TrainJob in, a TrainResult out, a Trainer driven step by step, one launch()."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.train.conftest import tiny_config
from vlm.config import load_config, parse_config
from vlm.train.job import TrainJob, TrainResult, stage_config
from vlm.train.launch import LaunchError, launch


def test_a_job_resolves_every_uri_once(tmp_path):
    cfg = parse_config(tiny_config(tmp_path))
    job = TrainJob.from_config(cfg, "pretrain")
    root = tmp_path / "run"
    assert (job.data_uri, job.output_uri) == (str(root / "data"), str(root / "pretrain" / "model"))
    assert job.checkpoint_uri == str(root / "pretrain" / "checkpoints" / "pretrain")
    assert job.train == cfg.train and job.experiment == "train-test" and job.init_from == ""
    given = TrainJob.from_config(cfg, "finetune", "s3://b/data", "s3://b/run/ft/model", init_from="s3://b/m")
    assert (given.data_uri, given.init_from) == ("s3://b/data", "s3://b/m")
    assert given.checkpoint_uri == "s3://b/run/ft/checkpoints/finetune"
    assert given.train == stage_config(cfg, "finetune") and given.train.tasks == ["caption"]
    with pytest.raises(ValueError, match="unknown stage 'align'"):
        TrainJob.from_config(cfg, "align")


def test_the_result_is_the_summary_the_steps_return():
    result = TrainResult(stage="pretrain", strategy="none", world_size=2, steps=4, resumed_from_step=2,
                         final_loss=1.5, eval_before={"eval/vqa_loss": 3.0}, eval_after={"eval/vqa_loss": 2.0},
                         model_uri="m", checkpoint_uri="c", run_id="r", rejected_samples=1, rejected={"undecodable": 1},
                         labels_uri="", missing_labels={}, throughput={"samples_per_s": 8.0, "tokens_per_s": 90.0})
    out = result.to_dict()
    assert out["samples_per_s"] == 8.0 and out["tokens_per_s"] == 90.0 and "throughput" not in out
    assert out["resumed_from_step"] == 2 and out["eval_after"] == {"eval/vqa_loss": 2.0}
    assert json.loads(json.dumps(out)) == out
    assert TrainResult.from_dict(json.loads(json.dumps(out))) == result  # what launch() reads back


def test_a_trainer_steps_saves_and_resumes(shards, tmp_path, monkeypatch):
    """setup/resume/step/evaluate/save by hand: a second Trainer starts where the first one's checkpoint is."""
    from vlm.train import dist
    from vlm.train.batches import BatchDataset, loader
    from vlm.train.trainer import Trainer

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = parse_config(tiny_config(tmp_path, steps=4, eval_samples=4, checkpoint_every=100))
    job = TrainJob.from_config(cfg, "pretrain", shards, str(tmp_path / "model"))
    info = dist.init()
    try:
        first = Trainer(job, info)
        first.setup()
        assert first.resume() == 0
        before = first.evaluate()
        ds = BatchDataset(first.shards, job.train, info, first.strategy.model.collate, first.positions, None)
        batches = iter(loader(ds, 0))
        losses = [first.step(batches)[0] for _ in range(2)]
        assert first.global_step == 2 and all(loss > 0 for loss in losses)
        assert first.positions[0] > 0  # the data position moved with the batches
        assert first.evaluate()["eval/vqa_loss"] != before["eval/vqa_loss"]  # the adapter trained
        first.save()
        first.strategy.close()

        second = Trainer(job, info)
        second.setup()
        assert second.resume() == 2 and second.positions == first.positions
        result = second.fit()
        second.strategy.close()
    finally:
        dist.shutdown()
    assert isinstance(result, TrainResult)
    assert (result.steps, result.resumed_from_step) == (4, 2)
    assert (tmp_path / "model" / "vlm_config.json").exists()


def test_launch_isolated_runs_torchrun_and_returns_the_summary(shards, tmp_path, monkeypatch):
    """The pipeline step's path: even one process runs under torchrun; a config object travels as a file."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = parse_config(tiny_config(tmp_path, steps=2, eval_samples=0))
    summary_uri = tmp_path / "summary.json"
    out = launch(cfg, "pretrain", shards, str(tmp_path / "model"), isolate=True, summary_uri=str(summary_uri))
    assert isinstance(out, TrainResult) and out.to_dict() == json.loads(summary_uri.read_text())
    assert out.steps == 2 and out.world_size == 1 and out.model_uri == str(tmp_path / "model")
    assert set(out.throughput) == {"samples_per_s", "tokens_per_s"}
    with pytest.raises(LaunchError, match="pretrain failed \\(torchrun exit code 1\\)") as err:
        launch(cfg, "pretrain", str(tmp_path / "no-shards"), str(tmp_path / "m2"), isolate=True)
    assert err.value.returncode == 1


def test_a_cluster_launch_needs_a_config_the_pods_can_read(tmp_path):
    raw = tiny_config(tmp_path)
    raw["cluster"] = {"launcher": "pytorchjob"}
    with pytest.raises(ValueError, match="cluster.launcher=pytorchjob: .*pass config_uri"):
        launch(parse_config(raw), "pretrain")


def test_prepare_writes_each_stages_resolved_train_config(tmp_path, monkeypatch):
    from vlm import steps
    from vlm.align.config import DESCRIBE_INSTRUCTION

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    raw = tiny_config(tmp_path)
    raw["align"] = {"replay_vqa": 0.25, "finetune": {"tasks": ["vqa"]}}
    out = steps.prepare(yaml.safe_dump(raw), run_tag="stages")
    written = load_config(out["config_uri"])
    ft = written.align.finetune
    assert ft.tasks == ["caption", "vqa"] and ft.task_weights == {"caption": 0.75, "vqa": 0.25}
    assert ft.caption_instructions[-1] == DESCRIBE_INSTRUCTION
    assert stage_config(written, "finetune") == ft  # the engine reads it as written
    assert stage_config(written, "pretrain") == parse_config(raw).train
