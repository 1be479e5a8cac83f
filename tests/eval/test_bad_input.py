"""Evaluation on a damaged dataset (``docs/formats.md``, "Damaged input"): a damaged shard is skipped and an
undecodable sample dropped, each counted (summary, MLflow) and named in a warning; with nothing usable left the
stage stops with one line naming the shards, no traceback."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
from mlflow import MlflowClient

from tests.data.damage import DAMAGES, REASON, damaged
from vlm.data import format as fmt
from vlm.eval.config import EvalConfig
from vlm.eval.runner import evaluate

FAST = dict(num_beams=1, max_new_tokens=4, batch_size=8, meteor=False, tokenizer="simple", report_examples=1,
            baselines=False)


@pytest.fixture(scope="module")
def tracking(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"  # one per module: mlflow keeps its store


@pytest.mark.parametrize("damage", DAMAGES)
def test_damage_is_skipped_counted_and_named(tiny_model_uri, tiny_model, shapes_shards, tracking, tmp_path, caplog,
                                             monkeypatch, damage):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)  # wins over tracking_uri; other tests may have set it
    data, shard, key = damaged(shapes_shards, tmp_path / "data", damage, split="test")
    caplog.set_level(logging.WARNING)
    summary = evaluate(tiny_model_uri, data, EvalConfig(tasks=["caption"], **FAST), output=str(tmp_path / "out"),
                       model=tiny_model, tracking_uri=tracking, experiment="bad-input")
    reason = REASON[damage]
    assert summary.rejected[reason] == 1
    in_shard = fmt.read_manifest(data).shards_of("test")[0].num_samples
    total = fmt.read_manifest(data).splits["test"].num_samples
    if damage == "corrupt_image":
        assert summary.n_samples == total - 1 and summary.damaged_shards == {}
        assert any(shard in r.getMessage() and key in r.getMessage() and "undecodable" in r.getMessage()
                   for r in caplog.records if r.levelno == logging.WARNING)
    else:
        assert summary.n_samples == total - in_shard  # none of the damaged shard's samples is scored
        assert [u.rsplit("/", 1)[-1] for u in summary.damaged_shards] == [shard]
        assert any(shard in r.getMessage() and reason in r.getMessage()
                   for r in caplog.records if r.levelno == logging.WARNING)
    metrics = MlflowClient(tracking).get_run(summary.run_id).data.metrics
    assert metrics[f"eval_data/rejected_{reason}"] == 1


def test_cli_stops_naming_the_shards_when_nothing_is_usable(tiny_model_uri, shapes_shards, tmp_path):
    data, _, _ = damaged(shapes_shards, tmp_path / "data", "sha_mismatch", split="test")
    manifest = fmt.read_manifest(data)
    for info in manifest.shards:
        info.sha256 = "0" * 64
    fmt.write_manifest(data, manifest)
    res = subprocess.run([sys.executable, "-m", "vlm.cli", "evaluate", tiny_model_uri, data, "--tasks", "caption",
                          "--no-track", "-o", str(tmp_path / "out")], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "COLUMNS": "1000"})
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert "no usable samples" in last and "checksum_mismatch" in last, res.stderr
    assert all(info.name in last for info in manifest.shards_of("test")), last
