"""Config of the evaluation stage."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from vlm.configbase import Section


class EvalConfig(Section):
    tasks: list[Literal["caption", "vqa", "retrieval"]] = Field(default_factory=lambda: ["caption", "vqa"])
    split: str = "test"
    max_samples: int | None = Field(200, ge=1)
    batch_size: int = Field(8, ge=1)
    num_beams: int = Field(3, ge=1)
    max_new_tokens: int = Field(30, ge=1)
    output: str = Field("", description="report URI; empty = <run root>/eval")
