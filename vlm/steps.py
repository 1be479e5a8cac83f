"""Pipeline steps: what each kfp component calls. Plain functions with simple-typed arguments.

Each step loads the run's resolved config from ``config_uri``, opens its MLflow child run under the pipeline's
parent run, calls the stage function (``vlm.data``, ``vlm.experts``, ``vlm.train``, ``vlm.align``,
``vlm.eval``, ``vlm.registry``) and returns a JSON-able dict that the component turns into kfp outputs.
The stage logic lives in those modules; nothing here re-implements it. Each step reports its start and end, with
its key figure, through :func:`vlm.events.stage` (what ``vlm run`` prints).

Where artefacts go: :class:`vlm.run_context.RunLayout` (content-addressed ``datasets/`` and ``labels/`` that
re-runs reuse, ``runs/<run tag>/`` for one run). The steps hold the run's tracking context
(:class:`vlm.run_context.RunContext`): they open each stage's MLflow run, training's included, and hand it on.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import yaml

from vlm import events, redact, run_context, storage, tracking
from vlm.config import PipelineConfig, load_config, parse_config, set_path

log = logging.getLogger(__name__)


def _absolute(uri: str, base: Path) -> str:
    """Make a relative local path absolute (kfp runs steps from a temporary working directory)."""
    if not uri or storage.is_s3(uri) or uri.startswith(("file://", "builtin:")) or os.path.isabs(uri):
        return uri
    return str((base / uri).resolve())


def _absolute_tracking(uri: str, base: Path) -> str:
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str((base / uri[len("sqlite:///"):]).resolve())
    return uri


def resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Resolve relative local paths in a raw config dict against ``base`` (the user's working directory)."""
    data = json.loads(json.dumps(data or {}))
    data["root"] = _absolute(data.get("root", "runs"), base)
    tracking_ = data.setdefault("tracking", {})
    tracking_["uri"] = _absolute_tracking(tracking_.get("uri", "sqlite:///mlflow.db"), base)
    section = data.setdefault("data", {})
    if section.get("input"):
        section["input"] = _absolute(section["input"], base)
    return data


# ------------------------------------------------------------------------------------------ prepare
@events.stage("prepare", summary=lambda out: f"run {out['run_tag']}, MLflow parent run {out['parent_run_id']}",
              run_key="parent_run_id")
def prepare(config_yaml: str, overrides_json: str = "{}", run_tag: str = "", parent_run_id: str = "",
            launcher: str = "local") -> dict[str, Any]:
    """Validate the config, apply the pipeline's knobs, resolve each stage's training config (stage two's recipe
    into ``align.finetune``), write it to the run folder, open the parent run."""
    data = yaml.safe_load(config_yaml) or {}
    for dotted, value in (json.loads(overrides_json or "{}") or {}).items():
        if value not in (None, ""):
            set_path(data, dotted, value)
    data.setdefault("cluster", {})["launcher"] = launcher
    from vlm.align.tune import stage_two_config

    cfg = stage_two_config(parse_config(data, source="pipeline config"))  # each stage's TrainConfig, resolved
    tag = run_context.run_tag(run_tag)
    layout = run_context.RunLayout.of(cfg, tag)
    text = yaml.safe_dump(redact.scrub_config(cfg.model_dump(mode="json"), log), sort_keys=False)
    storage.write_text(layout.config, text)
    tracking.configure(cfg.tracking.uri)
    import mlflow
    from mlflow import MlflowClient

    params = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in {"tracking"}}
    if not parent_run_id:
        exp_id = tracking.ensure_experiment(cfg.experiment_name())
        mlflow.set_experiment(experiment_id=exp_id)
        previous = tracking.find_pipeline_run(exp_id, tag)
        if previous is not None:  # a re-run (e.g. after a crash): one parent run per pipeline run
            tracking.reopen_pipeline_run(previous)
            parent_run_id = previous.info.run_id
        else:
            parent_run_id = MlflowClient().create_run(exp_id, run_name=f"pipeline-{tag}",
                                                      tags={tracking.PIPELINE_TAG: cfg.name,
                                                            tracking.RUN_TAG: tag}).info.run_id
    params = tracking.unlogged_params(parent_run_id, params)
    run = tracking.Run(parent_run_id)
    run.set_tags({tracking.RUN_TAG: tag, "vlm.launcher": launcher})
    run.log_params(params)
    run.log_text(text, "config.yaml")
    log.info("pipeline run %s: config at %s, MLflow parent run %s", tag, layout.config, parent_run_id)
    return {"config_uri": layout.config, "parent_run_id": parent_run_id, "run_tag": tag, **layout.to_dict()}


