"""Sharding during a storage outage: an unreachable S3 is no property of the samples, so the stage stops.

Before, the outage was counted as ``missing_file`` per image and the stage wrote a dataset without them.
"""

from __future__ import annotations

import json

import pytest

from tests.servers import free_port
from vlm import storage
from vlm.data.config import ShardConfig
from vlm.data.shard import shard_dataset


@pytest.mark.parametrize("workers", [1, 2])
def test_unreachable_s3_stops_the_stage_instead_of_counting_missing_files(tmp_path, monkeypatch, workers):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: a server that is down
    for key, value in {"AWS_ENDPOINT_URL": dead, "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
                       "AWS_DEFAULT_REGION": "us-east-1", "VLM_STORAGE_CONNECT_TIMEOUT_S": "0.5",
                       "VLM_STORAGE_DEADLINE_S": "2"}.items():
        monkeypatch.setenv(key, value)
    rows = [{"image": f"s3://photos/img/{i}.png", "caption": f"picture {i}"} for i in range(4)]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "shards"
    with pytest.raises(storage.StorageUnavailable) as info:
        shard_dataset(str(tmp_path / "d.jsonl"), str(out), ShardConfig(samples_per_shard=2, workers=workers))
    assert dead in str(info.value) and "s3://photos/img/" in str(info.value)
    assert not (out / "manifest.json").exists()  # no dataset that silently lacks the images
