"""The pipeline's sharding fan-out through kfp's local runner: plan -> ParallelFor(partition) -> merge."""

# no `from __future__ import annotations`: kfp reads the pipeline function's annotations as types

import json
from pathlib import Path

import yaml


def test_three_partitions_through_kfp_match_one_partition(tmp_path, monkeypatch):
    from kfp import dsl, local

    from components.shard import shard, shard_partition, shard_partitions
    from vlm.data.config import ShardConfig
    from vlm.data.shard import shard_dataset
    from vlm.steps import prepare

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    data = {"input": "builtin:shapes", "builtin_size": 24, "builtin_image_size": 32, "samples_per_shard": 4,
            "partitions": 3, "min_partition_records": 1}
    cfg = {"name": "fanout", "root": str(tmp_path / "runs"), "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
           "data": data}
    run = prepare(yaml.safe_dump(cfg), run_tag="fanout")

    @dsl.pipeline(name="shard-fanout")
    def fanout(config_uri: str, data_uri: str, parent: str):  # the same wiring as pipelines/vlm_pipeline.py
        plan = shard_partitions(config_uri=config_uri, data_uri=data_uri)
        with dsl.ParallelFor(plan.output) as part:
            staged = shard_partition(config_uri=part.config_uri, data_uri=part.data_uri, partition=part.partition)
        shard(config_uri=config_uri, data_uri=data_uri, parent_run_id=parent, partitions=dsl.Collected(staged.output))

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"), raise_on_error=True)
    fanout(config_uri=run["config_uri"], data_uri=run["data"], parent=run["parent_run_id"])
    manifest = json.loads(Path(run["data"], "manifest.json").read_text())
    assert manifest["partitions"] == 3 and manifest["num_samples"] == 24
    one = shard_dataset("builtin:shapes", str(tmp_path / "one"), ShardConfig(**{**data, "partitions": 1}))
    assert one.partitions == 1 and manifest["shards"] == one.to_dict()["shards"]
    assert not Path(run["data"], "_parts").exists()
    # (a re-run on the complete dataset, one no-op partition step, is covered by test_pipeline_local's second run)
