"""Re-running a pipeline run after a crash: ``vlm run`` killed (SIGKILL of its whole process group) in the middle
of stage one, then the same command again with the same ``--run-name`` (configs/tiny.yaml).

kfp's local runner has no cache, so the steps skip finished work themselves: the dataset and labels are
reused as they are, training resumes from its latest checkpoint, and MLflow ends with one parent run for the
pipeline run, FINISHED. The figures (time to the kill, resume step, re-run time) are printed (``pytest -s``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

REPO = Path(__file__).resolve().parents[2]
RUN = "crash-test"
# long enough that the kill lands inside stage one, after its first checkpoint
KNOBS = ["--set", "train.steps=300", "--set", "train.checkpoint_every=20"]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    shutil.copy(REPO / "configs" / "tiny.yaml", tmp_path / "tiny.yaml")
    yield tmp_path
    import mlflow

    mlflow.set_tracking_uri(None)


def _vlm_run(workdir: Path, log: Path) -> subprocess.Popen:
    """``vlm run --verbose``: each attempt's step output (resume, skipped data steps) in its own log file."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "400", "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen([sys.executable, "-m", "vlm.cli", "run", "--config", "tiny.yaml", "--run-name", RUN, "--verbose", *KNOBS],
                            cwd=workdir, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _processes_of(run_dir: Path) -> list[str]:
    """Command lines of live processes that work on this run (e.g. a training worker left behind)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = (Path("/proc") / pid / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(run_dir) in cmd:
            found.append(f"{pid}: {cmd[:200]}")
    return found


def test_rerun_after_sigkill_reuses_data_resumes_training_one_parent_run(workdir):
    root = workdir / "runs" / "tiny"
    run_dir = root / "runs" / RUN
    latest = run_dir / "pretrain" / "checkpoints" / "pretrain" / "latest"

    t0 = time.time()
    first = _vlm_run(workdir, workdir / "first.log")
    try:
        while not latest.exists():
            assert first.poll() is None, (workdir / "first.log").read_text()[-4000:]
            assert time.time() - t0 < 600, "no training checkpoint within 10 minutes"
            time.sleep(0.2)
        os.killpg(first.pid, signal.SIGKILL)
        t_kill = time.time() - t0
        first.wait()
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    killed_at = latest.read_text()
    time.sleep(1)
    assert not _processes_of(run_dir), f"processes of the killed run live on: {_processes_of(run_dir)}"
    manifests = list((root / "datasets").glob("*/manifest.json"))
    labels = list((root / "labels").glob("*/labels.json"))
    assert len(manifests) == 1 and len(labels) == 1, "the data steps had finished before the kill"
    manifest_sha, labels_sha = _sha256(manifests[0]), _sha256(labels[0])
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("vlm-tiny")
    killed_train = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("vlm.stage") == "pretrain"]
    assert len(killed_train) == 1 and killed_train[0].info.status == "RUNNING", "the kill left the training run open"

    t1 = time.time()
    second = _vlm_run(workdir, workdir / "second.log")
    try:
        rc = second.wait(1200)
    finally:
        if second.poll() is None:
            os.killpg(second.pid, signal.SIGKILL)
            second.wait()
    rerun_s = time.time() - t1
    text = (workdir / "second.log").read_text()
    assert rc == 0, text[-6000:]

    # data steps reused: nothing re-sharded, no expert shard recomputed, the files untouched
    assert "already complete for this input and config" in text
    computed = re.findall(r'"shards_computed": (\d+)', text)
    assert computed and set(computed) == {"0"}, f"experts recomputed shards: {computed}"
    assert _sha256(manifests[0]) == manifest_sha and _sha256(labels[0]) == labels_sha
    summary = json.loads((run_dir / "pretrain" / "model-summary.json").read_text())
    resumed = summary["resumed_from_step"]
    assert resumed == int(killed_at.split("-")[1]) > 0 and summary["steps"] == 300
    assert f"(step {resumed})" in text and "resuming from" in text

    # MLflow: one parent run for the pipeline run, FINISHED; no run left RUNNING; the training run reused
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("vlm.run_tag") == RUN and "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED", [(r.info.run_id, r.info.status) for r in parents]
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert {r.info.run_id for r in runs} == {parents[0].info.run_id} | {r.info.run_id for r in children}
    train_runs = [r for r in children if r.data.tags.get("vlm.stage") == "pretrain"]
    assert [r.info.run_id for r in train_runs] == [killed_train[0].info.run_id], "the training run is resumed"
    assert train_runs[0].info.status == "FINISHED"
    steps = {m.step for m in client.get_metric_history(train_runs[0].info.run_id, "train/loss")}
    assert max(steps) == 300 and min(steps) < resumed, "one metric history across both attempts"
    print(f"\nre-run after SIGKILL: killed {t_kill:.1f}s after start at checkpoint {killed_at}; the re-run resumed "
          f"training from step {resumed} and finished the pipeline in {rerun_s:.1f}s; one parent run "
          f"{parents[0].info.run_id} FINISHED; stage runs: "
          f"{sorted((r.data.tags.get('vlm.stage'), r.info.status) for r in children)}")
