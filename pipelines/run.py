"""Run the pipeline locally (kfp's local runner), compile it for Kubeflow, or submit it to a cluster."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import yaml

from vlm import storage
from vlm.config import PipelineConfig, load_config, parse_config
from vlm.redact import strip_userinfo
from vlm.run_context import RunLayout, run_tag
from vlm.steps import resolve_paths

log = logging.getLogger(__name__)
LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default


def _config_yaml(config_path: str, base: Path | None = None) -> tuple[str, PipelineConfig]:
    """The config as a YAML string with relative local paths made absolute (steps run in temp dirs)."""
    load_config(config_path)  # validate first: a clear error before anything starts
    data = yaml.safe_load(storage.read_text(config_path)) or {}
    data = resolve_paths(data, base or Path.cwd())
    cfg = parse_config(data, source=str(config_path))
    return yaml.safe_dump(data, sort_keys=False), cfg


def _set_images(cfg: PipelineConfig) -> None:
    os.environ.setdefault("VLM_IMAGE", cfg.cluster.image)
    os.environ.setdefault("VLM_TRAINING_IMAGE", cfg.cluster.training_image)


def run_local(config_path: str, run_name: str = "", overrides: dict[str, Any] | None = None,
              verbose: bool = False) -> dict[str, Any]:
    """Run the whole pipeline on this machine: kfp.local SubprocessRunner, torchrun, local MLflow/disk (or S3).

    Prints one line per stage (``pipelines/console.py``); the full logs go to ``<run folder>/logs`` and the stages'
    MLflow runs, and also to the terminal with ``verbose``.
    """
    from kfp import local

    from pipelines.console import capture

    config_yaml, cfg = _config_yaml(config_path)
    _set_images(cfg)
    from pipelines.vlm_pipeline import build_pipeline

    run_name = run_name or f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    pipeline_root = storage.join(cfg.root, "kfp") if not storage.is_s3(cfg.root) else str(Path.cwd() / "local_outputs")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=pipeline_root, raise_on_error=True)
    t0 = time.perf_counter()
    with capture(_local_run_folder(cfg, run_name), cfg.tracking.uri, verbose=verbose):
        build_pipeline()(config_yaml=config_yaml, overrides_json=json.dumps(overrides or {}), run_name=run_name,
                         launcher="local")
    elapsed = time.perf_counter() - t0
    return {"run_name": run_name, "elapsed_s": round(elapsed, 1), **summarize(cfg, run_name)}


def _local_run_folder(cfg: PipelineConfig, run_name: str) -> Path:
    """The run folder (logs, events) on this machine: the run's folder, or under ./local_outputs for an S3 root."""
    run_root = RunLayout.of(cfg, run_tag(run_name)).run_root
    return Path(run_root) if not storage.is_s3(run_root) else Path.cwd() / "local_outputs" / "runs" / run_tag(run_name)


def summarize(cfg: PipelineConfig, run_name: str) -> dict[str, Any]:
    """What the user wants to know at the end: runs, registered version, aliases, the MLflow UI command."""
    from mlflow import MlflowClient

    from vlm import tracking

    tracking.configure(cfg.tracking.uri)
    client = MlflowClient()
    out: dict[str, Any] = {"tracking_uri": os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking.uri,
                           "experiment": cfg.experiment_name()}
    exp = client.get_experiment_by_name(cfg.experiment_name())
    if exp is not None:
        parent = tracking.find_pipeline_run(exp.experiment_id, run_tag(run_name))
        if parent is not None:
            out["parent_run_id"] = parent.info.run_id
            out["status"] = parent.info.status
    name = cfg.registered_model_name()
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except Exception:  # noqa: BLE001 - no registry yet
        versions = []
    mine = [v for v in versions if v.tags.get("vlm.pipeline_run_id") == out.get("parent_run_id")]
    if mine:
        latest = max(mine, key=lambda v: int(v.version))
        model = client.get_registered_model(name)
        out["model"] = {"name": name, "version": str(latest.version),
                        "aliases": sorted(a for a, v in (model.aliases or {}).items() if str(v) == str(latest.version)),
                        "all_aliases": {a: str(v) for a, v in (model.aliases or {}).items()}}
    uri = out["tracking_uri"]
    ui = uri if uri.startswith("http") else LOCAL_UI
    if exp is not None:
        out["experiment_url"] = tracking.experiment_url(ui, exp.experiment_id)
    where = out.get("experiment_url", ui)
    out["mlflow_ui"] = (f"open {where}" if uri.startswith("http")
                        else f"mlflow ui --backend-store-uri {uri}, then open {where}")
    return out


def compile_pipeline(output: str, config_path: str | None = None) -> str:
    """Compile the pipeline for Kubeflow (Kubernetes env and GPU placement from the config's ``cluster``)."""
    from kfp import compiler

    cfg = load_config(config_path) if config_path else PipelineConfig()
    _set_images(cfg)
    from pipelines.vlm_pipeline import build_pipeline

    compiler.Compiler().compile(build_pipeline(cfg.cluster.model_dump(mode="json")), output)
    _pin_images(output, cfg.cluster.image)
    return output


def _pin_images(path: str, image: str) -> None:
    """Set every step's image to ``cluster.image`` (components are decorated once, at import time)."""
    docs = list(yaml.safe_load_all(Path(path).read_text()))
    for ex in docs[0]["deploymentSpec"]["executors"].values():
        if "container" in ex:
            ex["container"]["image"] = image
    Path(path).write_text("---\n".join(yaml.safe_dump(d, sort_keys=False) for d in docs))


def submit(config_path: str, host: str | None = None, namespace: str | None = None, experiment: str | None = None,
           run_name: str = "", package: str | None = None, existing_token: str | None = None) -> dict[str, Any]:
    """Submit a run to Kubeflow Pipelines (``kfp.Client``); training steps run as PyTorchJobs."""
    import tempfile

    import kfp

    cfg = load_config(config_path)
    if not storage.is_s3(cfg.root):
        raise ValueError(f"root must be an s3:// URI on a cluster (pods share no disk); got {cfg.root!r}")
    config_yaml = storage.read_text(config_path)
    with tempfile.TemporaryDirectory() as tmp:
        pkg = package or compile_pipeline(str(Path(tmp) / "pipeline.yaml"), config_path)
        client = kfp.Client(host=host, namespace=namespace, existing_token=existing_token)
        run = client.create_run_from_pipeline_package(
            pkg, arguments={"config_yaml": strip_userinfo(config_yaml), "run_name": run_name,
                            "launcher": cfg.cluster.launcher if cfg.cluster.launcher != "local" else "pytorchjob"},
            run_name=run_name or f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}",
            experiment_name=experiment or cfg.experiment_name(), namespace=namespace,
            service_account=cfg.cluster.service_account or None)
    return {"run_id": run.run_id, "host": host, "experiment": experiment or cfg.experiment_name()}


def list_runs(host: str | None, namespace: str | None = None, page_size: int = 20) -> list[dict[str, Any]]:
    import kfp

    resp = kfp.Client(host=host, namespace=namespace).list_runs(page_size=page_size, sort_by="created_at desc",
                                                                 namespace=namespace)
    return [{"run_id": r.run_id, "name": r.display_name, "state": r.state, "created_at": str(r.created_at)}
            for r in (resp.runs or [])]


def run_status(run_id: str, host: str | None, namespace: str | None = None) -> dict[str, Any]:
    import kfp

    r = kfp.Client(host=host, namespace=namespace).get_run(run_id)
    return {"run_id": r.run_id, "name": r.display_name, "state": r.state, "error": str(r.error or "")}
