"""Training on a damaged dataset: each damaged shard or sample is skipped, counted (summary and MLflow) and
named in a warning; no sample of a shard that fails its manifest check is trained on; a dataset with nothing
usable stops with one line naming the shards' damage, no traceback (``docs/formats.md``, "Damaged input")."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
from mlflow import MlflowClient

from tests.data.damage import DAMAGES, REASON, damaged, shapes
from tests.train.conftest import tiny_config, write_config
from vlm.config import parse_config
from vlm.data import format as fmt
from vlm.train import train
from vlm.train.data import ExampleBuilder, ExampleStream, SampleStream, list_shards


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> str:
    return shapes(tmp_path_factory.mktemp("clean"))


def _stream(data: str) -> ExampleStream:
    samples = SampleStream(list_shards(data, "train"), seed=0, infinite=False)
    return ExampleStream(samples, ExampleBuilder(["caption"], ["Describe."]))


@pytest.mark.parametrize("damage", DAMAGES)
def test_damage_is_skipped_counted_and_named(clean, tmp_path, caplog, monkeypatch, damage):
    data, shard, key = damaged(clean, tmp_path / "data", damage)
    caplog.set_level(logging.WARNING)
    stream = _stream(data)
    keys = [ex["key"] for _, ex in stream.examples()]
    reason = REASON[damage]
    assert stream.rejected[reason] == 1
    damaged_keys = set(fmt.shard_keys(os.path.join(clean, shard)))
    if damage == "corrupt_image":
        assert key not in keys and (damaged_keys - {key}) <= set(keys)  # only the bad sample is dropped
    else:
        assert not damaged_keys & set(keys)  # a shard failing its manifest check is never half-read
    assert any(shard in r.getMessage() and reason in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records), [r.getMessage() for r in caplog.records]

    steps = len(keys) // 4 + 2  # past the end of the first epoch, so the damaged shard has been read
    cfg = parse_config(tiny_config(tmp_path, steps=steps, eval_samples=0, checkpoint_every=100))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", cfg.tracking.uri)  # the environment wins; other tests may have set it
    summary = train(cfg, "pretrain", data, str(tmp_path / "model"))
    assert summary.steps == steps and summary.rejected[reason] >= 1
    metrics = MlflowClient(cfg.tracking.uri).get_run(summary.run_id).data.metrics
    assert metrics[f"data/rejected_{reason}"] >= 1


def test_truncated_tar_without_checksum_keeps_the_complete_samples_before_the_damage(clean, tmp_path, caplog):
    data, shard, _ = damaged(clean, tmp_path / "data", "truncated")
    manifest = fmt.read_manifest(data)
    for info in manifest.shards:
        info.sha256 = info.size = None  # nothing to check the shard against: the damage shows while reading
    fmt.write_manifest(data, manifest)
    caplog.set_level(logging.WARNING)
    samples = SampleStream(list_shards(data, "train"), seed=0, infinite=False)
    keys = [raw["__key__"] for _, raw in samples.iter_raw()]
    before = fmt.shard_keys(os.path.join(clean, shard))
    kept = [k for k in keys if k in before]
    assert samples.rejected["corrupt_shard"] == 1 and 0 < len(kept) < len(before) and kept == before[: len(kept)]
    assert any(shard in r.getMessage() and "truncated or corrupt after" in r.getMessage() for r in caplog.records)


def test_cli_stops_cleanly_when_no_shard_is_usable(clean, tmp_path):
    data, _, _ = damaged(clean, tmp_path / "data", "sha_mismatch")
    manifest = fmt.read_manifest(data)
    for info in manifest.shards:
        info.sha256 = "0" * 64
    fmt.write_manifest(data, manifest)
    cfg = write_config(tmp_path, steps=2, eval_samples=0, num_workers=1)  # the error comes from a DataLoader worker
    res = subprocess.run([sys.executable, "-m", "vlm.cli", "train", "--config", str(cfg), "--data", data,
                          "--output", str(tmp_path / "m")], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "VLM_LOG_LEVEL": "WARNING", "COLUMNS": "1000"})
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "got no samples" in errors[0] and "checksum_mismatch" in errors[0], res.stderr
    for info in manifest.shards_of("train"):  # each refused shard is named, in a warning and in the error
        assert any(info.name in line and "sha256 differs" in line for line in res.stderr.splitlines()), info.name
        assert info.name in errors[0]
    assert not (tmp_path / "m").exists()
