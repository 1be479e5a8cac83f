"""Distributed training engine (stage-one pretraining and stage-two fine-tuning).

``vlm.train.launch.launch(cfg, stage, data_uri, output_uri, init_from, labels_uri, ...) -> TrainResult`` runs a
stage where ``cluster.launcher`` and ``nproc`` say (this process, local torchrun, or a cluster job); ``train(cfg,
stage, ...) -> TrainResult`` runs it in this process (every process of a torchrun / PyTorchJob launch calls it); without a run id
both find or open the stage's MLflow run through :mod:`vlm.run_context`;
``launch_local(config_path, nproc, args) -> int`` starts torchrun locally. The engine itself is
:class:`vlm.train.trainer.Trainer`, driven by a :class:`vlm.train.job.TrainJob`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vlm.train.job import TrainResult

__all__ = ["train", "launch_local"]


def train(cfg, stage: str = "pretrain", data_uri: str | None = None, output_uri: str | None = None,
          init_from: str | None = None, labels_uri: str | None = None, **kw: Any) -> TrainResult:
    from vlm.train.launch import train as _train

    return _train(cfg, stage, data_uri or "", output_uri or "", init_from or "", labels_uri or "", **kw)


def launch_local(config_path: str, nproc: int, args: list[str] | None = None, **kw: Any) -> int:
    from vlm.train.launch import launch_local as _launch

    return _launch(config_path, nproc, args, **kw)
