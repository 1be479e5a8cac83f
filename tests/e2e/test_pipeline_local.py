"""The whole pipeline through kfp's local runner on tiny models and data (configs/tiny.yaml)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from vlm import storage

REPO = Path(__file__).resolve().parents[2]
STAGES = {"shard", "experts", "pretrain", "align-curate"}  # evaluation attaches to the training run


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    shutil.copy(REPO / "configs" / "tiny.yaml", tmp_path / "tiny.yaml")
    yield tmp_path
    import mlflow

    mlflow.set_tracking_uri(None)


def test_tiny_pipeline_end_to_end(workdir):
    from pipelines.run import run_local

    out = run_local("tiny.yaml", run_name="e2e-one")
    assert out["status"] == "FINISHED"
    model = out["model"]
    assert model["name"] == "vlm-linear" and model["version"] == "1"
    assert {"challenger", "champion"} <= set(model["aliases"]), "first version must pass the gate (no champion yet)"
    assert out["mlflow_ui"].startswith("mlflow ui --backend-store-uri sqlite:///")

    # artefacts on the local store, where the layout says
    root = workdir / "runs" / "tiny"
    manifests = list((root / "datasets").glob("*/manifest.json"))
    assert len(manifests) == 1
    manifest = json.loads(manifests[0].read_text())
    assert manifest["num_samples"] > 30 and sum(s["num_samples"] for s in manifest["shards"]) == manifest["num_samples"]
    labels = list((root / "labels").glob("*/labels.json"))
    assert len(labels) == 1
    run_dir = root / "runs" / "e2e-one"
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert resolved["root"] == str(root), "relative paths are resolved against the user's working directory"
    assert (run_dir / "pretrain" / "model" / "vlm_config.json").exists()
    assert (run_dir / "pretrain" / "model" / "adapter.safetensors").exists()
    assert (run_dir / "eval" / "report.md").exists()
    registration = json.loads((run_dir / "registration.json").read_text())
    assert registration["gate_passed"] is True

    # MLflow: one parent run, one child per stage, all finished; the model is loadable by alias
    client = MlflowClient()
    exp = client.get_experiment_by_name("vlm-tiny")
    runs = client.search_runs([exp.experiment_id])
    parent = [r for r in runs if r.info.run_id == out["parent_run_id"]][0]
    assert parent.data.tags["vlm.run_tag"] == "e2e-one" and parent.data.params["train.steps"] == "4"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    stages = {r.data.tags.get("vlm.stage") for r in children}
    assert STAGES <= stages, stages
    assert all(r.info.status == "FINISHED" for r in children)
    train_run = [r for r in children if r.data.tags["vlm.stage"] == "pretrain"][0]
    assert "train/loss" in train_run.data.metrics and "cider" in train_run.data.metrics, "evaluation attaches to training"
    version = client.get_model_version_by_alias("vlm-linear", "champion")
    assert version.tags.get("vlm.pipeline_run_id") == parent.info.run_id

    # a second run re-uses the dataset and labels, registers v2, and the gate keeps the champion
    out2 = run_local("tiny.yaml", run_name="e2e-two")
    assert out2["status"] == "FINISHED"
    assert out2["model"]["version"] == "2"
    assert "champion" not in out2["model"]["aliases"], "equal metrics do not beat the champion"
    assert str(client.get_model_version_by_alias("vlm-linear", "champion").version) == "1"
    assert len(list((root / "datasets").glob("*/manifest.json"))) == 1


def test_failed_step_marks_parent_run_failed(workdir):
    from pipelines.run import run_local

    cfg = yaml.safe_load((workdir / "tiny.yaml").read_text())
    cfg["data"]["input"] = str(workdir / "does-not-exist.jsonl")
    (workdir / "broken.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(RuntimeError, match="shard"):
        run_local("broken.yaml", run_name="e2e-broken")
    client = MlflowClient()
    exp = client.get_experiment_by_name("vlm-tiny")
    parent = client.search_runs([exp.experiment_id], "tags.`vlm.run_tag` = 'e2e-broken'")[0]
    assert parent.info.status == "FAILED"
    assert "FAILED" in parent.data.tags["vlm.failure"] or "fail" in parent.data.tags["vlm.failure"].lower()
