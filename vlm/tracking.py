"""A small MLflow layer: one experiment per pipeline, a parent run per pipeline run, a child run per stage.

Only rank 0 of a distributed job talks to MLflow; other ranks get a :class:`NullRun` whose methods do
nothing. The parent run id travels to later stages through ``VLM_PARENT_RUN_ID`` (or an explicit
argument, which kfp components pass along), and a stage can attach to an existing run (``run_id``), which
is how evaluation and registration attach to the training run.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any

from vlm.redact import redact

log = logging.getLogger(__name__)

PARENT_ENV = "VLM_PARENT_RUN_ID"
STAGE_TAG = "vlm.stage"
PIPELINE_TAG = "vlm.pipeline"
# MLflow 3 marks what an experiment is for with this tag (the UI's experiment-kind selector writes it);
# without it an experiment counts as GenAI. MLflow 3.17's UI picks its view from the GenAI / Model training
# switch, which the ``workflowType`` parameter of a link sets: see :func:`experiment_url`.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_rank0() -> bool:
    return rank() == 0


def configure(tracking_uri: str | None = None, experiment: str | None = None) -> None:
    """Point MLflow at ``MLFLOW_TRACKING_URI`` (wins) or ``tracking_uri``, and select the experiment."""
    import mlflow

    uri = os.environ.get("MLFLOW_TRACKING_URI") or tracking_uri
    if uri:
        mlflow.set_tracking_uri(uri)
    if experiment:
        mlflow.set_experiment(experiment_id=ensure_experiment(experiment))


def _flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            out[name] = ",".join(map(str, value))[:6000]
        else:
            out[name] = value
    return out


class Run:
    """A live MLflow run (rank 0)."""

    def __init__(self, run_id: str):
        self.run_id = run_id

    @property
    def active(self) -> bool:
        return True

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow import MlflowClient
        from mlflow.entities import Param

        flat = redact(_flatten(params))
        batch = [Param(k, str(v)[:6000]) for k, v in flat.items()]
        client = MlflowClient()
        for i in range(0, len(batch), 100):
            client.log_batch(self.run_id, params=batch[i : i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        import time

        from mlflow import MlflowClient
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        batch = [Metric(k, float(v), ts, step or 0) for k, v in metrics.items() if v is not None]
        if batch:
            MlflowClient().log_batch(self.run_id, metrics=batch)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow import MlflowClient
        from mlflow.entities import RunTag

        MlflowClient().log_batch(self.run_id, tags=[RunTag(k, redact(str(v))) for k, v in tags.items()])

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        from mlflow import MlflowClient

        client = MlflowClient()
        if os.path.isdir(path):
            client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        from mlflow import MlflowClient

        MlflowClient().log_text(self.run_id, text, artifact_file)

    def log_dict(self, data: Any, artifact_file: str) -> None:
        from mlflow import MlflowClient

        MlflowClient().log_dict(self.run_id, data, artifact_file)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        from mlflow import MlflowClient

        MlflowClient().log_figure(self.run_id, figure, artifact_file)


class NullRun(Run):
    """What non-zero ranks (and disabled tracking) get: every call is a no-op."""

    def __init__(self, run_id: str | None = None):
        self.run_id = run_id or ""

    @property
    def active(self) -> bool:
        return False

    def log_params(self, params: Mapping[str, Any]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...
    def set_tags(self, tags: Mapping[str, Any]) -> None: ...
    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None: ...
    def log_text(self, text: str, artifact_file: str) -> None: ...
    def log_dict(self, data: Any, artifact_file: str) -> None: ...
    def log_figure(self, figure: Any, artifact_file: str) -> None: ...


def ensure_experiment(name: str) -> str:
    """The id of experiment ``name``, created (or restored) if needed and marked as model training."""
    from mlflow import MlflowClient

    client = MlflowClient()
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING})
        except Exception:  # created concurrently by another process
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    if EXPERIMENT_KIND_TAG not in exp.tags:
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
    return exp.experiment_id


def experiment_url(ui: str, experiment_id: str) -> str:
    """Link to an experiment in the MLflow UI at ``ui`` (``http://host:port``) that opens on its runs table
    (MLflow 3's "Model training" view, not the GenAI one)."""
    return f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def _finish(run_id: str, failed: bool) -> None:
    from mlflow import MlflowClient

    MlflowClient().set_terminated(run_id, status="FAILED" if failed else "FINISHED")


@contextlib.contextmanager
def pipeline_run(experiment: str, run_name: str | None = None, tags: Mapping[str, Any] | None = None,
                 tracking_uri: str | None = None, run_id: str | None = None) -> Iterator[Run]:
    """The parent run of one pipeline run. Sets ``VLM_PARENT_RUN_ID`` for stages started inside it."""
    if not is_rank0():
        yield NullRun(run_id or os.environ.get(PARENT_ENV))
        return
    configure(tracking_uri)
    from mlflow import MlflowClient

    client = MlflowClient()
    if run_id is None:
        run = client.create_run(ensure_experiment(experiment), run_name=run_name,
                                tags={PIPELINE_TAG: experiment, **{k: str(v) for k, v in (tags or {}).items()}})
        run_id = run.info.run_id
    previous = os.environ.get(PARENT_ENV)
    os.environ[PARENT_ENV] = run_id
    failed = False
    try:
        yield Run(run_id)
    except BaseException:
        failed = True
        raise
    finally:
        _finish(run_id, failed)
        if previous is None:
            os.environ.pop(PARENT_ENV, None)
        else:
            os.environ[PARENT_ENV] = previous


def create_stage_run(stage: str, experiment: str, parent_run_id: str | None = None,
                     run_name: str | None = None, tracking_uri: str | None = None) -> str:
    """Create a child run (status RUNNING) and return its id; rank 0 only."""
    configure(tracking_uri)
    from mlflow import MlflowClient

    parent = parent_run_id or os.environ.get(PARENT_ENV)
    tags = {STAGE_TAG: stage, PIPELINE_TAG: experiment}
    if parent:
        tags["mlflow.parentRunId"] = parent
    run = MlflowClient().create_run(ensure_experiment(experiment), run_name=run_name or stage, tags=tags)
    return run.info.run_id


@contextlib.contextmanager
def stage_run(stage: str, experiment: str, parent_run_id: str | None = None, run_id: str | None = None,
              run_name: str | None = None, tracking_uri: str | None = None, finish: bool = True) -> Iterator[Run]:
    """A child run for one stage (tag ``vlm.stage``), or the existing ``run_id`` to attach to.

    Non-zero ranks get a :class:`NullRun`. On an exception the run is marked FAILED and re-raised.
    With ``finish=False`` an attached run is left open (for a stage that only adds to another's run).
    """
    if not is_rank0():
        yield NullRun(run_id)
        return
    configure(tracking_uri)
    attached = run_id is not None
    if run_id is None:
        run_id = create_stage_run(stage, experiment, parent_run_id, run_name, tracking_uri)
    failed = False
    try:
        yield Run(run_id)
    except BaseException:
        failed = True
        raise
    finally:
        if failed or (finish and not attached):
            _finish(run_id, failed)


def mark_failed(run_id: str, reason: str = "", tracking_uri: str | None = None) -> None:
    """Mark a run (e.g. the pipeline's parent run from an exit handler) as FAILED."""
    configure(tracking_uri)
    from mlflow import MlflowClient

    client = MlflowClient()
    if reason:
        client.set_tag(run_id, "vlm.failure", reason[:5000])
    client.set_terminated(run_id, status="FAILED")
