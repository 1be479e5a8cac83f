"""Web-scale inputs: URL lists fetched from a real local HTTP server, Parquet/Arrow with the image bytes inside."""

from __future__ import annotations

import json
import socket

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.data.helpers import encode, noise_image
from tests.data.http_server import ImageServer
from vlm.data import format as fmt
from vlm.data.config import DownloadConfig, ShardConfig
from vlm.data.shard import merge_partitions, plan_partitions, shard_dataset, shard_partition

MAX_BYTES = 200_000
DOWNLOAD = DownloadConfig(connect_timeout=1, read_timeout=0.5, total_timeout=1.2, retries=2, backoff=0.01,
                          max_bytes=MAX_BYTES, threads=8)


def _captions(uri: str) -> dict[str, dict]:
    return {s["meta"]["caption"]: s for s in fmt.iter_samples(uri, "all", rank=0, world_size=1, worker=0, num_workers=1)}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server():
    images = {f"{i}.jpg": encode(noise_image(i, (64, 48))) for i in range(4)}
    with ImageServer(images, big=MAX_BYTES * 2) as srv:
        yield srv


def test_url_list_with_every_failure_mode(server, tmp_path):
    rows = [("img/0.jpg", "good zero"), ("img/1.jpg", "good one"), ("flaky/2.jpg", "fails once then works"),
            ("busy/3.jpg", "busy once then works"), ("missing", "not found"), ("error", "always failing"),
            ("stall", "stalls"), ("slow", "trickles"), ("truncated", "cut short"), ("big", "declares too much"),
            ("big-undeclared", "streams too much"), ("html", "a web page")]
    table = [{"url": server.url(path), "text": text} for path, text in rows]
    table.append({"url": f"http://127.0.0.1:{_closed_port()}/nothing.jpg", "text": "connection refused"})
    table.append({"url": server.url("img/0.jpg"), "text": "the same image again"})
    # LAION-style: a Parquet file with url + text columns
    pd.DataFrame(table).to_parquet(tmp_path / "laion.parquet")
    cfg = ShardConfig(image_column="url", caption_column="text", download=DOWNLOAD, workers=2, samples_per_shard=5)
    m = shard_dataset(str(tmp_path / "laion.parquet"), str(tmp_path / "out"), cfg)

    assert m.num_input_records == 14 and m.num_samples == 4
    assert {k: v for k, v in m.rejected.items() if v} == {
        "http_error": 2, "timeout": 2, "download_failed": 2, "too_large": 2, "undecodable": 1, "duplicate": 1}
    kept = _captions(str(tmp_path / "out"))
    assert set(kept) == {"good zero", "good one", "fails once then works", "busy once then works"}
    assert kept["good zero"]["meta"]["captions"] == ["good zero", "the same image again"]
    # retries: 5xx and 429-like answers are retried (with backoff), 404 is not; each try is a real request
    assert server.hits["/flaky/2.jpg"] == 2 and server.hits["/busy/3.jpg"] == 2
    assert server.hits["/missing"] == 1 and server.hits["/error"] == 3 and server.hits["/truncated"] == 3
    assert server.hits["/big"] == 1  # too large is final
    ex = {reason: {e["ref"].rsplit("/", 1)[-1]: e["detail"] for e in items}
          for reason, items in m.rejected_examples.items()}
    assert "HTTP 404" in ex["http_error"]["missing"] and "HTTP 500" in ex["http_error"]["error"]
    assert "after 3 attempts" in ex["http_error"]["error"]
    assert set(ex["timeout"]) == {"stall", "slow"} and "total_timeout" in ex["timeout"]["slow"]
    assert set(ex["download_failed"]) == {"truncated", "nothing.jpg"}
    assert "Content-Length" in ex["too_large"]["big"] and "max_bytes" in ex["too_large"]["big-undeclared"]
    assert set(ex["undecodable"]) == {"html"}
    assert all(e["ref"].startswith("laion.parquet:") and "http://127.0.0.1:" in e["ref"]
               for items in m.rejected_examples.values() for e in items)  # example URLs in the manifest

    # resumable like the rest: a re-run of the complete dataset downloads nothing
    before = sum(server.hits.values())
    again = shard_dataset(str(tmp_path / "laion.parquet"), str(tmp_path / "out"), cfg)
    assert again.resumed_shards == len(m.shards) and sum(server.hits.values()) == before


