"""Config of the expert-label precomputation stage."""

from __future__ import annotations

from pydantic import Field

from vlm.configbase import Section


class ExpertsConfig(Section):
    """Which frozen experts label the images, and where their labels go."""

    enabled: bool = True
    experts: list[str] = Field(default_factory=lambda: ["edges", "segmentation"])
    output: str = Field("", description="labels URI; empty = <run root>/labels")
    resolution: int = Field(224, ge=16)
    batch_size: int = Field(16, ge=1)
    device: str = "auto"
    workers: int = Field(1, ge=1)
    shard_groups: int = Field(1, ge=1, description="fan-out width of the kfp ParallelFor")
    sources: dict[str, str] = Field(default_factory=dict, description="expert -> model path/S3 URI")