def _stage(config_uri: str, stage: str, parent_run_id: str):
    """The run's config and the stage's MLflow run (a context manager) under the pipeline's parent run."""
    cfg = load_config(config_uri)
    return cfg, run_context.RunContext.of(cfg, parent_run_id).open(stage)


# ------------------------------------------------------------------------------------------ stages
@events.stage("shard", end=False)
def shard_partitions(config_uri: str, data_uri: str) -> list[int]:
    """Plan the sharding fan-out: the partition indices to run (``[]`` when the dataset is complete)."""
    from vlm.data.shard import plan_partitions

    cfg = load_config(config_uri)
    return list(range(len(plan_partitions(cfg.data.input, data_uri, cfg.data)["partitions"])))


@events.stage("shard", start=False, end=False)
def shard_partition(config_uri: str, data_uri: str, partition: int) -> dict[str, Any]:
    """Shard one partition of the plan (resumable per chunk)."""
    from vlm.data.shard import shard_partition as run_partition

    cfg = load_config(config_uri)
    return run_partition(cfg.data.input, data_uri, cfg.data, int(partition))


@events.stage("shard", start=False, summary=lambda out: (
    f"{out['num_samples']} samples in {out['num_shards']} shards, {sum(out['rejected'].values())} rejected"))
def shard(config_uri: str, data_uri: str, parent_run_id: str = "") -> dict[str, Any]:
    """Merge the partitions into the dataset (global de-duplication, final shards, manifest.json)."""
    from vlm.data.shard import merge_partitions

    cfg, run_ctx = _stage(config_uri, "shard", parent_run_id)
    with run_ctx as run:
        manifest = merge_partitions(cfg.data.input, data_uri, cfg.data)
        summary = manifest.to_dict()
        run.log_params({"input": cfg.data.input, "output": data_uri, "partitions": summary.get("partitions", 1)})
        run.log_metrics({"num_samples": manifest.num_samples,
                         **{f"rejected.{k}": v for k, v in manifest.rejected.items()}})
        run.log_dict(summary, "manifest.json")
    return {"data_uri": data_uri, "num_samples": manifest.num_samples, "num_shards": len(manifest.shards),
            "rejected": manifest.rejected, "run_id": run.run_id}


@events.stage("experts", end=False)
def expert_groups(config_uri: str, data_uri: str) -> list[list[str]]:
    from vlm.experts.runner import shard_groups

    cfg = load_config(config_uri)
    if not _experts_enabled(cfg):
        return []
    return shard_groups(data_uri, cfg.experts.shard_groups)


def _experts_enabled(cfg: PipelineConfig) -> bool:
    return bool(cfg.experts.enabled and cfg.experts.experts)


@events.stage("experts", start=False, end=False)
def experts(config_uri: str, data_uri: str, labels_uri: str, shards: list[str] | None = None,
            parent_run_id: str = "") -> dict[str, Any]:
    from vlm.experts.runner import run_experts

    cfg, run_ctx = _stage(config_uri, "experts", parent_run_id)
    with run_ctx as run:
        summary = run_experts(data_uri, labels_uri, cfg.experts.experts, cfg.experts, shards=shards).to_dict()
        run.log_params({"experts": cfg.experts.experts, "shards": len(shards or []) or "all"})
        run.log_dict(summary, "experts_summary.json")
    return {**summary, "run_id": run.run_id}


@events.stage("experts", start=False, summary=lambda uri: _labels_summary(uri))
def experts_index(config_uri: str, data_uri: str, labels_uri: str) -> str:
    """Write ``labels.json`` after the fan-out; returns the labels URI, or "" when experts are off."""
    from vlm.experts.runner import write_labels_index

    if not _experts_enabled(load_config(config_uri)):
        return ""
    write_labels_index(data_uri, labels_uri)
    return labels_uri


def _labels_summary(labels_uri: str) -> str:
    from vlm.data.format import read_labels_index

    if not labels_uri:
        return "off"
    per_expert = read_labels_index(labels_uri)["experts"]
    total = sum(e["labelled"] for e in per_expert.values())
    return f"{total} labels written (" + ", ".join(f"{n} {e['labelled']}" for n, e in per_expert.items()) + ")"


