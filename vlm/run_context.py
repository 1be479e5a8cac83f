"""One pipeline run's context, owned by the pipeline layer: where its artefacts go (:class:`RunLayout`) and
where it is tracked (:class:`RunContext`: the MLflow experiment, the parent run, each stage's run).

The callers that start stages (the pipeline steps of :mod:`vlm.steps`, ``vlm train``, ``vlm align finetune``)
hold the context; stages get typed inputs from it. A training stage does not open an MLflow run of its own: its
caller asks :meth:`RunContext.training_run` for the run id and puts it in the
:class:`~vlm.train.job.TrainJob` (``python -m vlm.train --run-id``, also on a cluster), and the Trainer logs
into that run and closes it. A re-run continues the run it interrupted: the newest run of the same stage,
checkpoint folder and parent run, when that folder holds checkpoints to resume from.

No torch and no MLflow at import time (MLflow is imported when a run is looked up).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from dataclasses import dataclass
from typing import Any

from vlm import storage

CHECKPOINT_TAG = "vlm.checkpoint_uri"
CHECKPOINT_DIR_RE = re.compile(r"^step-(\d+)$")  # one checkpoint's folder under a checkpoint URI (vlm.train.checkpoint)


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def run_tag(name: str) -> str:
    """A run name as the tag its folder and MLflow runs carry (lower case, ``[a-z0-9-]``; ``run`` when empty)."""
    tag = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    return tag or "run"


@dataclass(frozen=True)
class RunLayout:
    """Every URI of one pipeline run, under ``cfg.root`` (local or S3); explicit ``output`` fields in the config win.

    ``data`` and ``labels`` are content-addressed (a hash of their config), so re-runs reuse them;
    ``run_root`` = ``<root>/runs/<run tag>`` holds ``config.yaml``, ``pretrain/``, ``align/``, ``finetune/``,
    ``eval/`` of this run.
    """

    run_root: str
    config: str
    data: str
    labels: str
    pretrain: str
    curated: str
    finetune: str
    eval: str

    @classmethod
    def of(cls, cfg, tag: str) -> RunLayout:
        data_key = _hash(cfg.data.model_dump(exclude={"output": True, "workers": True, "partitions": True,
                                                      "min_partition_records": True, "download": {"threads"}}))
        labels_key = _hash({"data": data_key, "experts": cfg.experts.model_dump(
            exclude={"output", "workers", "shard_groups", "batch_size", "device"})})
        root = storage.join(cfg.root, "runs", tag)
        return cls(
            run_root=root,
            config=storage.join(root, "config.yaml"),
            data=cfg.data.output or storage.join(cfg.root, "datasets", f"{cfg.data.name}-{data_key}"),
            labels=cfg.experts.output or storage.join(cfg.root, "labels", f"{cfg.data.name}-{labels_key}"),
            pretrain=cfg.train.output or storage.join(root, "pretrain", "model"),
            curated=cfg.align.output or storage.join(root, "align", "curated"),
            finetune=cfg.align.finetune.output or storage.join(root, "finetune", "model"),
            eval=cfg.eval.output or storage.join(root, "eval"),
        )

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RunContext:
    """Where one run is tracked: the MLflow store and experiment, and the pipeline's parent run (if any)."""

    tracking_uri: str
    experiment: str
    parent_run_id: str = ""

    @classmethod
    def of(cls, cfg, parent_run_id: str = "") -> RunContext:
        """The context of a PipelineConfig; the parent run is ``parent_run_id``, else ``$VLM_PARENT_RUN_ID``."""
        from vlm.tracking import PARENT_ENV

        return cls(tracking_uri=cfg.tracking.uri, experiment=cfg.experiment_name(),
                   parent_run_id=parent_run_id or os.environ.get(PARENT_ENV, ""))

    def open(self, stage: str):
        """A context manager: a new MLflow child run for ``stage`` (FINISHED on leaving, FAILED on an exception;
        :func:`vlm.tracking.stage_run`), for a stage that runs in this process."""
        from vlm import tracking

        return tracking.stage_run(stage, self.experiment, parent_run_id=self.parent_run_id or None,
                                  tracking_uri=self.tracking_uri)

    def stage_run(self, stage: str, tags: dict[str, str] | None = None, reuse: bool = False) -> str:
        """The id of ``stage``'s MLflow run: with ``reuse`` the newest existing run of this stage with these
        ``tags`` under this parent (a re-run continues it), else a new child run of the parent (status RUNNING)."""
        from vlm import tracking

        tracking.configure(self.tracking_uri)
        tags = dict(tags or {})
        if reuse and (previous := self._find(stage, tags)):
            return previous
        return tracking.create_stage_run(stage, self.experiment, self.parent_run_id or None, tags=tags)

    def _find(self, stage: str, tags: dict[str, str]) -> str | None:
        from mlflow import MlflowClient

        from vlm import tracking

        client = MlflowClient()
        exp = client.get_experiment_by_name(self.experiment)
        if exp is None:
            return None
        wanted = {tracking.STAGE_TAG: stage, **tags}
        if self.parent_run_id:
            wanted["mlflow.parentRunId"] = self.parent_run_id
        query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in wanted.items())
        runs = client.search_runs([exp.experiment_id], query, order_by=["attributes.start_time DESC"],
                                          max_results=1)
        return runs[0].info.run_id if runs else None

    def training_run(self, stage: str, checkpoint_uri: str) -> str:
        """The run a training stage logs into: the run of the checkpoints under ``checkpoint_uri`` when there
        are any (the stage resumes from them), else a new one tagged with that folder."""
        return self.stage_run(stage, {CHECKPOINT_TAG: checkpoint_uri}, reuse=has_checkpoints(checkpoint_uri))


def has_checkpoints(checkpoint_uri: str) -> bool:
    """Whether ``checkpoint_uri`` holds any checkpoint folder (``step-NNNNNN/``), complete or not."""
    base = checkpoint_uri.rstrip("/") + "/"
    return any(CHECKPOINT_DIR_RE.match(uri[len(base):].split("/")[0]) for uri in storage.list_uris(checkpoint_uri)
               if uri.startswith(base))
