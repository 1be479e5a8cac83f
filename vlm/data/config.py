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


class DownloadConfig(Section):
    """How image URLs (URL-list inputs: LAION / CC / SBU-style tables) are fetched."""

    threads: int = Field(16, ge=1, le=256, description="concurrent downloads per worker process")
    connect_timeout: float = Field(5.0, gt=0, description="seconds to establish a connection")
    read_timeout: float = Field(10.0, gt=0, description="seconds without a byte before giving up")
    total_timeout: float = Field(60.0, gt=0, description="seconds for a whole download (slow-drip guard)")
    retries: int = Field(2, ge=0, le=10, description="retries after a connection error, timeout, 5xx or 429")
    backoff: float = Field(0.5, ge=0, description="first retry delay in seconds, doubled on each retry")
    max_bytes: int = Field(20_000_000, ge=1, description="larger responses are rejected (checked while streaming)")
    user_agent: str = "vlm-platform/0.1 (+image-text dataset builder)"


class ShardConfig(Section):
    """How raw image-text pairs become validated WebDataset shards."""

    input: str = Field("builtin:shapes", description="file/folder/glob/URI or builtin:easy-vqa|photos|shapes")
    output: str = Field("", description="dataset URI; empty = <run root>/data")
    name: str = "dataset"
    limit: int | None = Field(None, ge=1, description="stop after this many input records")
    samples_per_shard: int = Field(1000, ge=1)
    workers: int = Field(1, ge=1, description="worker processes per partition (1 = in-process)")
    partitions: int = Field(1, ge=1, description="fan-out: shard the input as up to this many partitions in "
                            "parallel (kfp ParallelFor pods on a cluster, processes locally), merged into one dataset")
    min_partition_records: int = Field(50_000, ge=1, description="no partition smaller than this many input "
                                       "records (small inputs stay one partition)")
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
    image_column: str = Field("image", description="table inputs: column with the image path, s3:// or http(s) "
                              "URL, or the image bytes (Parquet/Arrow: binary or {bytes, path} struct)")
    caption_column: str = Field("caption", description="table inputs: column with the caption (str or list)")
    seed: int = 0
    download: DownloadConfig = DownloadConfig()