def test_url_list_jsonl_and_csv(server, tmp_path):
    rows = [{"image": server.url(f"img/{i}.jpg"), "caption": f"web picture {i}"} for i in range(3)]
    (tmp_path / "cc.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    pd.DataFrame(rows).to_csv(tmp_path / "sbu.csv", index=False)
    for name in ("cc.jsonl", "sbu.csv"):
        m = shard_dataset(str(tmp_path / name), str(tmp_path / f"out-{name}"), ShardConfig(download=DOWNLOAD))
        assert m.num_samples == 3 and m.rejected_total == 0, m.rejected
        assert set(_captions(str(tmp_path / f"out-{name}"))) == {f"web picture {i}" for i in range(3)}


def _hf_rows(n: int) -> list[dict]:
    return [{"image": {"bytes": encode(noise_image(i, (40, 30)), "PNG"), "path": f"{i}.png"},
             "text": f"embedded picture {i}", "label": i} for i in range(n)]


def test_parquet_with_embedded_image_structs_read_by_row_group(tmp_path, monkeypatch):
    rows = _hf_rows(10)
    rows[4]["image"] = {"bytes": None, "path": None}             # an empty image cell
    rows[6]["image"] = {"bytes": b"not an image", "path": "x.png"}
    schema = pa.schema([("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                        ("text", pa.string()), ("label", pa.int64())])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp_path / "hf.parquet", row_group_size=3)
    assert pq.ParquetFile(tmp_path / "hf.parquet").num_row_groups == 4

    read, whole = [], []
    real = pq.ParquetFile.read_row_group
    monkeypatch.setattr(pq.ParquetFile, "read_row_group", lambda self, i, *a, **k: read.append(i) or real(self, i, *a, **k))
    monkeypatch.setattr(pq.ParquetFile, "read", lambda self, *a, **k: whole.append(1))
    monkeypatch.setattr(pq, "read_table", lambda *a, **k: whole.append(1))
    cfg = ShardConfig(caption_column="text", samples_per_shard=4, partitions=2, min_partition_records=1)
    out = str(tmp_path / "out")
    assert len(plan_partitions(str(tmp_path / "hf.parquet"), out, cfg)["partitions"]) == 2
    for index in (0, 1):  # the pipeline's partition steps, in this process so that the spy sees the reads
        shard_partition(str(tmp_path / "hf.parquet"), out, cfg, index)
    m = merge_partitions(str(tmp_path / "hf.parquet"), out, cfg)
    assert not whole, "the file was read whole"
    assert sorted(read) == [0, 1, 1, 2, 3]  # partition 0 = rows 0-3 (groups 0, 1), partition 1 = rows 4-9 (1, 2, 3)
    assert m.num_samples == 8 and m.rejected["missing_file"] == 1 and m.rejected["undecodable"] == 1
    kept = _captions(out)
    assert kept["embedded picture 3"]["meta"]["label"] == 3 and "image" not in kept["embedded picture 3"]["meta"]
    assert kept["embedded picture 3"]["image"].size == (40, 30)
    assert any(":x.png" in e["ref"] for e in m.rejected_examples["undecodable"])


def test_raw_binary_column_and_arrow_ipc_give_the_same_samples(tmp_path):
    rows = _hf_rows(5)
    flat = [{"jpg": r["image"]["bytes"], "text": r["text"]} for r in rows]
    pq.write_table(pa.Table.from_pylist(flat), tmp_path / "raw.parquet", row_group_size=2)
    table = pa.Table.from_pylist(rows)
    with pa.OSFile(str(tmp_path / "data.arrow"), "wb") as sink:  # the `datasets` cache layout: an IPC stream
        with pa.ipc.new_stream(sink, table.schema) as writer:
            for batch in table.to_batches(max_chunksize=2):
                writer.write_batch(batch)
    a = shard_dataset(str(tmp_path / "raw.parquet"), str(tmp_path / "a"), ShardConfig(image_column="jpg",
                                                                                      caption_column="text"))
    b = shard_dataset(str(tmp_path / "data.arrow"), str(tmp_path / "b"), ShardConfig(caption_column="text"))
    assert a.num_samples == b.num_samples == 5 and a.rejected_total == b.rejected_total == 0
    keys = lambda uri: {s["__key__"] for s in fmt.iter_samples(uri, "all", rank=0, world_size=1, worker=0,  # noqa: E731
                                                              num_workers=1)}
    assert keys(str(tmp_path / "a")) == keys(str(tmp_path / "b"))  # keys are content hashes of the same bytes
    with pytest.raises(Exception, match="missing column"):
        shard_dataset(str(tmp_path / "data.arrow"), str(tmp_path / "c"), ShardConfig())  # no "caption" column