@events.stage("{stage}", summary=lambda out: _train_summary(out))
def train(config_uri: str, stage: str, data_uri: str, output_uri: str, init_from: str = "",
          labels_uri: str = "", parent_run_id: str = "", run_tag: str = "") -> dict[str, Any]:
    """Run a training stage through :func:`vlm.train.launch.launch`: ``torchrun`` here (launcher ``local``, even
    for one process), else a PyTorchJob or TrainJob (``vlm.k8s``); the summary is also at ``<output>-summary.json``.
    ``launch`` opens the stage's MLflow run in this process (a child of ``parent_run_id``, or the run its
    checkpoints were written in) and hands it to the job."""
    cfg = load_config(config_uri)
    if stage == "finetune" and not cfg.align.enabled:
        return {"output": init_from, "run_id": "", "skipped": True}
    if stage == "finetune" and cfg.align.on_too_few == "skip" and _num_samples(data_uri) < max(cfg.align.min_kept, 1):
        log.warning("curated set %s is too small; fine-tuning skipped, the stage-one model %s carries on",
                    data_uri, init_from)
        return {"output": init_from, "run_id": "", "skipped": True}
    from vlm.train.launch import launch

    labels_uri = labels_uri if cfg.model.experts else ""
    result = launch(cfg, stage, data_uri, output_uri, init_from, labels_uri, config_uri=config_uri, isolate=True,
                    run_tag=run_tag, parent_run_id=parent_run_id,
                    summary_uri=storage.join(output_uri.rstrip("/") + "-summary.json"))
    return {**result.to_dict(), "output": result.model_uri or output_uri}


def _train_summary(out: dict[str, Any]) -> str:
    if out.get("skipped"):
        return "skipped: the stage-one model carries on"
    before, after = out.get("eval_before") or {}, out.get("eval_after") or {}
    keys = sorted(set(before) & set(after))
    if keys:
        mean = lambda m: sum(m[k] for k in keys) / len(keys)  # noqa: E731
        return f"loss {mean(before):.2f} -> {mean(after):.2f} (held-out, {out.get('steps')} steps)"
    return f"train loss {out.get('final_loss', float('nan')):.2f} ({out.get('steps')} steps)"


def _num_samples(data_uri: str) -> int:
    from vlm.data.format import read_manifest

    try:
        return read_manifest(data_uri).num_samples
    except FileNotFoundError:
        return 0


@events.stage("curate", summary=lambda out: _curate_summary(out))
def curate(config_uri: str, model_uri: str, data_uri: str, curated_uri: str, parent_run_id: str = "") -> dict[str, Any]:
    from vlm.align import generate_and_curate

    cfg, run_ctx = _stage(config_uri, "align-curate", parent_run_id)
    if not cfg.align.enabled:
        log.info("align.enabled=false: no curation, no fine-tuning")
        return {"kept": 0, "skipped": True}
    with run_ctx as run:
        result = generate_and_curate(model_uri, data_uri, curated_uri, cfg.align, run_id=run.run_id or None)
        summary = {**result.to_dict(), "run_id": run.run_id}
        if result.kept < cfg.align.min_kept:
            reasons = ", ".join(f"{k}={v}" for k, v in result.rejected_by_reason.items()) or "none"
            msg = (f"only {result.kept} of {result.sampled} descriptions survived curation (align.min_kept="
                   f"{cfg.align.min_kept}; rejected by reason: {reasons}); see {storage.join(curated_uri, 'curated.json')}")
            if cfg.align.on_too_few == "fail":
                raise RuntimeError(msg + ". Train stage one longer, or set align.on_too_few: skip")
            log.warning("%s; skipping fine-tuning (align.on_too_few=skip)", msg)
            run.set_tags({"vlm.align.skipped": msg[:5000]})
            summary["skipped"] = True
    return summary


def _curate_summary(out: dict[str, Any]) -> str:
    if "sampled" not in out:
        return "skipped (align.enabled=false)"
    text = f"{out['kept']} descriptions kept, {out['sampled'] - out['kept']} rejected"
    return text + (" (too few: fine-tuning skipped)" if out.get("skipped") else "")


@events.stage("evaluate", run_arg="train_run_id", summary=lambda out: ", ".join(
    f"{k} {out['metrics'][k]:.3f}" for k in ("cider", "vqa_accuracy") if k in out.get("metrics", {})))
def evaluate(config_uri: str, model_uri: str, data_uri: str, output_uri: str, train_run_id: str = "",
             parent_run_id: str = "") -> dict[str, Any]:
    """Evaluate into the training run when known (DESIGN: evaluation attaches to the training run)."""
    from vlm.eval.runner import evaluate as run_eval

    cfg = load_config(config_uri)
    tracking.configure(cfg.tracking.uri)
    ecfg = cfg.eval.model_copy(update={"compare_to": cfg.eval.compare_to or cfg.registered_model_name()})
    if train_run_id:
        return run_eval(model_uri, data_uri, ecfg, run_id=train_run_id, output=output_uri,
                        experiment=cfg.experiment_name(), tracking_uri=cfg.tracking.uri).to_dict()
    with run_context.RunContext.of(cfg, parent_run_id).open("evaluate") as run:
        return run_eval(model_uri, data_uri, ecfg, run_id=run.run_id, output=output_uri,
                        experiment=cfg.experiment_name(), tracking_uri=cfg.tracking.uri).to_dict()


