from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def curate(config_uri: str, model: Input[Model], dataset: Input[Dataset], curated_uri: str, parent_run_id: str,
           curated: Output[Dataset]) -> int:
    """Stage two data: describe sampled images with the stage-one model, clean, filter; returns kept count."""
    from vlm.steps import curate as step

    out = step(config_uri, model.metadata["uri"], dataset.metadata["uri"], curated_uri, parent_run_id)
    kept = int(out.get("kept", out.get("num_samples", 0)))
    curated.metadata.update({"uri": curated_uri, "kept": kept, "rejected": int(out.get("rejected", 0) or 0)})
    with open(curated.path, "w") as fh:
        fh.write(curated_uri)
    return kept
