"""``evaluate``: run the configured tasks over a dataset, write per-sample results + report, log to MLflow."""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlm import storage, tracking
from vlm.eval.config import EvalConfig

if TYPE_CHECKING:
    from vlm.registry.mlflow_registry import Champion

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalResult:
    """What :func:`evaluate` answers. ``to_dict()`` is the JSON summary (``summary.json``, the pipeline step).

    ``metrics`` is flat (what MLflow and the registry gate get); ``n`` the samples scored per task;
    ``by_question_type`` is ``{type: {n, accuracy, exact_match}}``; ``baselines`` the text-only baselines from
    the train split (``vqa``, ``caption``, ``n_train_samples``; ``{}`` when none); ``champion`` the champion of
    ``cfg.compare_to``; ``output`` where the results and report went, ``report`` the HTML report's URI.
    """

    model_uri: str
    data_uri: str
    format: str
    n_samples: int
    n: dict[str, int]
    metrics: dict[str, float]
    rejected: dict[str, int]  # input samples dropped, by reason
    damaged_shards: dict[str, str]  # shard URI -> "reason: detail"
    skipped: dict[str, int]  # "<task>.<reason>" -> samples a task could not use
    skipped_tasks: list[str]
    tokenizer: str
    config: dict[str, Any]  # the EvalConfig as JSON
    by_question_type: dict[str, dict[str, float]]
    baselines: dict[str, Any]
    champion: Champion | None
    seconds: float
    run_id: str | None = None
    output: str = ""
    report: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_model(model_uri: str):
    """A model artefact dir (local/S3) or an MLflow model (``models:/name@alias``, ``runs:/...``) logged by
    ``vlm register`` (its ``model`` artifact is the artefact dir)."""
    from vlm.models import load

    if model_uri.startswith(("models:/", "runs:/", "mlflow-artifacts:/")):
        import mlflow

        local = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=tempfile.mkdtemp(prefix="vlm-eval-")))
        found = sorted(local.rglob("vlm_config.json"))
        if not found:
            raise FileNotFoundError(f"{model_uri}: no vlm_config.json inside the MLflow model (not logged by vlm?)")
        return load(str(found[0].parent))
    return load(model_uri)


def _tokenizer_name(cfg: EvalConfig) -> str:
    from vlm.eval.tokenize import default_tokenizer

    return default_tokenizer() if cfg.tokenizer == "auto" else cfg.tokenizer


