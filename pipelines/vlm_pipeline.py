"""The vlm-platform pipeline (kfp v2)::

    prepare -> shard-partitions -> ParallelFor(shard-partition) -> shard (merge) -> expert-groups
            -> ParallelFor(experts) -> experts-index -> pretrain -> curate -> finetune -> evaluate -> register
            -> [If gate passed] promote

all inside an ExitHandler whose exit task closes the MLflow parent run (FAILED, with the error, when a step
failed). The same definition runs locally through ``kfp.local`` (``vlm run``) and on Kubeflow (``vlm compile``
/ ``vlm submit``); with ``launcher=pytorchjob`` the training steps create PyTorchJobs.
"""


from kfp import dsl

from components.align import curate
from components.evaluate import evaluate
from components.experts import expert_groups, experts, experts_index
from components.prepare import prepare
from components.register import finish, promote, register
from components.shard import shard, shard_partition, shard_partitions
from components.train import finetune, pretrain

PIPELINE_NAME = "vlm-platform"


def build_pipeline(cluster: "dict | None" = None):
    """The pipeline function. ``cluster`` (a ClusterConfig dict) adds Kubernetes env and GPU placement."""

    @dsl.pipeline(name=PIPELINE_NAME, description="Train, align, evaluate and register a vision-language model.")
    def vlm_pipeline(config_yaml: str, overrides_json: str = "{}", run_name: str = "", launcher: str = "local"):
        job_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER
        exit_task = _step(finish(config_yaml=config_yaml, run_name=run_name, job_id=job_id), cluster)
        with dsl.ExitHandler(exit_task, name="vlm-run"):
            prep = _step(prepare(config_yaml=config_yaml, overrides_json=overrides_json, run_name=run_name,
                                 job_id=job_id, launcher=launcher), cluster)
            cfg, parent = prep.outputs["config_uri"], prep.outputs["parent_run_id"]
            labels_uri = prep.outputs["labels_uri"]

            # deterministic steps (content-addressed outputs): kfp may reuse earlier results
            # sharding fan-out: data.partitions partitions in parallel, then one merge writes the manifest
            plan = _step(shard_partitions(config_uri=cfg, data_uri=prep.outputs["data_uri"]), cluster, cache=True)
            with dsl.ParallelFor(plan.output, name="shard-partitions-loop") as part:
                staged = _step(shard_partition(config_uri=part.config_uri, data_uri=part.data_uri,
                                               partition=part.partition), cluster, cache=True)
            data = _step(shard(config_uri=cfg, data_uri=prep.outputs["data_uri"], parent_run_id=parent,
                               partitions=dsl.Collected(staged.output)), cluster, cache=True)
            dataset = data.outputs["dataset"]
            groups = _step(expert_groups(config_uri=cfg, dataset=dataset, labels_uri=labels_uri, parent_run_id=parent),
                           cluster, cache=True)
            with dsl.ParallelFor(groups.output, name="expert-shard-groups") as group:
                labelled = _step(experts(config_uri=group.config_uri, dataset=dataset, labels_uri=group.labels_uri,
                                         shards=group.shards, parent_run_id=group.parent_run_id), cluster, cache=True,
                                 gpu=True)
            index = _step(experts_index(config_uri=cfg, dataset=dataset, labels_uri=labels_uri,
                                        group_summaries=dsl.Collected(labelled.output)), cluster, cache=True)

            stage_one = _step(pretrain(config_uri=cfg, dataset=dataset, labels_uri=index.outputs["Output"],
                                       output_uri=prep.outputs["pretrain_uri"], parent_run_id=parent,
                                       run_tag=prep.outputs["run_tag"]), cluster)

            # stage two; with align.enabled=false (or too few curated descriptions and align.on_too_few=skip)
            # both steps pass the stage-one model through, so the DAG stays flat
            curated = _step(curate(config_uri=cfg, model=stage_one.outputs["model"], dataset=dataset,
                                   curated_uri=prep.outputs["curated_uri"], parent_run_id=parent), cluster, gpu=True)
            stage_two = _step(finetune(config_uri=cfg, curated=curated.outputs["curated"],
                                       init_model=stage_one.outputs["model"], labels_uri=index.outputs["Output"],
                                       output_uri=prep.outputs["finetune_uri"],
                                       parent_run_id=parent, run_tag=prep.outputs["run_tag"]), cluster)
            model = stage_two.outputs["model"]

            scored = _step(evaluate(config_uri=cfg, model=model, dataset=dataset, output_uri=prep.outputs["eval_uri"],
                                    parent_run_id=parent), cluster, gpu=True)
            registered = _step(register(config_uri=cfg, model=model, dataset=dataset,
                                        labels_uri=index.outputs["Output"], metrics_json=scored.outputs["Output"],
                                        parent_run_id=parent), cluster)
            with dsl.If(registered.output == True, name="gate-passed"):  # noqa: E712 (kfp DSL)
                _step(promote(config_uri=cfg), cluster)

    return vlm_pipeline


def _step(task, cluster: dict | None, cache: bool = False, gpu: bool = False):
    """Caching, and on a cluster: env from the chart's ConfigMap/Secret and GPU placement (kfp-kubernetes)."""
    task.set_caching_options(cache)
    if not cluster:
        return task
    from kfp import kubernetes

    for name in cluster.get("env_from_config_maps", []):
        kubernetes.use_config_map_as_env(task, config_map_name=name,
                                         config_map_key_to_env={k: k for k in cluster.get("config_map_keys", [])})
    for name in cluster.get("env_from_secrets", []):
        kubernetes.use_secret_as_env(task, secret_name=name,
                                     secret_key_to_env={k: k for k in cluster.get("secret_keys", [])})
    if gpu and cluster.get("gpus_per_node"):
        task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
        for tol in cluster.get("tolerations", []):
            kubernetes.add_toleration(task, key=tol["key"], operator=tol.get("operator", "Equal"),
                                      value=tol.get("value"), effect=tol.get("effect"))
        for key, value in (cluster.get("node_selector") or {}).items():
            kubernetes.add_node_selector(task, label_key=key, label_value=value)
    return task
