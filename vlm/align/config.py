"""Config of the curated alignment stage (MiniGPT-4 stage two)."""

from __future__ import annotations

from pydantic import Field

from vlm.configbase import Section
from vlm.train.config import TrainConfig


class AlignConfig(Section):
    enabled: bool = True
    num_images: int = Field(64, ge=1)
    seed: int = 0
    min_answer_tokens: int = Field(80, ge=1, description="continue generation below this length")
    max_new_tokens: int = Field(120, ge=1)
    batch_size: int = Field(8, ge=1)
    rewrite: bool = False
    rewrite_model: str | None = Field(None, description="local instruct LLM; default SmolLM2-Instruct")
    min_words: int = Field(8, ge=1)
    max_repetition: float = Field(0.3, ge=0, le=1)
    min_itc_score: float | None = None
    output: str = Field("", description="curated set URI; empty = <run root>/align")
    finetune: TrainConfig = TrainConfig(steps=50, lr=3e-5, warmup_steps=5, tasks=["caption"])
