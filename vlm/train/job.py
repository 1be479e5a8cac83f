"""What a training run is asked (:class:`TrainJob`) and what it answers (:class:`TrainResult`). No torch here.

A job is resolved once from the pipeline config: the stage's TrainConfig, the model config and every URI.
The engine (:class:`vlm.train.trainer.Trainer`) reads only the job; the MLflow run it logs into comes with the job
(``run_id``, from the caller's :class:`vlm.run_context.RunContext`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlm import storage
from vlm.align.config import stage_two_train_config
from vlm.models.config import ModelConfig
from vlm.train.config import TrainConfig

STAGES = ("pretrain", "finetune")


def stage_config(cfg, stage: str) -> TrainConfig:
    """The TrainConfig of ``stage``: ``train`` for pretrain, the stage-two recipe of ``align.finetune`` for
    finetune (:func:`vlm.align.config.stage_two_train_config`; the prepare step writes it resolved into the run's
    config, and resolving it again changes nothing)."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
    if stage == "pretrain":
        return cfg.train
    return stage_two_train_config(cfg.align)


def _parent(uri: str) -> str:
    uri = uri.rstrip("/")
    if storage.is_s3(uri):
        return uri.rsplit("/", 1)[0]
    return str(Path(storage._local(uri)).resolve().parent)


@dataclass(frozen=True)
class TrainJob:
    """One training stage, fully resolved: what every process of a launch trains, from where, to where."""

    stage: str
    train: TrainConfig
    model: ModelConfig
    data_uri: str
    output_uri: str
    checkpoint_uri: str
    init_from: str = ""
    labels_uri: str = ""
    experiment: str = ""
    tracking_uri: str = ""
    run_id: str = ""  # the MLflow run to log into, given by the caller (vlm.run_context); "" = no tracking

    def with_run(self, run_id: str) -> TrainJob:
        return dataclasses.replace(self, run_id=run_id)

    @classmethod
    def from_config(cls, cfg, stage: str = "pretrain", data_uri: str | None = None, output_uri: str | None = None,
                    init_from: str | None = None, labels_uri: str | None = None, run_id: str = "") -> TrainJob:
        """The job of ``stage`` in a PipelineConfig; explicit URIs win over the config's, then the defaults
        (``<root>/data``, ``<root>/<stage>/model``, ``<output's parent>/checkpoints/<stage>``)."""
        tcfg = stage_config(cfg, stage)
        data = data_uri or cfg.data.output or storage.join(cfg.root, "data")
        output = output_uri or tcfg.output or storage.join(cfg.root, stage, "model")
        model = cfg.model
        if tcfg.gradient_checkpointing and "gradient_checkpointing" in type(model).model_fields:
            model = model.model_copy(update={"gradient_checkpointing": True})
        return cls(stage=stage, train=tcfg, model=model, data_uri=data, output_uri=output,
                   checkpoint_uri=tcfg.checkpoint_dir or storage.join(_parent(output), "checkpoints", stage),
                   init_from=init_from or tcfg.init_from, labels_uri=labels_uri or tcfg.labels,
                   experiment=cfg.experiment_name() if hasattr(cfg, "experiment_name") else cfg.name,
                   tracking_uri=cfg.tracking.uri, run_id=run_id)


@dataclass
class TrainResult:
    """What a stage answers (rank 0's figures; every rank gets the same counts). ``to_dict()`` is the JSON
    summary ``python -m vlm.train --summary`` writes and the pipeline step returns."""

    stage: str
    strategy: str
    world_size: int
    steps: int
    resumed_from_step: int
    final_loss: float
    eval_before: dict[str, float]
    eval_after: dict[str, float]
    model_uri: str
    checkpoint_uri: str
    run_id: str | None
    rejected_samples: int  # samples dropped (shard-level reasons, SHARD_REASONS, not included)
    rejected: dict[str, int]  # samples dropped by reason (SAMPLE_REASONS), all ranks
    labels_uri: str
    missing_labels: dict[str, int]
    probe: dict[str, float] = field(default_factory=dict)  # probe/* metrics (train.probe_images; rank 0)
    throughput: dict[str, float] = field(default_factory=dict)  # samples_per_s, tokens_per_s of the last window

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "throughput"}
        return {**out, **self.throughput}

    @classmethod
    def from_dict(cls, summary: dict[str, Any]) -> TrainResult:
        """The result a summary describes (what :meth:`to_dict` gave): keys beyond the fields are throughput."""
        names = {f.name for f in dataclasses.fields(cls)} - {"throughput"}
        return cls(**{k: v for k, v in summary.items() if k in names},
                   throughput={k: v for k, v in summary.items() if k not in names})
