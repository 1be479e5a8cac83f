from typing import NamedTuple

from kfp import dsl

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def prepare(config_yaml: str, overrides_json: str, run_name: str, job_id: str, launcher: str) -> NamedTuple(
        "Prepared", config_uri=str, parent_run_id=str, run_tag=str, data_uri=str, labels_uri=str, pretrain_uri=str,
        curated_uri=str, finetune_uri=str, eval_uri=str):
    """Validate the config, apply the run's knobs, write it to the run folder and open the MLflow parent run."""
    from vlm.steps import prepare as step

    out = step(config_yaml, overrides_json, run_tag=run_name or job_id, launcher=launcher)
    return (out["config_uri"], out["parent_run_id"], out["run_tag"], out["data"], out["labels"], out["pretrain"],
            out["curated"], out["finetune"], out["eval"])
