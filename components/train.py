from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def pretrain(config_uri: str, dataset: Input[Dataset], labels_uri: str, output_uri: str, parent_run_id: str,
             run_tag: str, model: Output[Model]) -> str:
    """Stage one: train the adapter (torchrun here, or a PyTorchJob on the cluster); returns the MLflow run id."""
    from vlm.steps import train as step

    out = step(config_uri, "pretrain", dataset.metadata["uri"], output_uri, labels_uri=labels_uri,
               parent_run_id=parent_run_id, run_tag=run_tag)
    model.metadata.update({"uri": out.get("output", output_uri), "run_id": out.get("run_id") or ""})
    with open(model.path, "w") as fh:
        fh.write(out.get("output", output_uri))
    return out.get("run_id") or ""


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def finetune(config_uri: str, curated: Input[Dataset], init_model: Input[Model], labels_uri: str, output_uri: str,
             parent_run_id: str, run_tag: str, model: Output[Model]) -> str:
    """Stage two: fine-tune the stage-one model on the curated set; returns the MLflow run id."""
    from vlm.steps import train as step

    # curated samples keep their original keys, so the expert labels are found by key
    out = step(config_uri, "finetune", curated.metadata["uri"], output_uri, init_from=init_model.metadata["uri"],
               labels_uri=labels_uri, parent_run_id=parent_run_id, run_tag=run_tag)
    if out.get("skipped"):  # too few curated descriptions (align.on_too_few=skip): stage one carries on
        out["run_id"] = init_model.metadata.get("run_id", "")
    model.metadata.update({"uri": out.get("output", output_uri), "run_id": out.get("run_id") or "",
                           "finetune_skipped": bool(out.get("skipped"))})
    with open(model.path, "w") as fh:
        fh.write(out.get("output", output_uri))
    return out.get("run_id") or ""
