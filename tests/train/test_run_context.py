"""The training run's MLflow run belongs to its caller (`vlm.run_context`): the engine only logs into it."""

from __future__ import annotations

import shutil

import pytest
from mlflow import MlflowClient

from tests.train.conftest import tiny_config
from vlm import tracking
from vlm.config import parse_config
from vlm.run_context import CHECKPOINT_TAG, RunContext, RunLayout, has_checkpoints, run_tag
from vlm.train import train
from vlm.train.job import TrainJob
from vlm.train.trainer import run


@pytest.fixture(autouse=True)
def _own_store(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # each test's config names its own store


def _runs(cfg) -> list:
    client = MlflowClient(cfg.tracking.uri)
    exp = client.get_experiment_by_name(cfg.experiment_name())
    return client.search_runs([exp.experiment_id]) if exp else []


def test_the_engine_logs_only_into_the_run_its_caller_opens(shards, tmp_path):
    cfg = parse_config(tiny_config(tmp_path, steps=3, eval_samples=0))
    job = TrainJob.from_config(cfg, "pretrain", shards, str(tmp_path / "a" / "model"))
    untracked = run(job)
    assert untracked.run_id is None and untracked.steps == 3
    assert _runs(cfg) == [], "a job without a run id opens no MLflow run"

    parent = RunContext.of(cfg).stage_run("pipeline-parent")
    ctx = RunContext.of(cfg, parent_run_id=parent)
    job_b = TrainJob.from_config(cfg, "pretrain", shards, str(tmp_path / "b" / "model"))
    run_id = ctx.training_run("pretrain", job_b.checkpoint_uri)
    result = run(job_b.with_run(run_id))
    assert result.run_id == run_id
    got = MlflowClient(cfg.tracking.uri).get_run(run_id)
    assert got.info.status == "FINISHED" and "train/loss" in got.data.metrics
    assert got.data.tags["mlflow.parentRunId"] == parent and got.data.tags[tracking.STAGE_TAG] == "pretrain"
    assert got.data.tags[CHECKPOINT_TAG] == job_b.checkpoint_uri


def test_a_rerun_continues_the_run_of_its_checkpoints_and_a_fresh_start_gets_a_new_one(shards, tmp_path):
    model = str(tmp_path / "model")
    first = train(parse_config(tiny_config(tmp_path, steps=3, eval_samples=0)), "pretrain", shards, model)
    cfg = parse_config(tiny_config(tmp_path, steps=6, eval_samples=0))
    ckpt = TrainJob.from_config(cfg, "pretrain", shards, model).checkpoint_uri
    assert has_checkpoints(ckpt)
    resumed = train(cfg, "pretrain", shards, model)
    assert resumed.resumed_from_step == 3 and resumed.run_id == first.run_id
    history = MlflowClient(cfg.tracking.uri).get_metric_history(first.run_id, "train/loss")
    assert {m.step for m in history} >= {3, 6}, "both legs log into the one run"

    shutil.rmtree(ckpt)
    assert not has_checkpoints(ckpt)
    fresh = train(cfg, "pretrain", shards, model)
    assert fresh.resumed_from_step == 0 and fresh.run_id != first.run_id
    pretrain_runs = [r for r in _runs(cfg) if r.data.tags.get(tracking.STAGE_TAG) == "pretrain"]
    assert len(pretrain_runs) == 2, [(r.info.run_id, r.info.status, r.data.tags) for r in pretrain_runs]


def test_the_run_layout_is_typed_and_under_the_run_tag(tmp_path):
    cfg = parse_config(tiny_config(tmp_path))
    layout = RunLayout.of(cfg, run_tag("My Run #1"))
    assert layout.run_root == str(tmp_path / "run" / "runs" / "my-run-1")
    assert layout.config == f"{layout.run_root}/config.yaml" and layout.pretrain.startswith(layout.run_root)
    assert layout.data.startswith(str(tmp_path / "run" / "datasets"))
    assert set(layout.to_dict()) == {"run_root", "config", "data", "labels", "pretrain", "curated", "finetune", "eval"}
    assert run_tag("") == "run"
