"""The sharding fan-out: N partitions give the same dataset as one, in any order, and a killed one resumes."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal

import pytest

import vlm.data.shard as shard_mod
from tests.data.helpers import encode, noise_image
from vlm.data import format as fmt
from vlm.data.config import ShardConfig
from vlm.data.shard import InputError, merge_partitions, plan_partitions, shard_dataset, shard_partition

VOLATILE = {"created_at", "elapsed_s", "merge_s", "partitions", "resumed_shards", "config"}


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """40 rows: 30 unique images, 6 rows repeating earlier images (across partitions) with new captions and QA,
    and 4 bad rows."""
    root = tmp_path_factory.mktemp("fanout")
    (root / "img").mkdir()
    rows = []
    for i in range(30):
        (root / "img" / f"{i}.jpg").write_bytes(encode(noise_image(i, (48, 40))))
        rows.append({"image": f"img/{i}.jpg", "caption": f"picture {i}", "qa": [{"question": "which?", "answer": str(i)}]})
    for i in (0, 3, 11, 20, 21, 3):  # duplicates late in the input: their first occurrence is in another partition
        rows.append({"image": f"img/{i}.jpg", "caption": f"again picture {i}",
                     "qa": [{"question": "again?", "answers": ["yes"]}]})
    rows += [{"image": "img/missing.jpg", "caption": "gone"}, {"image": "img/1.jpg", "caption": "..."},
             {"image": "img/2.jpg", "caption": None}, {"image": "../escape.jpg", "caption": "out"}]
    path = root / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def _cfg(**kw) -> ShardConfig:
    return ShardConfig(samples_per_shard=4, min_partition_records=1, split={"train": 0.6, "val": 0.2, "test": 0.2},
                       **kw)


def _stable(manifest: fmt.Manifest) -> dict:
    return {k: v for k, v in manifest.to_dict().items() if k not in VOLATILE}


@pytest.fixture(scope="module")
def one(table, tmp_path_factory) -> fmt.Manifest:
    out = str(tmp_path_factory.mktemp("one") / "ds")
    return shard_dataset(table, out, _cfg())


def test_three_partitions_give_the_same_dataset_as_one(table, one, tmp_path):
    three = shard_dataset(table, str(tmp_path / "three"), _cfg(partitions=3, workers=2))
    assert one.partitions == 1 and three.partitions == 3
    assert three.shards == one.shards  # same names, counts, sizes and sha256: byte-identical shards
    assert _stable(three) == _stable(one)    # same totals, rejections (and examples), merged captions
    assert one.num_input_records == 40 and one.num_samples == 30
    assert one.rejected["duplicate"] == 6 and one.captions_merged == 5  # the second repeat of 3 adds none
    assert {k: v for k, v in one.rejected.items() if v} == {"duplicate": 6, "missing_file": 1, "bad_caption": 1,
                                                               "empty_caption": 1, "unsafe_path": 1}
    # first occurrence in input order wins and gains the later captions and QA
    metas = {s["meta"]["ref"]: s["meta"] for s in fmt.iter_samples(str(tmp_path / "three"), "all", rank=0,
                                                                    world_size=1, worker=0, num_workers=1)}
    first = next(m for ref, m in metas.items() if ref.endswith(":img/3.jpg"))
    assert first["captions"] == ["picture 3", "again picture 3"]  # the second repeat adds no new caption
    assert first["qa"] == [{"question": "which?", "answers": ["3"]}, {"question": "again?", "answers": ["yes"]}]
    lines = {int(ref.split(":")[1]) for ref in metas}  # refs are rows.jsonl:<line>:<image>
    assert lines == set(range(1, 31))  # the 30 first occurrences, never a later repeat
    dup = [int(e["ref"].split(":")[1]) for e in one.rejected_examples["duplicate"]]
    assert dup == [31, 32, 33, 34, 35]  # examples in input order (5 kept per reason)
    assert not (tmp_path / "three" / "_parts").exists()


def test_partition_steps_in_any_order_then_merge(table, one, tmp_path):
    out = str(tmp_path / "steps")
    cfg = _cfg(partitions=3)
    plan = plan_partitions(table, out, cfg)
    assert plan["num_records"] == 40 and len(plan["partitions"]) == 3
    assert [b - a for a, b in plan["partitions"]] == [12, 12, 16]  # whole chunks of 4 records
    with pytest.raises(InputError, match=r"partition\(s\) \[0, 1, 2\] .* not finished"):
        merge_partitions(table, out, cfg)
    for index in (2, 0, 1):
        summary = shard_partition(table, out, cfg, index)
        assert summary["chunks"] == len(range(*plan["partitions"][index], 4)) and summary["resumed_chunks"] == 0
    merged = merge_partitions(table, out, cfg)
    assert merged.shards == one.shards and _stable(merged) == _stable(one)
    # re-running every step on the complete dataset does nothing and changes nothing
    again = plan_partitions(table, out, cfg)
    assert again["complete"] and again["partitions"] == []
    assert shard_partition(table, out, cfg, 0)["chunks"] == 0
    assert merge_partitions(table, out, cfg).resumed_shards == len(one.shards)
    # small inputs stay one partition
    assert len(plan_partitions(table, str(tmp_path / "small"), cfg.model_copy(update={"min_partition_records": 30}))
               ["partitions"]) == 1


def _die_after_two_chunks(table: str, out: str, cfg_json: str) -> None:
    real, done = shard_mod._write_chunk, []

    def write_then_maybe_die(*args, **kw):
        result = real(*args, **kw)
        done.append(1)
        if len(done) == 2:
            os.kill(os.getpid(), signal.SIGKILL)  # a real kill: no cleanup, no exception handlers
        return result

    shard_mod._write_chunk = write_then_maybe_die
    shard_partition(table, out, ShardConfig.model_validate_json(cfg_json), 2)


def test_a_killed_partition_resumes_at_its_first_unfinished_chunk(table, one, tmp_path):
    out = str(tmp_path / "killed")
    cfg = _cfg(partitions=3)
    plan_partitions(table, out, cfg)
    shard_partition(table, out, cfg, 0)
    shard_partition(table, out, cfg, 1)
    proc = mp.get_context("fork").Process(target=_die_after_two_chunks, args=(table, out, cfg.model_dump_json()))
    proc.start()
    proc.join(120)
    assert proc.exitcode == -signal.SIGKILL
    with pytest.raises(InputError, match=r"partition\(s\) \[2\]"):
        merge_partitions(table, out, cfg)
    summary = shard_partition(table, out, cfg, 2)
    assert summary["chunks"] == 4 and summary["resumed_chunks"] == 2 and summary["records"] == 8
    merged = merge_partitions(table, out, cfg)
    assert merged.shards == one.shards and _stable(merged) == _stable(one)


def test_a_plan_for_another_config_is_refused(table, tmp_path):
    out = str(tmp_path / "o")
    plan_partitions(table, out, _cfg(partitions=2))
    with pytest.raises(InputError, match="another input or config"):
        shard_partition(table, out, _cfg(partitions=2, jpeg_quality=50), 0)
    with pytest.raises(InputError, match="out of range"):
        shard_partition(table, out, _cfg(partitions=2), 5)
