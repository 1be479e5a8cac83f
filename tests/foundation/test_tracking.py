"""Tracking against a real MLflow server (sqlite backend, artefacts proxied to SeaweedFS)."""

from __future__ import annotations

import os
import time
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


def test_buffered_run_logs_in_order_with_system_metrics(mlflow_uri, monkeypatch):
    """A buffered run (what training uses) delivers every batch, in order, plus system/* samples, on leaving."""
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    exp = _experiment()
    with tracking.stage_run("pretrain", exp, buffered=True, system_metrics=True) as run:
        run.log_params({"train": {"steps": 50}})
        for step in range(1, 51):
            run.log_metrics({"train/loss": 1.0 / step}, step=step)
        run.set_tags({"vlm.strategy": "none"})
        time.sleep(0.5)
    client = MlflowClient()
    info = client.get_run(run.run_id)
    assert info.info.status == "FINISHED" and info.data.params["train.steps"] == "50"
    assert info.data.tags["vlm.strategy"] == "none"
    history = client.get_metric_history(run.run_id, "train/loss")
    assert sorted(m.step for m in history) == list(range(1, 51))
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(info.data.metrics)


def test_buffered_run_on_a_sqlite_store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with tracking.stage_run("pretrain", "sqlite-exp", tracking_uri=uri, buffered=True, system_metrics=True) as run:
        run.log_metrics({"train/loss": 2.0}, step=1)
    import mlflow

    info = MlflowClient(uri).get_run(run.run_id)
    assert info.data.metrics["train/loss"] == 2.0
    assert any(k.startswith("system/cpu") for k in info.data.metrics), "one sample at least, taken at the end"
    mlflow.set_tracking_uri(None)


def test_rejected_batch_is_dropped_not_retried(mlflow_uri):
    """A batch the server refuses (4xx: a changed param value) is dropped with a warning; the rest goes on."""
    exp = _experiment()
    with tracking.stage_run("pretrain", exp, buffered=True) as run:
        run.log_params({"lr": 0.1})
        run.log_params({"lr": 0.2})  # params are write-once: the server answers 400
        run.log_metrics({"train/loss": 1.0}, step=1)
    info = MlflowClient().get_run(run.run_id)
    assert info.data.params["lr"] == "0.1" and info.data.metrics["train/loss"] == 1.0


def test_rerun_reopens_the_parent_run_and_kills_orphans(mlflow_uri):
    """What ``vlm.steps.prepare`` does for a re-run: one parent run per run tag, reopened; children left RUNNING
    by the killed attempt become KILLED, and a training run resumed from its checkpoint is reopened."""
    exp = _experiment()
    exp_id = tracking.ensure_experiment(exp)
    client = MlflowClient()
    parent = client.create_run(exp_id, tags={tracking.RUN_TAG: "again"}).info.run_id
    done = tracking.create_stage_run("shard", exp, parent_run_id=parent)
    client.set_terminated(done, "FINISHED")
    orphan = tracking.create_stage_run("experts", exp, parent_run_id=parent)
    training = tracking.create_stage_run("pretrain", exp, parent_run_id=parent)
    client.set_terminated(parent, "FAILED")  # e.g. an earlier attempt that failed
    assert tracking.find_pipeline_run(exp_id, "other") is None
    found = tracking.find_pipeline_run(exp_id, "again")
    assert found.info.run_id == parent, "a child run never counts as the parent"
    assert tracking.reopen_pipeline_run(found) == 2
    assert client.get_run(parent).info.status == "RUNNING"
    assert client.get_run(done).info.status == "FINISHED"
    assert client.get_run(orphan).info.status == "KILLED"
    assert client.get_run(orphan).data.tags["vlm.interrupted"]
    with tracking.stage_run("pretrain", exp, run_id=training, resume=True) as run:
        assert run.run_id == training and client.get_run(training).info.status == "RUNNING"
    assert client.get_run(training).info.status == "FINISHED"
    with tracking.stage_run("pretrain", exp, parent_run_id=parent, run_id="0" * 32, resume=True) as run:
        assert run.run_id != "0" * 32, "a run the store does not know is replaced by a new one"
    assert tracking.unlogged_params(parent, {"a": 1}) == {"a": 1}
    client.log_param(parent, "a", "1")
    assert tracking.unlogged_params(parent, {"a": 1, "b": {"c": 2}}) == {"b.c": 2}
