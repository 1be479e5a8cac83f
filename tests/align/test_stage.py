"""The whole generate-and-curate stage on a tiny trained stage-one model and tiny shards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vlm import storage
from vlm.align import generate_and_curate
from vlm.align.config import AlignConfig
from vlm.align.samples import read_samples, select_keys
from vlm.align.stage import CurateResult
from vlm.data import format as fmt

EXPECTED = {  # colour -> final text after cleaning (see tests/align/tinylm.py for the raw generations)
    "red": "A red square. It has sharp corners.",
    "blue": "A blue circle on a table. It is round.",
    "green": "A green ball on the grass near a tree.",
}


def cfg(**kw) -> AlignConfig:
    base = dict(num_images=6, batch_size=4, min_answer_tokens=30, max_new_tokens=80, min_words=8)
    return AlignConfig(**{**base, **kw})


def colours(data_uri: str) -> dict[str, str]:
    return {s.key: s.meta["colour"] for s in read_samples(select_keys(data_uri, 100, 0))}


def test_curate_end_to_end(stage_one, shards, tmp_path):
    out = str(tmp_path / "curated")
    summary = generate_and_curate(stage_one, shards, out, cfg())
    by_key = colours(shards)
    listing = json.loads(Path(out, "curated.json").read_text())
    assert len(listing) == 6 and {r["key"] for r in listing} == set(by_key)
    for r in listing:
        colour = by_key[r["key"]]
        assert r["final"] == EXPECTED[colour], (colour, r)
        assert r["continued"] == (1 if colour == "red" else 0)
        if colour == "red":
            assert r["kept"] is False and r["reasons"] == ["too_short"]
        else:
            assert r["kept"] is True and r["reasons"] == []
    blue = next(r for r in listing if by_key[r["key"]] == "blue")
    assert [c["reason"] for c in blue["changes"]] == ["repeated_sentence"]
    green = next(r for r in listing if by_key[r["key"]] == "green")
    assert [c["reason"] for c in green["changes"]] == ["word_loop", "cut_off"]

    assert summary.sampled == 6 and summary.kept == 4 and summary.rejected == 2
    assert summary.rejected_by_reason == {"too_short": 2}
    assert summary.changes_by_reason == {"cut_off": 2, "repeated_sentence": 2, "word_loop": 2}
    assert summary.continued == 2
    assert summary.repetition_raw > summary.repetition_final == 0.0
    assert summary.cut_off_raw == pytest.approx(2 / 6, abs=1e-3) and summary.cut_off_final == 0.0
    assert json.loads(Path(out, "summary.json").read_text())["kept"] == 4
    assert isinstance(summary, CurateResult) and summary.output_uri == out
    as_json = json.loads(json.dumps(summary.to_dict()))
    assert CurateResult(**as_json) == summary
    assert ("run_id" in as_json) == (summary.run_id is not None), "an untracked run's JSON has no run_id"
    assert as_json["kept"] == 4 and as_json["sampled"] == 6 and as_json["rejected_by_reason"] == {"too_short": 2}

    manifest = fmt.read_manifest(out)
    assert manifest.kind == "curated" and manifest.rejected == {"too_short": 2}
    assert manifest.num_samples == 4 == sum(s.num_samples for s in manifest.shards) and manifest.num_input_records == 6
    (shard,) = manifest.shards
    path = Path(out, shard.name)
    assert shard.name == "train-000000.tar" and shard.sha256 == storage.sha256_file(path)
    samples = list(fmt.iter_shard(fmt.find_shards(out, "train")[0], verify=True))
    metas = {s["__key__"]: fmt.sample_meta(s) for s in samples}
    assert len(samples) == 4 and all(set(s) == {"__key__", "__shard__", "png", "json"} for s in samples)
    for key, meta in metas.items():
        assert meta["caption"] == EXPECTED[by_key[key]] and meta["captions"] == [meta["caption"]]
        assert meta["width"] == meta["height"] and meta["source"] == "test"


def test_resume_skips_finished_batches_and_refilters(stage_one, shards, tmp_path):
    out = str(tmp_path / "curated")
    first = generate_and_curate(stage_one, shards, out, cfg())
    assert first.generated == 2 and first.resumed_batches == 0
    again = generate_and_curate(stage_one, shards, out, cfg(min_words=3))  # filters only: same fingerprint
    assert again.fingerprint == first.fingerprint
    assert again.generated == 0 and again.resumed_batches == 2
    assert again.kept == 6 and again.rejected_by_reason == {}
    # a half-finished run (one batch file lost) regenerates only that batch
    chunks = sorted(u for u in storage.list_uris(out) if u.endswith(".jsonl"))
    Path(chunks[-1]).unlink()
    third = generate_and_curate(stage_one, shards, out, cfg())
    assert third.generated == 1 and third.resumed_batches == 1 and third.kept == first.kept


def test_ranks_split_the_work(stage_one, shards, tmp_path):
    """Rank 1 runs in its own process (RANK/WORLD_SIZE from the environment, as under torchrun)."""
    out = str(tmp_path / "curated")
    code = ("import json, sys; from vlm.align import generate_and_curate; from vlm.align.config import AlignConfig; "
            "print(json.dumps(generate_and_curate(sys.argv[1], sys.argv[2], sys.argv[3], "
            "AlignConfig.model_validate_json(sys.argv[4])).to_dict()))")
    env = {**os.environ, "RANK": "1", "WORLD_SIZE": "2", "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    worker = subprocess.Popen([sys.executable, "-c", code, stage_one, shards, out, cfg(batch_size=2).model_dump_json()],
                              env=env, stdout=subprocess.PIPE, text=True)
    rank0 = generate_and_curate(stage_one, shards, out, cfg(batch_size=2), rank=0, world_size=2)
    stdout, _ = worker.communicate(timeout=120)
    assert worker.returncode == 0
    rank1 = json.loads(stdout.strip().splitlines()[-1])
    assert rank1 == {"rank": 1, "batches": 2, "generated": 2, "resumed_batches": 0}  # 3 images in batches of 2
    assert rank0.generated == 2 and rank0.sampled == 6
    chunks = [u.rsplit("/", 1)[-1] for u in storage.list_uris(out) if u.endswith(".jsonl")]
    assert sorted(c[:18] for c in chunks) == ["rank00000-of-00002"] * 2 + ["rank00001-of-00002"] * 2
    keys = [json.loads(line)["key"] for u in storage.list_uris(out) if u.endswith(".jsonl")
            for line in Path(u).read_text().splitlines()]
    assert len(keys) == len(set(keys)) == 6
    by_key = colours(shards)
    listing = json.loads(Path(out, "curated.json").read_text())
    assert all(r["final"] == EXPECTED[by_key[r["key"]]] for r in listing)


def test_sampling_is_seeded(shards):
    a, b = select_keys(shards, 3, seed=1), select_keys(shards, 3, seed=1)
    assert a == b and len(set(a)) == 3
    assert any(select_keys(shards, 3, seed=s) != a for s in range(2, 6))
    assert len(select_keys(shards, 100, seed=0)) == 6  # capped at what exists


def test_missing_data_is_a_clear_error(stage_one, tmp_path):
    with pytest.raises(FileNotFoundError, match="no train-\\*.tar shards"):
        generate_and_curate(stage_one, str(tmp_path / "nothing"), str(tmp_path / "out"), cfg())


def test_itc_filter_needs_an_itc_head(stage_one, shards, tmp_path):
    with pytest.raises(ValueError, match="no ITC head"):
        generate_and_curate(stage_one, shards, str(tmp_path / "out"), cfg(min_itc_score=0.1))


def test_rewrite_refuses_a_drifting_rewriter(stage_one, shards, tmp_path):
    """A random tiny LLM as the rewriter writes nonsense: every rewrite is refused, the cleaned text kept."""
    summary = generate_and_curate(stage_one, shards, str(tmp_path / "out"),
                                  cfg(num_images=2, rewrite=True, rewrite_model="tiny", rewrite_max_new_tokens=16,
                                      min_words=3))
    assert summary.rewritten == 0
    assert sum(summary.rewrite_refused.values()) == 2
    assert set(summary.rewrite_refused) <= {"rewrite_empty", "rewrite_drifted", "rewrite_explains"}
    assert summary.kept == 2


def test_s3_and_mlflow(stage_one, shards, s3_prefix, mlflow_uri):
    from mlflow import MlflowClient

    data = f"{s3_prefix}/data"
    storage.upload_tree(shards, data)
    out = f"{s3_prefix}/curated"
    summary = generate_and_curate(stage_one, data, out, cfg(num_images=3), experiment="align-test")
    assert storage.exists(f"{out}/train-000000.tar") and storage.exists(f"{out}/curated.json")
    assert summary.to_dict()["run_id"] == summary.run_id
    run = MlflowClient().get_run(summary.run_id)
    assert run.data.tags["vlm.stage"] == "align"
    assert run.data.metrics["kept"] == summary.kept and run.data.metrics["sampled"] == 3
    assert run.data.params["align.num_images"] == "3"
    arts = {a.path for a in MlflowClient().list_artifacts(summary.run_id, "align")}
    assert {"align/summary.json", "align/curated.json"} <= arts
