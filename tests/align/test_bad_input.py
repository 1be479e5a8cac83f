"""Curation on a damaged dataset (``docs/formats.md``, "Damaged input"): an unusable sampled image is a record
rejected for its reason (summary, MLflow, curated manifest), a shard that cannot be listed is left out of the
draw and counted, and a shard damaged between generation and writing stops the stage naming it."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
from mlflow import MlflowClient

from tests.align.conftest import write_shards
from tests.data.damage import damaged
from vlm.align import generate_and_curate
from vlm.align.config import AlignConfig
from vlm.config import load_config
from vlm.data import format as fmt

ALIGN = dict(num_images=6, batch_size=4, min_answer_tokens=30, max_new_tokens=80, min_words=8)


@pytest.fixture
def clean(tmp_path) -> str:
    write_shards(tmp_path / "clean")  # 6 images: train-000000.tar (4) and train-000001.tar (2)
    return str(tmp_path / "clean")


def _warned(caplog, *words: str) -> bool:
    return any(r.levelno == logging.WARNING and all(w in r.getMessage() for w in words) for r in caplog.records)


@pytest.mark.parametrize("damage, reason, unusable", [("corrupt_image", "undecodable", 1),
                                                      ("sha_mismatch", "checksum_mismatch", 4)])
def test_unusable_images_are_rejected_records(stage_one, clean, tmp_path, caplog, monkeypatch, damage, reason,
                                              unusable):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    data, shard, key = damaged(clean, tmp_path / "data", damage)
    caplog.set_level(logging.WARNING)
    out = tmp_path / "curated"
    summary = generate_and_curate(stage_one, data, str(out), AlignConfig(**ALIGN), experiment="bad-input")
    assert summary.sampled == 6 and summary.unusable_inputs == unusable
    assert summary.rejected_by_reason[reason] == unusable
    listing = json.loads((out / "curated.json").read_text())
    bad = [r for r in listing if r["input_error"]]
    assert len(bad) == unusable and all(r["reasons"] == [reason] and not r["kept"] for r in bad)
    assert all(r["source_shard"].endswith(shard) for r in bad) and (not key or bad[0]["key"] == key)
    assert fmt.read_manifest(str(out)).rejected[reason] == unusable
    assert MlflowClient().get_run(summary.run_id).data.metrics[f"rejected.{reason}"] == unusable
    assert _warned(caplog, shard, reason if damage == "sha_mismatch" else "undecodable")
    kept = {s["__key__"] for s in fmt.iter_samples(str(out), rank=0, world_size=1, worker=0, num_workers=1)}
    assert not kept & {r["key"] for r in bad}


def test_truncated_shard_is_left_out_of_the_draw(stage_one, clean, tmp_path, caplog):
    data, shard, _ = damaged(clean, tmp_path / "data", "truncated")
    caplog.set_level(logging.WARNING)
    summary = generate_and_curate(stage_one, data, str(tmp_path / "curated"), AlignConfig(**ALIGN))
    assert summary.shards_rejected == {"corrupt_shard": 1} and summary.sampled == 2  # train-000001's two
    assert fmt.read_manifest(str(tmp_path / "curated")).shards_rejected == {"corrupt_shard": 1}
    assert _warned(caplog, shard, "corrupt_shard")


def test_cli_stops_naming_a_shard_damaged_after_generation(stage_one, clean, tmp_path):
    config = tmp_path / "p.yaml"
    config.write_text("align: " + json.dumps(ALIGN) + "\n")
    out = tmp_path / "curated"
    first = generate_and_curate(stage_one, clean, str(out), load_config(config).align)
    assert first.kept == 4
    manifest = fmt.read_manifest(clean)
    manifest.shards[0].sha256 = "0" * 64  # the generations are reused; writing the kept images checks the shard
    fmt.write_manifest(clean, manifest)
    res = subprocess.run([sys.executable, "-m", "vlm.cli", "align", "curate", "--model", stage_one, "--config",
                          str(config), "--data", clean, "--output", str(out)], capture_output=True, text=True,
                         timeout=600, env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'm.db'}",
                                           "COLUMNS": "1000"})
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    assert "train-000000.tar: sha256 differs from the manifest" in res.stderr.strip().splitlines()[-1], res.stderr
    assert fmt.read_manifest(str(out)).num_samples == 4  # the earlier curated set is untouched
