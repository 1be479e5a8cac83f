from typing import List

from kfp import dsl
from kfp.dsl import Dataset, Output

from components import IMAGE

# The sharding fan-out: shard-partitions (plan) -> ParallelFor(shard-partition) -> shard (merge). The loop items
# carry every parameter a partition step needs (kfp 2.17's local runner substitutes the loop item for every
# task-output parameter inside a ParallelFor; see components/experts.py), the partition index as a string (loop
# items may turn integers into floats).


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def shard_partitions(config_uri: str, data_uri: str) -> List[dict]:
    """Count the input and split it into partitions (data.partitions); one item per partition step."""
    from vlm.steps import shard_partitions as step

    # at least one item: a complete dataset plans no partition, and its one step returns at once
    return [{"config_uri": config_uri, "data_uri": data_uri, "partition": str(i)}
            for i in (step(config_uri, data_uri) or [0])]


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def shard_partition(config_uri: str, data_uri: str, partition: str) -> str:
    """Shard one partition: validate, transform and stage its records (resumable per chunk)."""
    import json

    from vlm.steps import shard_partition as step

    return json.dumps(step(config_uri, data_uri, int(float(partition))))


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def shard(config_uri: str, data_uri: str, parent_run_id: str, partitions: List[str], dataset: Output[Dataset]) -> int:
    """Merge the partitions: global de-duplication, final shards and manifest.json; returns the sample count."""
    import json

    from vlm.steps import shard as step

    out = step(config_uri, data_uri, parent_run_id)
    dataset.metadata.update({"uri": out["data_uri"], "num_samples": out["num_samples"], "num_shards": out["num_shards"],
                             "rejected": json.dumps(out["rejected"])})
    with open(dataset.path, "w") as fh:
        fh.write(out["data_uri"])
    return int(out["num_samples"])
