"""Config of the distributed training engine (stage one and stage-two fine-tuning)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from vlm.configbase import Section


class TrainConfig(Section):
    strategy: Literal["none", "ddp", "fsdp2", "deepspeed"] = "deepspeed"
    zero_stage: Literal[1, 2, 3] = 2
    nproc: int = Field(1, ge=1, description="processes per node for torchrun")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto = bf16 autocast where the device multiplies bf16 fast (CUDA; CPUs with "
        "AVX512-BF16/AMX), fp32 elsewhere (see vlm.train.precision)")
    gradient_checkpointing: bool = False
    steps: int = Field(100, ge=1)
    max_seconds: float = Field(0, ge=0, description="stop after the first step that ends this many seconds into "
                                "the step loop (0 = no time budget; `steps` still caps it)")
    batch_size: int = Field(8, ge=1, description="per-rank micro-batch")
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = Field(10, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    max_grad_norm: float = Field(1.0, gt=0)
    seed: int = 0
    num_workers: int = Field(0, ge=0)
    shuffle_buffer: int = Field(256, ge=0)
    split: str = Field("train", description="shard split to train on")
    eval_split: str = Field("val", description="held-out split for the fixed eval set (falls back to test)")
    eval_every: int = Field(0, ge=0, description="0 = evaluate only before and after training")
    eval_samples: int = Field(64, ge=0)
    log_every: int = Field(1, ge=1)
    probe_images: int = Field(0, ge=0, description="after training, answer every question of this many held-out "
                              "images (probe_split) and log the exact match as probe/* metrics (0 = off)")
    probe_split: str = Field("test", description="held-out split of the probe (never 'train')")
    checkpoint_every: int = Field(50, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    resume: bool = Field(True, description="resume from the latest checkpoint when one exists")
    output: str = Field("", description="model artefact URI; empty = <run root>/<stage>/model")
    checkpoint_dir: str = Field("", description="checkpoint URI; empty = <output>/../checkpoints/<stage>")
    tasks: list[Literal["caption", "vqa"]] = Field(default_factory=lambda: ["caption", "vqa"])
    task_weights: dict[Literal["caption", "vqa"], float] = Field(
        default_factory=dict, description="relative odds of each task for a sample that fits several "
                                          "(e.g. {caption: 3, vqa: 1}); unlisted tasks weigh 1")
    balance_answers: bool = Field(False, description="VQA: draw one of a sample's distinct answers, then one of "
                                  "its questions (a common answer such as 'no' stops outweighing the image)")
    caption_instructions: list[str] = Field(
        default_factory=lambda: ["Describe this image.", "What is in this image?", "Write a short caption for this image."],
        description="instruction drawn at random for each caption example")
    init_from: str = Field("", description="model artefact URI to start from (stage two starts from stage one)")
    labels: str = Field("", description="expert labels URI (`vlm experts` output) when model.experts is set; "
                                        "--labels wins")

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.probe_images and self.probe_split == self.split:
            raise ValueError(f"probe_split {self.probe_split!r} is the training split: the probe must be held out")
        if not self.tasks:
            raise ValueError("tasks must name at least one of 'caption', 'vqa'")
        if "caption" in self.tasks and not self.caption_instructions:
            raise ValueError("caption_instructions must not be empty when the caption task is on")
        if any(w < 0 for w in self.task_weights.values()) or not any(self.task_weights.get(t, 1.0) > 0
                                                                     for t in self.tasks):
            raise ValueError("task_weights must be >= 0 and leave some task of `tasks` a positive weight")
        return self
