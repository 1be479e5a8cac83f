"""The format module: manifest, QA rule, writer, reader (partition, shuffle, resume, errors), S3 opener."""

from __future__ import annotations

import collections
import io
import itertools
import json

import pytest
import torch
from PIL import Image

from tests.data.helpers import encode, noise_image
from vlm import storage
from vlm.data import format as fmt


def _keys(uri: str, split: str, **kw) -> list[str]:
    return [s["__key__"] for s in fmt.iter_samples(uri, split, rank=0, world_size=1, worker=0, num_workers=1, **kw)]


class _Split(torch.utils.data.IterableDataset):
    """How a user feeds the reader to a DataLoader: rank from the environment, worker from torch."""

    def __init__(self, uri: str, split: str, **kw):
        super().__init__()
        self.uri, self.split, self.kw = uri, split, kw

    def __iter__(self):
        return fmt.iter_samples(self.uri, self.split, **self.kw)


def _loader_keys(uri: str, split: str, monkeypatch, world: int = 2, workers: int = 2, **kw) -> list[list[str]]:
    per_rank = []
    for rank in range(world):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", str(world))
        loader = torch.utils.data.DataLoader(_Split(uri, split, **kw), batch_size=3, num_workers=workers,
                                             collate_fn=list)
        per_rank.append([s["__key__"] for batch in loader for s in batch])
    return per_rank


def _samples(n: int, bad: set[int] = frozenset()) -> list[tuple[str, dict[str, bytes]]]:
    out = []
    for i in range(n):
        img = b"not an image" if i in bad else encode(noise_image(i, (24, 20)))
        meta = {"caption": f"picture {i}", "captions": [f"picture {i}"], "qa": [{"question": "n?", "answer": str(i)}]}
        out.append((f"k{i:03d}", {"jpg": img, "json": json.dumps(meta).encode()}))
    return out


def _dataset(root, samples, per_shard: int = 4) -> str:
    shards = fmt.write_split(str(root), "train", samples, per_shard)
    fmt.write_manifest(str(root), fmt.Manifest.build(shards, name="t"))
    return str(root)


# ------------------------------------------------------------------------------------------ partition & stream
def test_every_sample_exactly_once_across_2_ranks_x_2_workers(shapes_dataset, monkeypatch):
    uri, manifest = shapes_dataset
    expected = _keys(uri, "train")
    assert len(expected) == manifest.splits["train"].num_samples > 0
    assert manifest.splits["train"].num_shards >= 4  # more shards than consumers: whole-shard split
    per_rank = _loader_keys(uri, "train", monkeypatch, shuffle_buffer=5)
    assert collections.Counter(k for keys in per_rank for k in keys) == collections.Counter(expected)
    assert all(per_rank)


def test_fewer_shards_than_consumers_splits_samples(tmp_path, monkeypatch):
    uri = _dataset(tmp_path / "one", _samples(23), per_shard=100)
    assert len(fmt.find_shards(uri, "train")) == 1
    expected = _keys(uri, "train")
    per_rank = _loader_keys(uri, "train", monkeypatch)
    assert sorted(k for keys in per_rank for k in keys) == sorted(expected) and len(expected) == 23
    assert min(len(k) for k in per_rank) >= 10  # the work really is split


def test_partition_is_disjoint_and_complete():
    for shards in range(1, 9):
        for consumers in range(1, 7):
            owners = collections.Counter()
            for c in range(consumers):
                picked, stride, offset = fmt.partition(shards, c, consumers)
                owners.update((s, j) for s in picked for j in range(10)
                              if ((picked.index(s) * 10 + j) % stride) == offset)
            assert len(owners) == shards * 10 and set(owners.values()) == {1}, (shards, consumers)
    with pytest.raises(ValueError, match="out of range"):
        fmt.partition(3, 2, 2)


