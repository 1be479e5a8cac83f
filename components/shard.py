from kfp import dsl
from kfp.dsl import Dataset, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def shard(config_uri: str, data_uri: str, parent_run_id: str, dataset: Output[Dataset]) -> int:
    """Validate, de-duplicate and shard the raw image-text pairs; returns the accepted sample count."""
    import json

    from vlm.steps import shard as step

    out = step(config_uri, data_uri, parent_run_id)
    dataset.metadata.update({"uri": out["data_uri"], "num_samples": out["num_samples"], "num_shards": out["num_shards"],
                             "rejected": json.dumps(out["rejected"])})
    with open(dataset.path, "w") as fh:
        fh.write(out["data_uri"])
    return int(out["num_samples"])
