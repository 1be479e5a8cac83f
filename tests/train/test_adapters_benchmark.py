"""benchmarks/adapters.py on tiny models: each adapter trains in its own `python -m vlm.train` process under a
wall-clock budget (train.max_seconds), then the held-out probe; the table has one finite row per adapter."""

from __future__ import annotations

import json
import math

import yaml

from benchmarks import adapters as bench
from tests.train.conftest import tiny_config, write_shards
from vlm.models.config import ModelConfig
from vlm.models.model import build_model

TINY_ADAPTER = {"hidden_size": 32, "num_heads": 4, "num_queries": 4, "num_layers": 1}


def test_benchmark_trains_each_adapter_within_the_budget(tmp_path):
    data = tmp_path / "data"
    write_shards(data, "train", 48, 12)
    write_shards(data, "test", 6, 6, offset=1)
    config = tmp_path / "base.yaml"
    config.write_text(yaml.safe_dump(tiny_config(tmp_path, steps=3, batch_size=4)))
    out_json, out_md = tmp_path / "table.json", tmp_path / "table.md"
    sets = [f"--set=model.adapter.{k}={v}" for k, v in TINY_ADAPTER.items()]
    rc = bench.main(["--config", str(config), "--data", str(data), "--budget-s", "3", "--probe-images", "4",
                     "--adapters", "linear,tinylm", "--workdir", str(tmp_path / "work"), *sets,
                     "--output", str(out_json), "--output", str(out_md)])
    assert rc == 0
    doc = json.loads(out_json.read_text())
    rows = {r["adapter"]: r for r in doc["rows"]}
    assert list(rows) == ["linear", "tinylm"] and doc["budget_s"] == 3
    for name, row in rows.items():
        assert set(bench.COLUMNS) <= set(row)
        assert all(math.isfinite(row[c]) for c in bench.COLUMNS if c != "adapter"), row
        assert 0 <= row["overall"] <= 1 and 0 <= row["image_needed"] <= 1 and row["samples_per_s"] > 0
        # the budget, not train.steps (the config's 3, raised by the benchmark), ends each run
        assert row["steps"] == sum(row["stage_steps"]) > 3 and min(row["stage_steps"]) >= 1
        assert row["probe"]["probe/n_images"] == 4 and row["probe"]["probe/n_questions"] == 4
        model_cfg = ModelConfig.model_validate({**tiny_config(tmp_path)["model"],
                                                "adapter": {"type": name, **TINY_ADAPTER}})
        assert row["trainable_params"] == build_model(model_cfg).parameter_counts()["trainable"]
    assert len(rows["tinylm"]["stage_steps"]) == 2 and len(rows["linear"]["stage_steps"]) == 1
    md = out_md.read_text().splitlines()
    assert len(md) == 4 and md[2].startswith("| linear | ") and md[3].startswith("| tinylm | ")