def evaluate(model_uri: str, data_uri: str, cfg: EvalConfig | None = None, run_id: str | None = None, *,
             output: str | None = None, experiment: str = "vlm-eval", tracking_uri: str | None = None,
             track: bool = True, model: Any = None) -> EvalResult:
    """Evaluate ``model_uri`` on ``data_uri`` for ``cfg.tasks``.

    Writes ``results.json`` (per sample), ``metrics.json``, ``summary.json`` and ``report.md``/``report.html``
    (+ plots, example images) to ``output`` (default ``cfg.output`` or a temp folder), and logs metrics and the
    report to MLflow: into ``run_id`` when given (e.g. the training run), else a new ``evaluate`` stage run.
    """
    import torch

    from vlm.eval.data import load_eval_data
    from vlm.eval.report import write_report
    from vlm.eval.tasks import TASKS
    from vlm.eval.tasks.vqa import by_question_type

    cfg = cfg or EvalConfig()
    unknown = [t for t in cfg.tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; known: {sorted(TASKS)}")
    started = time.time()
    model = model if model is not None else load_model(model_uri)
    data = load_eval_data(data_uri, cfg)
    results: dict[str, Any] = {}
    metrics: dict[str, float] = {}
    counts: dict[str, int] = {}
    skipped_tasks, skipped = [], {}
    with torch.inference_mode():
        for task in cfg.tasks:
            t0 = time.time()
            res = TASKS[task](model, data.samples, cfg)
            if res is None:
                log.warning("task %s: no usable samples in %s; skipped", task, data_uri)
                skipped_tasks.append(task)
                continue
            results[task] = res.records
            metrics.update(res.metrics)
            counts[task] = res.n
            skipped.update({f"{task}.{k}": v for k, v in res.skipped.items() if v})
            log.info("%s on %d samples in %.1fs: %s", task, res.n, time.time() - t0,
                     ", ".join(f"{k}={v:.4g}" for k, v in res.metrics.items()))
    if not results:
        raise ValueError(f"{data_uri}: none of the tasks {cfg.tasks} has usable samples "
                         "(captions for caption/retrieval, qa for vqa)")
    result = EvalResult(
        model_uri=model_uri, data_uri=data_uri, format=data.format, n_samples=len(data.samples), n=counts,
        metrics=metrics, rejected=dict(data.rejected), damaged_shards=data.damaged, skipped=skipped,
        skipped_tasks=skipped_tasks, tokenizer=_tokenizer_name(cfg), config=cfg.model_dump(mode="json"),
        by_question_type=by_question_type(results["vqa"]) if "vqa" in results else {},
        baselines=_baselines(data_uri, data.format, cfg, results),
        champion=_champion(cfg.compare_to, tracking_uri) if cfg.compare_to and track else None,
        seconds=round(time.time() - started, 2))
    out_uri = output or cfg.output
    with tempfile.TemporaryDirectory(prefix="vlm-eval-") as tmp:
        local = Path(tmp)
        (local / "results.json").write_text(json.dumps(results, indent=1, ensure_ascii=False), encoding="utf-8")
        (local / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
        write_report(result.to_dict(), results, data.samples, local, cfg.report_examples)
        if track and tracking.is_rank0():
            result = dataclasses.replace(result, run_id=_log_to_mlflow(local, result, run_id, experiment,
                                                                       tracking_uri))
        out_uri = out_uri or tempfile.mkdtemp(prefix="vlm-eval-report-")
        result = dataclasses.replace(result, output=out_uri, report=storage.join(out_uri, "report.html"))
        (local / "summary.json").write_text(json.dumps(result.to_dict(), indent=2), encoding="utf-8")
        storage.upload_tree(local, out_uri)
    return result


def _baselines(data_uri: str, data_format: str, cfg: EvalConfig, results: dict[str, Any]) -> dict[str, Any]:
    """Text-only baselines from the train split (shard data evaluated on another split), else ``{}``."""
    from vlm.eval.baselines import caption_baseline, vqa_baselines
    from vlm.eval.data import load_eval_data

    wanted = cfg.baselines and data_format == "shards" and cfg.split != "train" and (
        "vqa" in results or "caption" in results)
    if not wanted:
        return {}
    try:
        train = load_eval_data(data_uri, cfg.model_copy(update={"split": "train",
                                                               "max_samples": cfg.baseline_max_samples})).samples
    except ValueError as exc:  # no train split
        log.info("no baselines: %s", exc)
        return {}
    out: dict[str, Any] = {"n_train_samples": len(train)}
    if "vqa" in results and (vqa := vqa_baselines(train, results["vqa"])):
        out["vqa"] = vqa
    if "caption" in results and (cap := caption_baseline(train, results["caption"], tokenizer=_tokenizer_name(cfg),
                                                         meteor=cfg.meteor)):
        out["caption"] = cap
    return out


def _champion(name: str, tracking_uri: str | None) -> Champion | None:
    """The current champion of registered model ``name`` (version + metrics), None when there is none."""
    from mlflow.exceptions import MlflowException

    from vlm.registry.mlflow_registry import champion

    try:
        return champion(name, tracking_uri=tracking_uri)
    except (MlflowException, OSError) as exc:
        log.warning("cannot read the champion of %s: %s; the report shows no comparison", name, exc)
        return None


def _log_to_mlflow(local: Path, result: EvalResult, run_id: str | None, experiment: str,
                   tracking_uri: str | None) -> str:
    with tracking.stage_run("evaluate", experiment, run_id=run_id, tracking_uri=tracking_uri) as run:
        run.log_metrics(result.metrics)
        run.log_metrics({f"eval_data/rejected_{k}": v for k, v in result.rejected.items()})
        run.log_params({"eval." + k: v for k, v in result.config.items() if k in
                        ("tasks", "split", "max_samples", "num_beams", "max_new_tokens")} |
                       {"eval.data_uri": result.data_uri, "eval.model_uri": result.model_uri})
        run.set_tags({"vlm.eval.report": "eval/report.html", "vlm.eval.tokenizer": result.tokenizer})
        run.log_artifact(local, "eval")
        return run.run_id