def test_shuffle_resample_and_resume_by_position(shapes_dataset):
    uri, _ = shapes_dataset
    plain = _keys(uri, "train")
    shards = fmt.find_shards(uri, "train")
    a = [s["__key__"] for _, s in fmt.ShardStream(shards, seed=1, shuffle_shards=True, shuffle_buffer=16)]
    b = [s["__key__"] for _, s in fmt.ShardStream(shards, seed=1, shuffle_shards=True, shuffle_buffer=16)]
    other = [s["__key__"] for _, s in fmt.ShardStream(shards, seed=2, shuffle_shards=True, shuffle_buffer=16)]
    assert a == b and sorted(a) == sorted(plain) and a != plain and other != a
    stream = fmt.ShardStream(shards, consumer=1, consumers=2, seed=3, shuffle_shards=True, shuffle_buffer=4,
                             resample=True)
    epochs = {e: [s["__key__"] for s in stream.epoch(e)] for e in range(3)}
    other_half = fmt.ShardStream(shards, consumer=0, consumers=2, seed=3, shuffle_shards=True, shuffle_buffer=4)
    assert sorted(epochs[0] + [s["__key__"] for s in other_half.epoch(0)]) == sorted(plain)  # disjoint cover
    assert epochs[0] != epochs[1]
    flat = [(e, s["__key__"]) for e, s in itertools.islice(stream, sum(map(len, epochs.values())))]
    assert flat == [(e, k) for e in range(3) for k in epochs[e]]  # infinite, epoch after epoch
    # exact resume: a fresh stream with the first n samples skipped continues where the first one was
    n = len(epochs[0]) + 3
    again = fmt.ShardStream(shards, consumer=1, consumers=2, seed=3, shuffle_shards=True, shuffle_buffer=4,
                            resample=True)
    assert [(e, s["__key__"]) for e, s in itertools.islice(again, n, n + 10)] == flat[n : n + 10]


def test_samples_are_rgb_images_with_meta(shapes_dataset):
    uri, _ = shapes_dataset
    sample = next(fmt.iter_samples(uri, "val", rank=0, world_size=1, worker=0, num_workers=1))
    assert isinstance(sample["image"], Image.Image) and sample["image"].mode == "RGB"
    assert sample["image"].size == (sample["meta"]["width"], sample["meta"]["height"])
    assert sample["meta"]["caption"] == sample["meta"]["captions"][0] and sample["meta"]["source"] == "shapes"
    assert sample["__shard__"].endswith("val-000000.tar")


def test_unknown_split_and_missing_manifest_are_clear(shapes_dataset, tmp_path):
    uri, manifest = shapes_dataset
    with pytest.raises(fmt.FormatError, match="available: test, train, val"):
        next(fmt.iter_samples(uri, "dev"))
    assert fmt.read_manifest(uri + "/manifest.json").num_samples == manifest.num_samples
    with pytest.raises(FileNotFoundError, match="no manifest"):
        fmt.read_manifest(str(tmp_path))
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(fmt.FormatError, match="not valid JSON"):
        fmt.read_manifest(str(tmp_path))
    (tmp_path / "manifest.json").write_text(json.dumps({"shards": {"a": 1}}))
    with pytest.raises(fmt.FormatError, match="not a dataset manifest"):
        fmt.read_manifest(str(tmp_path))


def test_bare_tars_without_manifest_are_listed_with_a_warning(tmp_path, caplog):
    for split in ("train", "val"):
        fmt.write_split(str(tmp_path), split, _samples(5), 2)
    refs = fmt.find_shards(str(tmp_path), "train")
    assert [r.name for r in refs] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    assert refs[0].sha256 is None and "no manifest.json" in caplog.text
    assert fmt.find_shards(str(tmp_path), "test") == []


# ------------------------------------------------------------------------------------------ manifest & QA
def test_manifest_round_trips_with_stage_fields(tmp_path):
    shards = fmt.write_split(str(tmp_path), "train", _samples(5), 2)
    m = fmt.Manifest.build(shards, name="x", rejected={"duplicate": 2, "too_small": 1}, captions_merged=3)
    assert m.num_samples == 5 and m.splits["train"].num_shards == 3 and m.splits["val"].num_samples == 0
    assert m.rejected_total == 3 and [s.split for s in m.shards] == ["train"] * 3
    fmt.write_manifest(str(tmp_path), m)
    back = fmt.read_manifest(str(tmp_path))
    assert back == m and back.captions_merged == 3
    assert fmt.manifest_sha256(str(tmp_path)) == storage.sha256_file(tmp_path / "manifest.json")
    assert fmt.is_dataset(str(tmp_path)) and not fmt.is_dataset(str(tmp_path / "nope"))


