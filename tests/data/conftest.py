"""Small datasets shared by the data tests."""

from __future__ import annotations

import pytest

from vlm.data.config import ShardConfig
from vlm.data.format import Manifest
from vlm.data.shard import shard_dataset


@pytest.fixture(scope="session")
def shapes_dataset(tmp_path_factory) -> tuple[str, Manifest]:
    """60 builtin:shapes samples in shards of 7 (several shards per split)."""
    out = str(tmp_path_factory.mktemp("shapes") / "ds")
    manifest = shard_dataset("builtin:shapes", out, ShardConfig(builtin_size=60, samples_per_shard=7,
                                                                builtin_image_size=48))
    return out, manifest
