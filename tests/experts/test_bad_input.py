"""Experts on a damaged dataset: label shards stay aligned with their data shards (``docs/formats.md``).

A data shard failing its manifest check gets no label shard and no marker (counted, named in a warning, not
done in labels.json) and is computed by the next run once repaired; an undecodable image gets no label.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.data.damage import DAMAGES, REASON, damaged, shapes
from vlm.data import format as fmt
from vlm.experts.config import ExpertsConfig
from vlm.experts.runner import marker_uri, run_experts
from vlm.experts.shards import read_label_shard

CFG = ExpertsConfig(batch_size=4, resolution=32)


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> str:
    return shapes(tmp_path_factory.mktemp("clean"), n=20)


def _warned(caplog, *words: str) -> bool:
    return any(r.levelno == logging.WARNING and all(w in r.getMessage() for w in words) for r in caplog.records)


@pytest.mark.parametrize("damage", DAMAGES)
def test_damage_keeps_label_shards_aligned(clean, tmp_path: Path, caplog, damage):
    data, shard, key = damaged(clean, tmp_path / "data", damage)
    labels = tmp_path / "labels"
    caplog.set_level(logging.WARNING)
    summary = run_experts(data, str(labels), ["edges"], CFG)
    reason = REASON[damage]
    assert summary.rejected == {reason: 1}
    index = json.loads((labels / "labels.json").read_text())["experts"]["edges"]
    n_shards = len(fmt.find_shards(data))
    if damage == "corrupt_image":
        keys = fmt.shard_keys(os.path.join(data, shard))
        got = read_label_shard(str(labels / "edges" / shard), "edges")
        assert sorted(got) == sorted(k for k in keys if k != key)  # the bad image's key has no label
        marker = json.loads(Path(marker_uri(str(labels), "edges", shard)).read_text())
        assert [f["key"] for f in marker["failures"]] == [key] and marker["failed"] == 1
        assert index["complete"] and summary.shards_rejected == {}
        assert _warned(caplog, shard, key, "undecodable")
        return
    assert list(summary.shards_rejected) == [shard] and shard in summary.shards_rejected[shard]
    assert not (labels / "edges" / shard).exists() and not Path(marker_uri(str(labels), "edges", shard)).exists()
    assert not index["complete"] and index["shards_done"] == n_shards - 1
    assert _warned(caplog, shard, reason, "no labels")
    # repaired: the next run computes that shard only
    shutil.copy(os.path.join(clean, shard), os.path.join(data, shard))
    shutil.copy(os.path.join(clean, fmt.MANIFEST), os.path.join(data, fmt.MANIFEST))
    again = run_experts(data, str(labels), ["edges"], CFG)
    assert again.shards_computed == 1 and again.rejected == {} and again.complete == {"edges": True}


def test_cli_reports_a_refused_shard_without_a_traceback(clean, tmp_path: Path):
    data, shard, _ = damaged(clean, tmp_path / "data", "sha_mismatch")
    res = subprocess.run([sys.executable, "-m", "vlm.cli", "experts", data, str(tmp_path / "labels"), "-e", "edges",
                          "--batch-size", "4"], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "VLM_LOG_LEVEL": "WARNING", "COLUMNS": "1000"})
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    summary = json.loads(res.stdout[res.stdout.index("{"):])
    assert summary["rejected"] == {"checksum_mismatch": 1} and list(summary["shards_rejected"]) == [shard]
    assert any(shard in line and "sha256 differs" in line for line in res.stderr.splitlines()), res.stderr


def test_shard_found_truncated_while_labelling_leaves_no_partial_label_shard(clean, tmp_path: Path, caplog):
    data, shard, _ = damaged(clean, tmp_path / "data", "truncated")
    manifest = fmt.read_manifest(data)
    for info in manifest.shards:
        info.sha256 = info.size = None  # nothing to check against: the damage shows after some batches
    fmt.write_manifest(data, manifest)
    caplog.set_level(logging.WARNING)
    summary = run_experts(data, str(tmp_path / "labels"), ["edges"], CFG.model_copy(update={"batch_size": 1}))
    assert summary.rejected == {"corrupt_shard": 1} and list(summary.shards_rejected) == [shard]
    assert not (tmp_path / "labels" / "edges" / shard).exists()  # the batches before the damage are discarded
    assert _warned(caplog, shard, "truncated or corrupt after", "no labels")
