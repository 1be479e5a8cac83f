"""`make demo`'s configuration end to end (default models, ~14 minutes on 2 cores): `make test-slow`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quickstart_pipeline(tmp_path, monkeypatch):
    from pipelines.run import run_local

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    shutil.copy(REPO / "configs" / "quickstart.yaml", tmp_path / "quickstart.yaml")
    out = run_local("quickstart.yaml", run_name="demo")
    assert out["status"] == "FINISHED"
    assert out["model"]["version"] == "1" and "champion" in out["model"]["aliases"]
    run_dir = tmp_path / "runs" / "quickstart" / "runs" / "demo"
    summary = json.loads((run_dir / "pretrain" / "model-summary.json").read_text())
    before, after = summary["eval_before"], summary["eval_after"]
    assert after["eval/caption_loss"] < before["eval/caption_loss"], "stage one must learn"
    curated = json.loads((run_dir / "align" / "curated" / "summary.json").read_text())
    assert curated["kept"] >= 1
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert metrics["vqa_accuracy"] >= 0.5, metrics  # held-out scenes; 0.767 measured (2026-12-06)
