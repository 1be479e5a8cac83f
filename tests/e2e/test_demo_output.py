"""What ``vlm run`` prints, run as a user would (a subprocess, not a terminal) on the tiny pipeline.

One line per stage as it starts and ends with its key figure, no kfp executor JSON, the summary; the full logs
in ``<run folder>/logs`` and in the stages' MLflow runs; ``--verbose`` brings kfp's output back.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

REPO = Path(__file__).resolve().parents[2]
MAX_LINES = 40
END_LINES = {  # stage -> its figure on the end line
    "prepare": r"run demo-quiet, MLflow parent run [0-9a-f]{32}",
    "shard": r"\d+ samples in \d+ shards, \d+ rejected",
    "experts": r"\d+ labels written \(edges \d+, segmentation \d+\)",
    "pretrain": r"loss \d+\.\d\d -> \d+\.\d\d \(held-out, 4 steps\)",
    "curate": r"\d+ descriptions kept, \d+ rejected( \(too few: fine-tuning skipped\))?",
    "finetune": r"loss \d+\.\d\d -> \d+\.\d\d \(held-out, 2 steps\)|skipped: the stage-one model carries on",
    "evaluate": r"cider \d+\.\d{3}, vqa_accuracy \d+\.\d{3}",
    "register": r"vlm-linear v1 \(alias challenger\), gate passes",
    "promote": r"vlm-linear v1 is now champion",
}


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("demo")
    shutil.copy(REPO / "configs" / "tiny.yaml", path / "tiny.yaml")
    return path


def _vlm_run(cwd: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]), PYTHONIOENCODING="utf-8",
               OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "vlm.cli", "run", "--config", "tiny.yaml", *args], cwd=cwd,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-5000:]
    return proc.stdout


def test_vlm_run_prints_a_line_per_stage_and_keeps_the_logs(demo_dir):
    out = _vlm_run(demo_dir, "--run-name", "demo-quiet")
    lines = out.splitlines()
    assert len(lines) < MAX_LINES, out
    assert lines[0] == "run folder runs/tiny/runs/demo-quiet (logs in logs/, --verbose shows them here)"
    for kfp_output in ("Got executor_input", "parameterValues", "KFP Executor", "Executing task"):
        assert kfp_output not in out, out
    for stage, figure in END_LINES.items():
        starts = [ln for ln in lines if re.fullmatch(rf"→ {stage}\s*", ln)]
        ends = [ln for ln in lines if ln.startswith(f"✓ {stage} ")]
        assert len(starts) == 1 and len(ends) == 1, (stage, out)
        assert re.fullmatch(rf"✓ {stage}\s+\d+ s  ({figure})", ends[0]), ends[0]
        assert lines.index(starts[0]) < lines.index(ends[0])
    assert not [ln for ln in lines if ln.startswith("✗")], out
    assert "registered model  : vlm-linear version 1 (aliases: challenger, champion)" in out
    watch = [ln for ln in lines if "watch it in MLflow" in ln][0]
    assert re.search(r"mlflow ui --backend-store-uri sqlite:///\S+, then open "
                     r"http://127\.0\.0\.1:5000/#/experiments/\d+/runs\?workflowType=machine_learning", watch), watch

    # the full logs, kfp's own output included, one file per task under the run folder
    logs = demo_dir / "runs" / "tiny" / "runs" / "demo-quiet" / "logs"
    names = {p.stem for p in logs.glob("*.log")}
    assert {"pipeline", "prepare", "shard-partitions", "shard-partition", "shard", "expert-groups", "experts",
            "experts-index", "pretrain", "curate", "evaluate", "register", "finish"} <= names, names
    pretrain_log = (logs / "pretrain.log").read_text()
    assert "Got executor_input" in pretrain_log and "Executing task 'pretrain'" in pretrain_log
    assert re.search(r"^\s*pretrain 4/4 step  loss \d", pretrain_log, re.M), "plain progress lines in the log"
    assert "\x1b[" not in pretrain_log, "no terminal colours in log files"
    assert "Running pipeline" in (logs / "pipeline.log").read_text()

    # ... and each in its stage's MLflow run, complete (kfp's last line of the task is in it)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    client = MlflowClient(tracking_uri=f"sqlite:///{demo_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("vlm-tiny")
    runs = client.search_runs([exp.experiment_id])
    parent = [r for r in runs
              if r.data.tags.get("vlm.run_tag") == "demo-quiet" and "mlflow.parentRunId" not in r.data.tags][0]
    logged: dict[str | None, set[str]] = {}  # stage -> the logs in its run(s); None: the parent run
    for run in runs:
        if run.info.run_id == parent.info.run_id or run.data.tags.get("mlflow.parentRunId") == parent.info.run_id:
            stage = run.data.tags.get("vlm.stage") if run.info.run_id != parent.info.run_id else None
            logged.setdefault(stage, set()).update(Path(a.path).stem for a in client.list_artifacts(run.info.run_id,
                                                                                                    "logs"))
    expected = {"shard": {"shard"}, "experts": {"experts", "experts-2"}, "align-curate": {"curate"},
                "pretrain": {"pretrain", "evaluate", "register"},
                None: {"prepare", "pipeline", "finish", "shard-partitions"}}
    for stage, tasks in expected.items():
        assert tasks <= logged.get(stage, set()), (stage, logged)
    pretrain_run = [r for r in runs if r.data.tags.get("vlm.stage") == "pretrain"
                    and r.data.tags.get("mlflow.parentRunId") == parent.info.run_id][0]
    local = client.download_artifacts(pretrain_run.info.run_id, "logs/pretrain.log", str(demo_dir))
    text = Path(local).read_text()
    assert "Task 'pretrain' finished with status SUCCESS" in text, text[-2000:]


def test_vlm_run_verbose_prints_everything(demo_dir):
    out = _vlm_run(demo_dir, "--run-name", "demo-verbose", "--verbose")
    assert "Got executor_input" in out and "Executing task" in out
    assert len(out.splitlines()) > 5 * MAX_LINES
    assert re.search(r"^✓ pretrain\s+\d+ s  loss ", out, re.M), "the stage lines stay"
    logs = demo_dir / "runs" / "tiny" / "runs" / "demo-verbose" / "logs"
    assert "Got executor_input" in (logs / "pretrain.log").read_text(), "the log files are written as well"