def test_one_rule_for_answer_and_answers():
    assert fmt.QA.parse({"question": " Color? ", "answers": ["red", "blue", "red", " "]}) == \
        fmt.QA("Color?", ("red", "blue", "red"))
    assert fmt.QA.parse({"question": "Color?", "answers": ["red", "blue", "red"]}).answer == "red"
    assert fmt.QA.parse({"question": "How many?", "answer": 3}).answers == ("3",)  # a single answer
    assert fmt.QA.parse({"question": "Where?", "answers": "left"}).answers == ("left",)
    typed = fmt.QA.parse({"question": "Is it?", "answers": ["yes"], "answer_type": "yes/no", "question_id": 7})
    assert typed.to_json() == {"question": "Is it?", "answers": ["yes"], "answer_type": "yes/no", "question_id": 7}
    for bad in ({"question": "q"}, {"question": "", "answers": ["a"]}, {"answers": ["a"]}, "q?",
                {"question": "q", "answers": ["", "  "]}, {"question": "q", "answer": None},
                {"question": "q", "answers": [True]}):
        with pytest.raises(fmt.SampleError, match="bad_qa"):
            fmt.QA.parse(bad)
    good, bad = fmt.parse_qa([{"question": "a?", "answer": "x"}, {"question": "b?"}, 5])
    assert [q.question for q in good] == ["a?"] and bad == 2
    assert fmt.parse_qa(None) == ([], 0) and fmt.parse_qa("junk") == ([], 1)


def test_training_and_evaluation_agree_on_a_single_answer(tmp_path):
    """The record eval used to reject as bad_qa and training accepted: both read it the same way now."""
    from vlm.eval.config import EvalConfig
    from vlm.eval.data import load_eval_data
    from vlm.train.data import ExampleBuilder

    meta = {"caption": "a dot", "qa": [{"question": "What is it?", "answer": "a dot"}, {"question": "Empty?"}]}
    root = tmp_path / "d"
    shard = fmt.write_shard(str(root / "test-000000.tar"), [("k", {"png": encode(noise_image(1), "PNG"),
                                                                   "json": json.dumps(meta).encode()})], "test")
    fmt.write_manifest(str(root), fmt.Manifest.build([shard]))
    data = load_eval_data(str(root), EvalConfig(split="test"))
    assert data.samples[0].qa == [{"question": "What is it?", "answers": ["a dot"], "answer_type": None}]
    assert data.rejected == {"bad_qa": 1}
    ex = ExampleBuilder(["vqa"], ["Describe."]).build({"__key__": "k", "image": None, "meta": meta})
    assert (ex["instruction"], ex["answer"]) == ("What is it?", "a dot")


# ------------------------------------------------------------------------------------------ writer
def test_writer_is_deterministic_atomic_and_hashes_what_it_writes(tmp_path):
    a = fmt.write_shard(str(tmp_path / "a" / "train-000000.tar"), _samples(6), "train")
    b = fmt.write_shard(str(tmp_path / "b" / "train-000000.tar"), _samples(6), "train")
    assert a.sha256 == b.sha256 == storage.sha256_file(tmp_path / "a" / "train-000000.tar")
    assert a.size == (tmp_path / "a" / "train-000000.tar").stat().st_size and a.num_samples == 6
    import webdataset as wds

    # a plain webdataset pipeline reads our shards: members, keys and order as written
    got = [(s["__key__"], sorted(k for k in s if not k.startswith("__")))
           for s in wds.WebDataset(str(tmp_path / "a" / "train-000000.tar"), shardshuffle=False)]
    assert got == [(f"k{i:03d}", ["jpg", "json"]) for i in range(6)]
    with pytest.raises(RuntimeError):
        with fmt.ShardWriter(str(tmp_path / "c" / "x.tar")) as w:
            w.write("k", {"jpg": b"1"})
            raise RuntimeError("crash while writing")
    assert not list((tmp_path / "c").iterdir())  # nothing published, no temporary left


# ------------------------------------------------------------------------------------------ reader errors
@pytest.mark.parametrize("where", ["inside a member", "at a header boundary"])
def test_truncated_shard_raises_naming_it_or_is_a_counted_skip(tmp_path, where):
    uri = _dataset(tmp_path / "d", _samples(8), per_shard=4)
    victim = tmp_path / "d" / "train-000001.tar"
    second = next(s for s in fmt.scan_tar(str(victim)) if s.key == "k005").members["jpg"]  # 2nd sample's 1st member
    data = victim.read_bytes()
    inside = where == "inside a member"
    victim.write_bytes(data[: second.offset + 100 if inside else second.offset - 512])  # - 512: its header
    # inside k005: k004 is known complete; at the boundary after k004 nothing says k004 had all its members
    kept = 1 if inside else 0
    with pytest.raises(fmt.ShardError, match=f"train-000001.tar: truncated or corrupt after {kept} sample") as exc:
        list(fmt.iter_shard(str(victim)))
    assert exc.value.reason == "corrupt_shard"
    rejected = collections.Counter()
    keys = _keys(uri, "train", rejected=rejected)
    assert keys == ["k000", "k001", "k002", "k003", "k004"][: 4 + kept]  # complete samples before the damage
    assert rejected == {"corrupt_shard": 1}


