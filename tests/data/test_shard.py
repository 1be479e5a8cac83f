"""Sharding: input formats, builtin sources, determinism, resumption, parallel workers, S3, CLI."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

import vlm.data.shard as shard_mod
from tests.data.helpers import encode, noise_image
from vlm import storage
from vlm.data.config import ShardConfig
from vlm.data import format as fmt
from vlm.data.shard import InputError, shard_dataset
from vlm.data.sources.shapes import COLORS

SMALL = dict(builtin_size=40, builtin_image_size=48, samples_per_shard=6)


def iter_samples(uri: str, split: str = "all"):
    return fmt.iter_samples(uri, split, rank=0, world_size=1, worker=0, num_workers=1)


def _keys_captions(uri: str) -> dict[str, str]:
    return {s["__key__"]: s["meta"]["caption"] for s in iter_samples(uri, "all")}


def _table_rows(root) -> list[dict]:
    (root / "img").mkdir(parents=True)
    rows = []
    for i in range(6):
        (root / "img" / f"{i}.png").write_bytes(encode(noise_image(i), "PNG"))
        rows.append({"image": f"img/{i}.png", "caption": f"picture number {i}", "photographer": f"p{i}",
                     "qa": json.dumps([{"question": "which?", "answers": [str(i)]}])})
    return rows


def test_jsonl_csv_parquet_give_the_same_samples(tmp_path):
    rows = _table_rows(tmp_path)
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps({**r, "qa": json.loads(r["qa"])}) for r in rows))
    pd.DataFrame(rows).to_csv(tmp_path / "d.csv", index=False)
    pd.DataFrame(rows).to_parquet(tmp_path / "d.parquet")
    results = {}
    for ext in ("jsonl", "csv", "parquet"):
        m = shard_dataset(str(tmp_path / f"d.{ext}"), str(tmp_path / f"out-{ext}"), ShardConfig())
        assert m.source == "table" and m.num_samples == 6 and m.rejected_total == 0
        results[ext] = {s["__key__"]: s["meta"] for s in iter_samples(str(tmp_path / f"out-{ext}"), "all")}
    assert results["jsonl"].keys() == results["csv"].keys() == results["parquet"].keys()
    for key, meta in results["csv"].items():
        assert meta["photographer"] == results["parquet"][key]["photographer"]
        assert meta["qa"] == results["jsonl"][key]["qa"] == [{"question": "which?", "answers": [meta["caption"][-1]]}]


def test_csv_invalid_utf8_caption_is_a_counted_rejection(tmp_path):
    _table_rows(tmp_path)
    (tmp_path / "d.csv").write_bytes(b"image,caption\nimg/0.png,fine caption\nimg/1.png,caf\xe9\n")
    m = shard_dataset(str(tmp_path / "d.csv"), str(tmp_path / "out"), ShardConfig())
    assert m.num_samples == 1 and m.rejected["bad_caption"] == 1


def test_bad_config_and_unusable_input_stop_at_once(tmp_path):
    with pytest.raises(ValidationError, match="all zero"):
        ShardConfig(split={"train": 0, "val": 0, "test": 0})
    with pytest.raises(ValidationError, match="Extra inputs"):
        ShardConfig(sampels_per_shard=3)
    with pytest.raises(InputError, match="cannot read input"):
        shard_dataset(str(tmp_path / "nope"), str(tmp_path / "out"), ShardConfig())
    with pytest.raises(InputError, match="not found"):
        shard_dataset(str(tmp_path / "nope.jsonl"), str(tmp_path / "out"), ShardConfig())
    with pytest.raises(InputError, match="builtin:shapes"):
        shard_dataset("builtin:nope", str(tmp_path / "out"), ShardConfig())
    (tmp_path / "cols.csv").write_text("path,text\na.jpg,hello\n")
    with pytest.raises(InputError, match=r"missing column\(s\) \['image', 'caption'\]"):
        shard_dataset(str(tmp_path / "cols.csv"), str(tmp_path / "out"), ShardConfig())
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(InputError, match="cannot parse"):
        shard_dataset(str(tmp_path / "broken.parquet"), str(tmp_path / "out"), ShardConfig())
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_manifest_contract_and_split_by_key(tmp_path):
    m = shard_dataset("builtin:shapes", str(tmp_path / "a"), ShardConfig(**SMALL))
    assert isinstance(m, fmt.Manifest)
    assert m.num_samples == 40 == sum(s.num_samples for s in m.shards)
    assert m.config["samples_per_shard"] == 6 and m.config["input"] == "builtin:shapes"
    for s in m.shards:
        assert s.name.startswith(s.split + "-") and s.num_samples <= 6
        assert storage.sha256_file(tmp_path / "a" / s.name) == s.sha256
    assert fmt.read_manifest(str(tmp_path / "a")).to_dict() == m.to_dict() == json.loads(m.to_json())
    # a different shard size moves no sample to another split
    other = shard_dataset("builtin:shapes", str(tmp_path / "b"), ShardConfig(**{**SMALL, "samples_per_shard": 100}))
    for split in ("train", "val", "test"):
        a = {s["__key__"] for s in iter_samples(str(tmp_path / "a"), split)} if m.splits[split].num_shards else set()
        b = {s["__key__"] for s in iter_samples(str(tmp_path / "b"), split)} if other.splits[split].num_shards else set()
        assert a == b


def test_rerun_is_identical_and_resumes_after_interruption(tmp_path, monkeypatch):
    cfg = ShardConfig(**SMALL)
    clean = shard_dataset("builtin:shapes", str(tmp_path / "clean"), cfg)
    again = shard_dataset("builtin:shapes", str(tmp_path / "clean"), cfg)
    assert again.resumed_shards == len(clean.shards) and again.shards == clean.shards

    real, calls = shard_mod._write_final, []

    def crash_on_third(task):
        calls.append(task["name"])
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated crash")
        return real(task)

    monkeypatch.setattr(shard_mod, "_write_final", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        shard_dataset("builtin:shapes", str(tmp_path / "resumed"), cfg)
    assert not (tmp_path / "resumed" / "manifest.json").exists()
    monkeypatch.setattr(shard_mod, "_write_final", real)
    first_shard = tmp_path / "resumed" / clean.shards[0].name
    mtime = first_shard.stat().st_mtime_ns
    resumed = shard_dataset("builtin:shapes", str(tmp_path / "resumed"), cfg)
    assert resumed.resumed_shards == 2
    assert first_shard.stat().st_mtime_ns == mtime  # not rewritten
    assert resumed.shards == clean.shards     # byte-identical (sha256) to an uninterrupted run

    # a damaged shard is detected and rewritten; a changed config invalidates every shard
    victim = tmp_path / "resumed" / clean.shards[1].name
    victim.write_bytes(victim.read_bytes()[:100])
    fixed = shard_dataset("builtin:shapes", str(tmp_path / "resumed"), cfg)
    assert fixed.resumed_shards == len(clean.shards) - 1 and fixed.shards == clean.shards
    changed = shard_dataset("builtin:shapes", str(tmp_path / "resumed"), cfg.model_copy(update={"jpeg_quality": 50}))
    assert changed.resumed_shards == 0


def test_two_workers_write_the_same_shards(tmp_path):
    one = shard_dataset("builtin:shapes", str(tmp_path / "one"), ShardConfig(**SMALL))
    two = shard_dataset("builtin:shapes", str(tmp_path / "two"), ShardConfig(**SMALL, workers=2))
    assert one.shards == two.shards


def test_stale_shards_of_a_bigger_earlier_run_are_removed(tmp_path):
    shard_dataset("builtin:shapes", str(tmp_path / "o"), ShardConfig(**SMALL))
    m = shard_dataset("builtin:shapes", str(tmp_path / "o"), ShardConfig(**{**SMALL, "builtin_size": 10}))
    on_disk = sorted(p.name for p in (tmp_path / "o").glob("*.tar"))
    assert on_disk == sorted(s.name for s in m.shards)


def test_shapes_captions_are_exact(tmp_path):
    shard_dataset("builtin:shapes", str(tmp_path / "s"), ShardConfig(builtin_size=12, builtin_image_size=96,
                                                                     max_side=96, jpeg_quality=95))
    cells = {"top left": (0, 0), "top": (1, 0), "top right": (2, 0), "left": (0, 1), "center": (1, 1),
             "right": (2, 1), "bottom left": (0, 2), "bottom": (1, 2), "bottom right": (2, 2)}
    n = 0
    for s in iter_samples(str(tmp_path / "s"), "all"):
        meta, im = s["meta"], np.asarray(s["image"], dtype=int)
        assert len(meta["objects"]) == int(meta["qa"][0]["answers"][0])
        for obj in meta["objects"]:
            assert f"a {obj['color']} {obj['shape']} at the {obj['position']}" in meta["caption"].lower()
            cx, cy = cells[obj["position"]]
            patch = im[cy * 32 + 13 : cy * 32 + 19, cx * 32 + 13 : cx * 32 + 19].reshape(-1, 3).mean(0)
            assert np.abs(patch - np.array(COLORS[obj["color"]])).max() < 40, (meta["caption"], patch)
            n += 1
    assert n >= 12


def test_builtin_photos_and_easy_vqa(tmp_path):
    photos = shard_dataset("builtin:photos", str(tmp_path / "p"), ShardConfig(max_side=64))
    assert photos.num_samples == photos.num_input_records >= 12 and photos.rejected_total == 0
    metas = [s["meta"] for s in iter_samples(str(tmp_path / "p"), "all")]
    assert all(len(m["captions"]) >= 2 and m["qa"] for m in metas)
    assert any("cat" in m["caption"] for m in metas)
    vqa = shard_dataset("builtin:easy-vqa", str(tmp_path / "v"), ShardConfig(limit=60, max_side=64))
    assert vqa.num_input_records == 60 and vqa.num_samples + vqa.rejected_total == 60
    for s in iter_samples(str(tmp_path / "v"), "all"):
        words = s["meta"]["caption"].rstrip(".").lower().split()
        said = {w for q in s["meta"]["qa"] for w in q["question"].rstrip("?").split() + q["answers"]}
        assert words[0] == "a" and set(words[1:]) - {"shape"} <= said  # derived from this image's QA
        assert s["meta"]["orig_split"] in ("train", "test") and s["image"].size == (64, 64)


def test_reshard_existing_webdataset_by_glob(tmp_path):
    src = shard_dataset("builtin:shapes", str(tmp_path / "src"), ShardConfig(**SMALL))
    m = shard_dataset(str(tmp_path / "src" / "train-*.tar"), str(tmp_path / "re"), ShardConfig(samples_per_shard=50))
    assert m.source == "webdataset" and m.num_samples == src.splits["train"].num_samples
    old = {s["meta"]["caption"]: s["meta"]["qa"] for s in iter_samples(str(tmp_path / "src"), "train")}
    new = {s["meta"]["caption"]: s["meta"]["qa"] for s in iter_samples(str(tmp_path / "re"), "all")}
    assert old == new


def test_cli(tmp_path):
    from vlm.cli import app

    runner = CliRunner()
    out = tmp_path / "cli"
    res = runner.invoke(app, ["shard", "builtin:shapes", str(out), "--builtin-size", "20", "-n", "8",
                              "--split", "1,0,0", "--set", "builtin_image_size=32"])
    assert res.exit_code == 0, res.output
    m = fmt.read_manifest(str(out))
    assert m.num_samples == 20 and m.splits["train"].num_shards == 3
    assert m.config["builtin_image_size"] == 32
    printed = json.loads(res.stdout[res.stdout.index("{"):])
    assert printed["num_samples"] == 20 and printed["shards"] == 3 and printed["splits"]["train"]["num_shards"] == 3
    bad = runner.invoke(app, ["shard", "builtin:shapes", str(out), "--long-captions", "maybe"])
    assert bad.exit_code == 2 and "long_captions" in bad.output
    missing = runner.invoke(app, ["shard", str(tmp_path / "none.csv"), str(out)])
    assert missing.exit_code == 1 and "not found" in missing.output


def test_s3_in_and_out(tmp_path, s3_prefix):
    rows = _table_rows(tmp_path)
    rows.append({"image": "img/absent.png", "caption": "missing on S3"})
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    storage.upload_tree(tmp_path, f"{s3_prefix}/raw")
    out = f"{s3_prefix}/shards"
    m = shard_dataset(f"{s3_prefix}/raw/d.jsonl", out, ShardConfig(samples_per_shard=2, workers=2))
    assert m.num_samples == 6 and m.rejected["missing_file"] == 1
    for s in m.shards:
        assert storage.sha256_uri(f"{out}/{s.name}") == s.sha256
    assert fmt.read_manifest(out).num_samples == 6
    got = sorted(s["meta"]["caption"] for s in iter_samples(out, "all"))
    assert got == sorted(f"picture number {i}" for i in range(6))
    again = shard_dataset(f"{s3_prefix}/raw/d.jsonl", out, ShardConfig(samples_per_shard=2, workers=2))
    assert again.resumed_shards == len(m.shards) and again.shards == m.shards
    # WebDataset tars on S3 as input (a prefix)
    re = shard_dataset(out, str(tmp_path / "local"), ShardConfig())
    assert re.source == "webdataset" and re.num_samples == 6
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in m.to_json()
