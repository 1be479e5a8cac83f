"""Tracking against a real MLflow server (sqlite backend, artefacts proxied to SeaweedFS)."""

from __future__ import annotations

import os
import uuid

import pytest
from mlflow import MlflowClient

from vlm import storage, tracking


def _experiment() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


def test_parent_and_child_runs(mlflow_uri, tmp_path):
    exp = _experiment()
    with tracking.pipeline_run(exp, run_name="pipeline") as parent:
        assert os.environ[tracking.PARENT_ENV] == parent.run_id
        parent.log_params({"data": {"input": "builtin:shapes"}, "steps": 3})
        with tracking.stage_run("shard", exp) as child:
            child.log_metrics({"num_samples": 12}, step=0)
            child.log_metrics({"loss": 1.5}, step=1)
            artefact = tmp_path / "manifest.json"
            artefact.write_text('{"ok": true}')
            child.log_artifact(artefact)
    assert tracking.PARENT_ENV not in os.environ
    client = MlflowClient()
    p = client.get_run(parent.run_id)
    c = client.get_run(child.run_id)
    assert p.info.status == "FINISHED" and c.info.status == "FINISHED"
    assert p.data.params["data.input"] == "builtin:shapes"
    assert c.data.tags["mlflow.parentRunId"] == parent.run_id
    assert c.data.tags[tracking.STAGE_TAG] == "shard"
    assert c.data.metrics["loss"] == 1.5
    assert client.get_experiment(c.info.experiment_id).name == exp
    # the artefact went through the server's proxy into the S3 bucket
    local = client.download_artifacts(child.run_id, "manifest.json", str(tmp_path / "dl"))
    assert open(local).read() == '{"ok": true}'
    objects = storage.list_uris("s3://mlflow/artifacts")
    assert any(o.endswith(f"{child.run_id}/artifacts/manifest.json") for o in objects)


def test_failed_stage_marks_run_failed(mlflow_uri):
    exp = _experiment()
    with pytest.raises(ValueError):
        with tracking.stage_run("train", exp) as run:
            raise ValueError("diverged")
    assert MlflowClient().get_run(run.run_id).info.status == "FAILED"


def test_attach_to_existing_run_keeps_it_open(mlflow_uri):
    exp = _experiment()
    run_id = tracking.create_stage_run("train", exp)
    with tracking.stage_run("evaluate", exp, run_id=run_id) as run:
        run.log_metrics({"cider": 0.5})
    info = MlflowClient().get_run(run_id)
    assert info.info.status == "RUNNING" and info.data.metrics["cider"] == 0.5
    tracking.mark_failed(run_id, "exit handler says a step failed")
    info = MlflowClient().get_run(run_id)
    assert info.info.status == "FAILED" and "exit handler" in info.data.tags["vlm.failure"]


def test_only_rank0_logs(mlflow_uri, monkeypatch):
    exp = _experiment()
    monkeypatch.setenv("RANK", "1")
    with tracking.stage_run("train", exp) as run:
        assert not run.active
        run.log_metrics({"loss": 1.0})
        run.log_params({"a": 1})
    assert MlflowClient().get_experiment_by_name(exp) is None, "rank 1 must not create anything"
    monkeypatch.setenv("RANK", "0")
    with tracking.stage_run("train", exp) as run:
        assert run.active
    assert len(MlflowClient().search_runs([MlflowClient().get_experiment_by_name(exp).experiment_id])) == 1


def test_local_sqlite_default(tmp_path, monkeypatch):
    """Without a server the default store is MLflow's local sqlite file."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with tracking.stage_run("shard", "local-exp", tracking_uri=uri) as run:
        run.log_metrics({"n": 3})
    import mlflow

    mlflow.set_tracking_uri(uri)
    assert MlflowClient().get_run(run.run_id).data.metrics["n"] == 3
    assert (tmp_path / "mlflow.db").exists()
    mlflow.set_tracking_uri(None)
