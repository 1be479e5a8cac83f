"""Training through an MLflow outage: a real ``mlflow server`` killed in the middle of a training run, restarted
on the same port with the same backend store (the run finishes, every metric arrives, the gap is a warning),
or never restarted (checkpoints and model are written, then the stage fails naming the tracking URI).

The figures (outage seconds, batches buffered) are printed: ``pytest -s`` shows them.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from tests.servers import _stop, serve_mlflow
from tests.train.conftest import tiny_config, write_shards

LOG_EVERY = 2


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("outage-shards")
    write_shards(root, "train", 48, 12)
    write_shards(root, "val", 8, 8, offset=1)
    return str(root)


def _server(work: Path, port: int | None = None) -> tuple[str, subprocess.Popen]:
    """``mlflow server`` on a sqlite store and a local artefact folder in ``work`` (kept across restarts)."""
    return serve_mlflow("server", ["--backend-store-uri", f"sqlite:///{work / 'mlflow.db'}",
                                   "--artifacts-destination", str(work / "artifacts"), "--serve-artifacts"],
                        work, port=port)


def _kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)  # abrupt: no graceful shutdown, as when a pod or node dies
    proc.wait()


def _start_training(tmp: Path, shards: str, uri: str, steps: int, flush_timeout: int) -> tuple[subprocess.Popen, Path]:
    cfg = tiny_config(tmp, steps=steps, log_every=LOG_EVERY, checkpoint_every=100, eval_samples=4)
    cfg["tracking"]["uri"] = uri
    (tmp / "config.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "VLM_TRACKING_FLUSH_TIMEOUT": str(flush_timeout),
           "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1", "OMP_NUM_THREADS": "1",
           "VLM_CACHE_DIR": str(tmp / "cache"), "PYTHONUNBUFFERED": "1", "COLUMNS": "400"}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    log = tmp / "train.log"
    proc = subprocess.Popen([sys.executable, "-m", "vlm.train", "--config", str(tmp / "config.yaml"), "--data", shards,
                             "--output", str(tmp / "model")], stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                            env=env, start_new_session=True)
    return proc, log


def _wait_for_metrics(uri: str, proc: subprocess.Popen, log: Path, min_step: int, timeout: float = 300) -> str:
    """The training run's id once its ``train/loss`` reached ``min_step`` on the server."""
    client = MlflowClient(uri)
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, f"training ended early ({proc.returncode}):\n{log.read_text()[-3000:]}"
        exp = client.get_experiment_by_name("train-test")
        runs = client.search_runs([exp.experiment_id]) if exp else []
        if runs and runs[0].data.metrics.get("train/loss") is not None:
            history = client.get_metric_history(runs[0].info.run_id, "train/loss")
            if max(m.step for m in history) >= min_step:
                return runs[0].info.run_id
        time.sleep(0.5)
    raise AssertionError(f"no train/loss metric at step {min_step} within {timeout}s:\n{log.read_text()[-3000:]}")


def _logged_steps(steps: int) -> set[int]:
    return {s for s in range(1, steps + 1) if s % LOG_EVERY == 0 or s == steps}


@pytest.fixture(autouse=True)
def _quick_client(monkeypatch):
    """This test's own MLflow client gives up quickly too (the training sets its defaults in tracking.configure)."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")


def _end(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_training_survives_a_tracking_server_restart(shards, tmp_path):
    work = tmp_path / "mlflow"
    work.mkdir()
    uri, server = _server(work)
    port = int(uri.rsplit(":", 1)[1])
    steps = 1500
    proc, log = _start_training(tmp_path, shards, uri, steps, flush_timeout=300)
    try:
        run_id = _wait_for_metrics(uri, proc, log, min_step=20)
        t_kill = time.time()
        _kill(server)
        time.sleep(3)
        t_restart = time.time()
        uri2, server = _server(work, port=port)
        t_up = time.time()
        assert uri2 == uri
        rc = proc.wait(600)
        t_end = time.time()
        text = log.read_text()
        assert rc == 0, text[-4000:]

        client = MlflowClient(uri)
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        history = client.get_metric_history(run_id, "train/loss")
        assert {m.step for m in history} == _logged_steps(steps), "every step's metrics reached the server"
        during = sorted(m.step for m in history if t_kill <= m.timestamp / 1000 <= t_restart)
        assert during, "training went on while the server was down (metrics stamped inside the outage)"
        # the gap is a warning: when it started, when it ended, how many batches waited
        flat = re.sub(r"\s+", " ", text)
        assert re.search(rf"WARNING MLflow tracking server {re.escape(uri)} unreachable since \S+ ", flat), text[-4000:]
        back = re.search(r"WARNING MLflow tracking server \S+ is back at \S+ after ([\d.]+) s unreachable "
                         r"\(from \S+\): (\d+) batch\(es\) waited \(steps (\d+)\.\.(\d+)\)", flat)
        assert back, text[-4000:]
        gap_s, batches, first, last = float(back.group(1)), int(back.group(2)), int(back.group(3)), int(back.group(4))
        assert batches >= len(during) > 0 and first <= during[0] <= during[-1] <= last
        # system metrics were sampled throughout, through the outage too
        system = client.get_metric_history(run_id, "system/cpu_utilization_percentage")
        assert "system/system_memory_usage_megabytes" in run.data.metrics
        assert any(t_kill <= m.timestamp / 1000 <= t_up for m in system), "system metrics sampled during the outage"
        assert (tmp_path / "model" / "vlm_config.json").exists()
        assert client.list_artifacts(run_id, "model"), "the model artefact was logged after the server came back"
    finally:
        _end(proc)
        _stop(server)
    print(f"\nMLflow outage: server down {t_up - t_kill:.1f}s (kill -> restarted server healthy); the client saw a "
          f"gap of {gap_s:.1f}s, {batches} batches waited (train steps {first}..{last}; {len(during)} train/loss "
          f"points stamped during the outage); all {len(history)} train/loss points arrived; {len(system)} system "
          f"samples; training ended {t_end - t_up:.1f}s after the restart")


def test_tracking_server_gone_for_good_fails_after_writing_the_model(shards, tmp_path):
    work = tmp_path / "mlflow"
    work.mkdir()
    uri, server = _server(work)
    steps = 200
    proc, log = _start_training(tmp_path, shards, uri, steps, flush_timeout=10)
    try:
        _wait_for_metrics(uri, proc, log, min_step=10)
        t_kill = time.time()
        _kill(server)
        rc = proc.wait(600)
        t_end = time.time()
    finally:
        _end(proc)
        _stop(server)
    text = log.read_text()
    assert rc == 3, text[-3000:]
    error = [line for line in text.splitlines() if line.startswith("error: ")]
    assert error and f"MLflow tracking server {uri} unreachable since" in error[0], text[-3000:]
    assert "could not log" in error[0] and "the artefact 'model'" in error[0]
    # everything written to storage is there: the last checkpoint and the model artefact
    ckpt = tmp_path / "checkpoints" / "pretrain"
    assert (ckpt / "latest").read_text() == f"step-{steps:06d}"
    assert (tmp_path / "model" / "vlm_config.json").exists()
    assert "Traceback" not in text, "a clear message, not a traceback"
    print(f"\nMLflow gone for good: training exited {rc} {t_end - t_kill:.1f}s after the kill; {error[0][:400]}")
