"""Config of the distributed training engine (stage one and stage-two fine-tuning)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from vlm.configbase import Section


class TrainConfig(Section):
    strategy: Literal["none", "ddp", "fsdp2", "deepspeed"] = "deepspeed"
    zero_stage: Literal[1, 2, 3] = 2
    nproc: int = Field(1, ge=1, description="processes per node for torchrun")
    precision: Literal["fp32", "bf16"] = "bf16"
    gradient_checkpointing: bool = False
    steps: int = Field(100, ge=1)
    batch_size: int = Field(8, ge=1, description="per-rank micro-batch")
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup_steps: int = Field(10, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    max_grad_norm: float = Field(1.0, gt=0)
    seed: int = 0
    num_workers: int = Field(0, ge=0)
    shuffle_buffer: int = Field(256, ge=0)
    eval_every: int = Field(0, ge=0)
    eval_samples: int = Field(64, ge=0)
    checkpoint_every: int = Field(50, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    output: str = Field("", description="model artefact URI; empty = <run root>/<stage>/model")
    checkpoint_dir: str = Field("", description="checkpoint URI; empty = <output>/../checkpoints")
    tasks: list[Literal["caption", "vqa"]] = Field(default_factory=lambda: ["caption", "vqa"])
