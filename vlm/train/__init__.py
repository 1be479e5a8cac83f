"""Distributed training engine (stage-one pretraining and stage-two fine-tuning).

``train(cfg, stage, data_uri, output_uri, init_from=None, labels_uri=None) -> dict`` runs in every process of a torchrun /
PyTorchJob launch (or alone); ``launch_local(config_path, nproc, args) -> int`` starts torchrun locally.
"""

from __future__ import annotations

from typing import Any

__all__ = ["train", "launch_local", "run_stage"]


def train(cfg, stage: str = "pretrain", data_uri: str | None = None, output_uri: str | None = None,
          init_from: str | None = None, labels_uri: str | None = None, **kw: Any) -> dict[str, Any]:
    from vlm.train.loop import train as _train

    return _train(cfg, stage, data_uri, output_uri, init_from, labels_uri=labels_uri, **kw)


def launch_local(config_path: str, nproc: int, args: list[str] | None = None, **kw: Any) -> int:
    from vlm.train.launch import launch_local as _launch

    return _launch(config_path, nproc, args, **kw)


def run_stage(config_path: str, stage: str = "pretrain", data_uri: str = "", output_uri: str = "",
              init_from: str = "", nproc: int = 0, labels_uri: str = "") -> dict[str, Any]:
    from vlm.train.launch import run_stage as _run

    return _run(config_path, stage, data_uri, output_uri, init_from, nproc, labels_uri)
