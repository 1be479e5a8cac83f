"""`vlm experts DATA_URI LABELS_URI --experts ...`."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from vlm.cli import app


def test_cli_runs_resumes_and_reports(dataset: Path, tmp_path: Path):
    runner = CliRunner()
    labels = tmp_path / "labels"
    res = runner.invoke(app, ["experts", str(dataset), str(labels), "--experts", "edges,segmentation",
                              "--batch-size", "4", "--shards", "train-000000.tar"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout[res.stdout.index("{\n  \"data_uri\""):])
    assert summary["labelled"] == {"edges": 3, "segmentation": 3}
    res = runner.invoke(app, ["experts", str(dataset), str(labels), "-e", "edges,segmentation"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout[res.stdout.index("{\n  \"data_uri\""):])["expert_shards_skipped"] == 2
    assert json.loads((labels / "labels.json").read_text())["experts"]["edges"]["complete"]


def test_cli_config_and_errors(dataset: Path, tmp_path: Path):
    runner = CliRunner()
    cfg = tmp_path / "p.yaml"
    cfg.write_text("experts:\n  experts: [edges]\n  edges: {low: 20, high: 40}\n")
    res = runner.invoke(app, ["experts", str(dataset), str(tmp_path / "l"), "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    index = json.loads((tmp_path / "l" / "labels.json").read_text())
    assert list(index["experts"]) == ["edges"] and index["experts"]["edges"]["options"]["low"] == 20
    res = runner.invoke(app, ["experts", str(dataset), str(tmp_path / "m"), "-e", "depth"])
    assert res.exit_code == 1 and "needs model weights" in res.output
    res = runner.invoke(app, ["experts", str(dataset), str(tmp_path / "m"), "-e", "depth", "--source", "depth"])
    assert res.exit_code != 0 and "EXPERT=PATH_OR_S3_URI" in res.output
    res = runner.invoke(app, ["experts", "--list"])
    assert res.exit_code == 0 and "needs weights" in res.output and "rapidocr" in res.output