@events.stage("register", run_arg="train_run_id", summary=lambda out: (
    f"{out['name']} v{out['version']} (alias challenger), gate {'passes' if out['gate_passed'] else 'fails'}"
    if out["version"] else "off (registry.enabled=false)"))
def register(config_uri: str, model_uri: str, metrics: dict[str, float], data_uri: str = "", labels_uri: str = "",
             train_run_id: str = "", parent_run_id: str = "") -> dict[str, Any]:
    """Register a new version (alias ``challenger``) and evaluate the promotion gate (a dry run: no alias moves)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from vlm.registry.mlflow_registry import (Registration, evaluate_gate, lineage_tags, metrics_from_tags,
                                              register_model)

    cfg = load_config(config_uri)
    tracking.configure(cfg.tracking.uri)
    name = cfg.registered_model_name()
    if not cfg.registry.enabled:
        log.info("registry.enabled=false: the model is not registered")
        return Registration(name=name, version="", gate_passed=False, reasons=["registry disabled"]).to_dict()
    tags = lineage_tags(model_uri, data_uri=data_uri or None, labels_uri=labels_uri or None,
                        training_run_id=train_run_id or None, config_uri=config_uri)
    if parent_run_id:
        tags["vlm.pipeline_run_id"] = parent_run_id
    version = register_model(model_uri, name, metrics=metrics, tags=tags, run_id=train_run_id or None,
                             experiment=cfg.experiment_name(), tracking_uri=cfg.tracking.uri)
    try:
        champion = metrics_from_tags(MlflowClient().get_model_version_by_alias(name, "champion").tags)
    except MlflowException:
        champion = None
    passed, reasons, comparison = evaluate_gate(metrics, champion, cfg.registry.gate)
    log.info("registered %s v%s; gate %s: %s", name, version, "passes" if passed else "fails", "; ".join(reasons))
    out = Registration(name=name, version=str(version), gate_passed=bool(passed), reasons=reasons,
                       comparison=comparison).to_dict()
    storage.write_text(_registration_uri(config_uri), json.dumps(out, indent=2, default=str))
    return out


def _registration_uri(config_uri: str) -> str:
    """``registration.json`` beside the run's ``config.yaml``."""
    base = config_uri.rsplit("/", 1)[0] if storage.is_s3(config_uri) else str(Path(config_uri).parent)
    return storage.join(base, "registration.json")


@events.stage("promote", summary=lambda out: f"{out['name']} v{out['version']} " + (
    "is now champion" if out["promoted"] else f"not promoted ({'; '.join(out.get('reasons') or [])})"))
def promote(config_uri: str, name: str = "", version: str = "") -> dict[str, Any]:
    """Promote ``name``/``version`` (default: what this run registered) when the gate passes."""
    from vlm.registry.mlflow_registry import Registration, promote_if_better

    if not (name and version):
        registered = Registration(**json.loads(storage.read_text(_registration_uri(config_uri))))
        name, version = registered.name, registered.version
    cfg = load_config(config_uri)
    tracking.configure(cfg.tracking.uri)
    return promote_if_better(name, version, cfg.registry.gate, tracking_uri=cfg.tracking.uri).to_dict()


def finish(config_yaml: str, run_tag: str, state: str, error: str = "", parent_run_id: str = "") -> str:
    """The exit handler: close the MLflow parent run as FINISHED, or FAILED with the reason.

    The exit task cannot consume other tasks' outputs, so the parent run is found by its ``vlm.run_tag``.
    """
    from mlflow import MlflowClient

    cfg = parse_config(yaml.safe_load(config_yaml) or {}, source="pipeline config")
    tracking.configure(cfg.tracking.uri)
    client = MlflowClient()
    if not parent_run_id:
        exp = client.get_experiment_by_name(cfg.experiment_name())
        run = tracking.find_pipeline_run(exp.experiment_id, run_context.run_tag(run_tag)) if exp else None
        if run is None:
            log.warning("no MLflow parent run tagged vlm.run_tag=%s; nothing to close", run_context.run_tag(run_tag))
            return ""
        parent_run_id = run.info.run_id
    if state.upper() in {"SUCCEEDED", "SUCCESS"}:
        client.set_terminated(parent_run_id, "FINISHED")
    else:
        tracking.mark_failed(parent_run_id, f"pipeline {state}: {error}".strip())
    return parent_run_id


def load_resolved(config_uri: str) -> PipelineConfig:
    return load_config(config_uri)
