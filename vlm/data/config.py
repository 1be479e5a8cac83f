"""Config of the data-sharding stage."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from vlm.configbase import Section


class SplitConfig(Section):
    """Fractions of samples per split, assigned deterministically by key hash (normalised to sum to 1)."""

    train: float = Field(0.9, ge=0, le=1)
    val: float = Field(0.05, ge=0, le=1)
    test: float = Field(0.05, ge=0, le=1)

    @model_validator(mode="after")
    def _not_all_zero(self) -> SplitConfig:
        if self.train + self.val + self.test <= 0:
            raise ValueError("split fractions are all zero; give at least one split a positive fraction")
        return self

    def fractions(self) -> dict[str, float]:
        total = self.train + self.val + self.test
        return {name: getattr(self, name) / total for name in ("train", "val", "test")}


class ShardConfig(Section):
    """How raw image-text pairs become validated WebDataset shards."""

    input: str = Field("builtin:shapes", description="file/folder/glob/URI or builtin:easy-vqa|photos|shapes")
    output: str = Field("", description="dataset URI; empty = <run root>/data")
    name: str = "dataset"
    limit: int | None = Field(None, ge=1, description="stop after this many input records")
    samples_per_shard: int = Field(1000, ge=1)
    workers: int = Field(1, ge=1, description="worker processes (1 = in-process)")
    max_side: int = Field(224, ge=16, description="resize so the long side is at most this")
    min_side: int = Field(16, ge=1, description="reject images whose short side is smaller")
    max_pixels: int = Field(89_478_485, ge=1, description="reject larger images (decompression bombs)")
    jpeg_quality: int = Field(90, ge=1, le=100)
    max_caption_chars: int = Field(1000, ge=1)
    long_captions: Literal["truncate", "reject"] = "truncate"
    near_duplicates: bool = False
    near_duplicate_distance: int = Field(4, ge=0, le=64, description="max perceptual-hash Hamming distance")
    split: SplitConfig = SplitConfig()
    builtin_size: int = Field(512, ge=1, description="number of samples for generated builtin sources")
    builtin_image_size: int = Field(128, ge=16, le=4096, description="side of builtin:shapes images")
    image_column: str = Field("image", description="table inputs: column with the image path or s3:// URI")
    caption_column: str = Field("caption", description="table inputs: column with the caption (str or list)")
    seed: int = 0