def test_verify_checks_the_manifest_before_yielding(tmp_path):
    uri = _dataset(tmp_path / "d", _samples(8), per_shard=4)
    victim = tmp_path / "d" / "train-000000.tar"
    data = bytearray(victim.read_bytes())
    data[600] ^= 0xFF  # same size, one byte flipped inside the first image
    victim.write_bytes(bytes(data))
    ref = fmt.find_shards(uri, "train")[0]
    assert len(list(fmt.iter_shard(ref))) == 4  # unverified: the damage goes unnoticed
    with pytest.raises(fmt.ShardError, match="sha256 differs from the manifest") as exc:
        next(fmt.iter_shard(ref, verify=True))
    assert exc.value.reason == "checksum_mismatch" and exc.value.shard == ref.uri
    rejected = collections.Counter()
    assert _keys(uri, "train", verify=True, rejected=rejected) == [f"k{i:03d}" for i in range(4, 8)]
    assert rejected == {"checksum_mismatch": 1}
    (tmp_path / "d" / "train-000001.tar").unlink()
    with pytest.raises(fmt.ShardError, match="train-000001.tar: missing"):
        list(fmt.iter_shard(fmt.find_shards(uri, "train")[1]))


def test_bad_samples_are_counted_by_reason(tmp_path):
    samples = _samples(6, bad={1})
    samples[2] = ("k002", {"jpg": samples[2][1]["jpg"], "json": b"{broken"})
    samples[3] = ("k003", {"json": samples[3][1]["json"]})
    uri = _dataset(tmp_path / "d", samples)
    rejected = collections.Counter()
    assert _keys(uri, "train", rejected=rejected) == ["k000", "k004", "k005"]
    assert rejected == {"undecodable": 1, "bad_json": 1, "no_image": 1}
    with pytest.raises(fmt.SampleError) as exc:
        fmt.decode(next(fmt.iter_shard(fmt.find_shards(uri)[0], keys={"k001"})))
    assert exc.value.reason == "undecodable"


# ------------------------------------------------------------------------------------------ S3
def test_s3_shards_through_the_reader_and_webdataset(tmp_path, s3_prefix):
    local = _dataset(tmp_path / "d", _samples(7), per_shard=3)
    remote = f"{s3_prefix}/d"
    storage.upload_tree(local, remote)
    assert _keys(remote, "train", verify=True) == [f"k{i:03d}" for i in range(7)]
    wds = fmt.webdataset()  # s3:// is a webdataset URL scheme, opened through vlm.storage
    urls = f"{remote}/train-{{000000..000002}}.tar"
    assert [s["__key__"] for s in wds.WebDataset(urls, shardshuffle=False)] == [f"k{i:03d}" for i in range(7)]
    written = fmt.write_shard(f"{remote}/extra-000000.tar", _samples(2))
    assert written.sha256 == storage.sha256_uri(f"{remote}/extra-000000.tar")
    assert fmt.shard_keys(f"{remote}/extra-000000.tar") == ["k000", "k001"]


def test_scan_tar_groups_members_and_reports_unsafe_ones_per_sample(tmp_path):
    import tarfile

    path = tmp_path / "in.tar"
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tf:
        for name, data in (("a.jpg", b"1"), ("a.json", b"{}"), ("../x.jpg", b"2"), ("../x.json", b"{}")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("b.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
    samples = list(fmt.scan_tar(str(path)))
    by_key = {s.key: s for s in samples}
    assert set(by_key) == {"a", "../x", "b"}
    assert not by_key["a"].unsafe and fmt.read_member(str(path), by_key["a"].members["jpg"]) == b"1"
    assert len(by_key["../x"].unsafe) == 2 and len(by_key["b"].unsafe) == 1


def test_every_shard_of_a_sharded_dataset_verifies(shapes_dataset):
    uri, manifest = shapes_dataset
    refs = fmt.find_shards(uri)
    assert sum(r.num_samples for r in refs) == manifest.num_samples == 60
    for ref in refs:
        assert ref.size and ref.sha256 and len(list(fmt.iter_shard(ref, verify=True))) == ref.num_samples
