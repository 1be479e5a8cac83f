from kfp import dsl
from kfp.dsl import Dataset, Input, Model

from components import IMAGE


# register returns one bool (the gate) rather than a NamedTuple: kfp's local runner cannot resolve NamedTuple
# fields inside dsl.If conditions (kfp 2.17). The name/version go to the run folder for the promote step.
@dsl.component(base_image=IMAGE, install_kfp_package=False)
def register(config_uri: str, model: Input[Model], dataset: Input[Dataset], labels_uri: str, metrics_json: str,
             parent_run_id: str) -> bool:
    """Log + register the model (alias challenger); returns whether the promotion gate passes."""
    import json

    from vlm.steps import register as step

    out = step(config_uri, model.metadata["uri"], json.loads(metrics_json), data_uri=dataset.metadata["uri"],
               labels_uri=labels_uri, train_run_id=model.metadata.get("run_id", ""), parent_run_id=parent_run_id)
    return bool(out["gate_passed"])


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def promote(config_uri: str) -> bool:
    """Move alias champion to the version this run registered (re-checks the gate, records it in tags)."""
    from vlm.steps import promote as step

    return bool(step(config_uri)["promoted"])


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def finish(config_yaml: str, run_name: str, job_id: str, status: dsl.PipelineTaskFinalStatus) -> str:
    """Exit handler: close the MLflow parent run, FAILED with the error when a step failed."""
    from vlm.steps import finish as step

    error = status.error_message or ""
    return step(config_yaml, run_name or job_id, status.state, error)
