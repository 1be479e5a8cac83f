from typing import List

from kfp import dsl
from kfp.dsl import Dataset, Input

from components import IMAGE

# The fan-out items carry every parameter the experts step needs: kfp's local runner (2.17) substitutes the
# loop item for *every* task-output parameter inside a ParallelFor, so only loop-item fields, pipeline
# parameters and artefacts reach the step intact. On a cluster both forms work.


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def expert_groups(config_uri: str, dataset: Input[Dataset], labels_uri: str, parent_run_id: str) -> List[dict]:
    """Split the data shards into groups for the experts fan-out (dsl.ParallelFor); [] when experts are off."""
    from vlm.steps import expert_groups as step

    return [{"config_uri": config_uri, "labels_uri": labels_uri, "parent_run_id": parent_run_id, "shards": group}
            for group in step(config_uri, dataset.metadata["uri"])]


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def experts(config_uri: str, dataset: Input[Dataset], labels_uri: str, shards: List[str], parent_run_id: str) -> str:
    """Label one group of data shards with every configured expert (resumable per shard)."""
    import json

    from vlm.steps import experts as step

    return json.dumps(step(config_uri, dataset.metadata["uri"], labels_uri, list(shards), parent_run_id), default=str)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def experts_index(config_uri: str, dataset: Input[Dataset], labels_uri: str, group_summaries: List[str]) -> str:
    """After the fan-out: write labels.json; returns the labels URI ("" when no experts are configured)."""
    from vlm.steps import experts_index as step

    return step(config_uri, dataset.metadata["uri"], labels_uri)
