"""Every rejection reason, counted in the manifest with example refs; transforms of kept images."""

from __future__ import annotations

import io
import json
import os
import tarfile

import pytest
from PIL import Image

from tests.data.helpers import encode, jpeg_with_orientation, noise_image, png_header_only, smooth_image
from vlm.data import format as fmt
from vlm.data.config import ShardConfig
from vlm.data.shard import shard_dataset
from vlm.data.validate import REASONS, Rejected, clean_caption, resolve_under, safe_relpath

REQUIRED = {"undecodable", "too_small", "too_large", "duplicate", "empty_caption", "bad_caption",
            "caption_too_long", "missing_file", "unsafe_path"}


def _samples(uri: str) -> list[dict]:
    return list(fmt.iter_samples(uri, "all", rank=0, world_size=1, worker=0, num_workers=1))


@pytest.fixture
def messy(tmp_path):
    """A JSONL dataset with 4 good rows and one bad row per reason."""
    root = tmp_path / "in"
    (root / "img").mkdir(parents=True)
    for i in range(4):
        (root / "img" / f"good{i}.jpg").write_bytes(encode(noise_image(i)))
    (root / "img" / "copy.jpg").write_bytes((root / "img" / "good0.jpg").read_bytes())
    (root / "img" / "garbage.jpg").write_bytes(b"this is not an image at all")
    full = encode(noise_image(9, (90, 80)))
    (root / "img" / "truncated.jpg").write_bytes(full[: len(full) // 2])
    (root / "img" / "tiny.png").write_bytes(encode(noise_image(10, (8, 40)), "PNG"))
    (root / "img" / "bomb.png").write_bytes(png_header_only(30000, 30000))
    (root / "img" / "big.png").write_bytes(encode(noise_image(11, (100, 100)), "PNG"))
    (tmp_path / "outside.jpg").write_bytes(encode(noise_image(12)))
    rows = [
        {"image": "img/good0.jpg", "caption": "  A   first\tpicture. ", "qa": [{"question": "q?", "answers": ["a"]}]},
        {"image": "img/good1.jpg", "caption": ["second picture", "another caption"]},
        {"image": "img/good2.jpg", "caption": "x" * 80},  # truncated (max 60)
        {"image": "img/good3.jpg", "caption": "fourth picture", "license": "cc-by"},
        {"image": "img/copy.jpg", "caption": "same pixels, new caption"},          # duplicate
        {"image": "img/garbage.jpg", "caption": "garbage"},                         # undecodable (scan)
        {"image": "img/truncated.jpg", "caption": "truncated"},                     # undecodable (write)
        {"image": "img/tiny.png", "caption": "tiny"},                               # too_small
        {"image": "img/bomb.png", "caption": "bomb"},                               # too_large (PIL guard)
        {"image": "img/big.png", "caption": "over max_pixels"},                     # too_large (config)
        {"image": "img/good1.jpg", "caption": "   \n "},                            # empty_caption
        {"image": "img/good1.jpg", "caption": None},                                # empty_caption
        {"image": "img/good2.jpg", "caption": "bell\x07char"},                      # bad_caption
        {"image": "img/good2.jpg", "caption": 42},                                  # bad_caption
        {"image": "img/good2.jpg", "caption": "lone \udc80 surrogate"},             # bad_caption
        {"image": "img/good2.jpg", "caption": "12:30 -- #42 !!! ..."},                # bad_caption (no letter)
        {"image": "img/good3.jpg", "caption": ["1999", "\u2605\u2605\u2605"]},        # bad_caption (no letter)
        {"image": "img/missing.jpg", "caption": "missing"},                         # missing_file
        {"image": "../outside.jpg", "caption": "escapes"},                          # unsafe_path
        {"image": "/etc/hostname", "caption": "absolute"},                          # unsafe_path
        {"image": "ftp://example.com/a.jpg", "caption": "remote"},                  # unsafe_path (scheme)
    ]
    lines = [json.dumps(r) for r in rows] + ["{not json"]                           # bad_record
    (root / "data.jsonl").write_text("\n".join(lines) + "\n")
    return root / "data.jsonl"


def test_every_rejection_reason_is_counted(messy, tmp_path):
    cfg = ShardConfig(max_pixels=9000, max_caption_chars=60, samples_per_shard=3,
                      split={"train": 1, "val": 0, "test": 0})
    m = shard_dataset(str(messy), str(tmp_path / "out"), cfg)
    expected = {"undecodable": 2, "too_small": 1, "too_large": 2, "duplicate": 1, "empty_caption": 2,
                "bad_caption": 5, "missing_file": 1, "unsafe_path": 3, "bad_record": 1}
    assert {k: v for k, v in m.rejected.items() if v} == expected
    assert REQUIRED <= set(m.rejected) and set(m.rejected) == set(REASONS)
    assert m.num_samples == 4 and m.num_input_records == 22
    assert m.rejected_total == sum(expected.values())
    assert m.captions_truncated == 1 and m.captions_merged == 1
    ex = m.rejected_examples
    assert any("truncated.jpg" in e["ref"] for e in ex["undecodable"])
    assert any("garbage.jpg" in e["ref"] for e in ex["undecodable"])
    assert "outside.jpg" in ex["unsafe_path"][0]["ref"] and "escapes" in ex["unsafe_path"][0]["detail"]
    assert "copy.jpg" in ex["duplicate"][0]["ref"] and "good0.jpg" in ex["duplicate"][0]["detail"]
    assert any("no letter" in e["detail"] for e in ex["bad_caption"])
    by_caption = {s["meta"]["caption"]: s for s in _samples(str(tmp_path / "out"))}
    first = by_caption["A first picture."]
    assert first["meta"]["captions"] == ["A first picture.", "same pixels, new caption"]  # merged duplicate
    assert first["meta"]["qa"] == [{"question": "q?", "answers": ["a"]}]
    assert by_caption["second picture"]["meta"]["captions"] == ["second picture", "another caption"]
    assert by_caption["fourth picture"]["meta"]["license"] == "cc-by"
    assert ["x" * 60] == [c for c in by_caption if c.startswith("x")]


def test_long_captions_reject_mode(messy, tmp_path):
    cfg = ShardConfig(max_caption_chars=60, long_captions="reject")
    m = shard_dataset(str(messy), str(tmp_path / "out"), cfg)
    assert m.rejected["caption_too_long"] == 1 and m.captions_truncated == 0
    assert "good2.jpg" in m.rejected_examples["caption_too_long"][0]["ref"]


def test_near_duplicates(tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    base = smooth_image(1, (96, 72))
    (root / "a.jpg").write_bytes(encode(base, quality=95))
    (root / "b.jpg").write_bytes(encode(base, quality=40))               # re-encoded: new bytes, same picture
    (root / "c.png").write_bytes(encode(base.resize((90, 68)), "PNG"))   # resized
    (root / "d.jpg").write_bytes(encode(smooth_image(2, (96, 72))))       # a different picture
    for stem in "abcd":
        (root / f"{stem}.txt").write_text(f"picture {stem}")
    off = shard_dataset(str(root), str(tmp_path / "off"), ShardConfig())
    assert off.num_samples == 4 and off.rejected["duplicate"] == 0
    on = shard_dataset(str(root), str(tmp_path / "on"), ShardConfig(near_duplicates=True))
    assert on.rejected["near_duplicate"] == 2 and on.num_samples == 2
    assert {s["meta"]["caption"] for s in _samples(str(tmp_path / "on"))} == {"picture a", "picture d"}


def test_folder_source_with_bad_sidecars_and_symlinks(tmp_path):
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    (root / "one.jpg").write_bytes(encode(noise_image(1)))
    (root / "one.txt").write_text("first photo")
    (root / "sub" / "two.png").write_bytes(encode(noise_image(2, mode="RGBA"), "PNG"))
    (root / "sub" / "two.txt").write_text("second photo")
    (root / "sub" / "two.json").write_text(json.dumps({"qa": [{"question": "q", "answers": ["a"]}]}))
    (root / "three.jpg").write_bytes(encode(noise_image(3)))               # no caption file
    (root / "four.jpg").write_bytes(encode(noise_image(4)))
    (root / "four.txt").write_bytes(b"caf\xe9 latin-1")                    # invalid UTF-8
    (root / "five.jpg").write_bytes(encode(noise_image(5)))
    (root / "five.json").write_text(json.dumps({"caption": "caption from json"}))
    (tmp_path / "secret.jpg").write_bytes(encode(noise_image(6)))
    os.symlink(tmp_path / "secret.jpg", root / "link.jpg")                 # escapes the root
    (root / "link.txt").write_text("linked")
    m = shard_dataset(str(root), str(tmp_path / "out"), ShardConfig())
    assert m.source == "folder" and m.num_samples == 3
    assert {k: v for k, v in m.rejected.items() if v} == {"missing_file": 1, "bad_caption": 1, "unsafe_path": 1}
    assert "invalid UTF-8" in m.rejected_examples["bad_caption"][0]["detail"]
    metas = {s["meta"]["caption"]: s["meta"] for s in _samples(str(tmp_path / "out"))}
    assert set(metas) == {"first photo", "second photo", "caption from json"}
    assert metas["second photo"]["qa"] == [{"question": "q", "answers": ["a"]}]


def _add(tf: tarfile.TarFile, name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, len(data) if kind == tarfile.REGTYPE else 0
    tf.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def test_tar_members_that_escape_are_rejected(tmp_path):
    tar = tmp_path / "in" / "part-0.tar"
    tar.parent.mkdir()
    with tarfile.open(tar, "w", format=tarfile.GNU_FORMAT) as tf:
        _add(tf, "ok1.jpg", encode(noise_image(1)))
        _add(tf, "ok1.txt", b"fine sample")
        _add(tf, "dir/ok2.png", encode(noise_image(2), "PNG"))
        _add(tf, "dir/ok2.json", json.dumps({"caption": "from json", "qa": []}).encode())
        _add(tf, "../evil.jpg", encode(noise_image(3)))
        _add(tf, "/abs/evil.jpg", encode(noise_image(4)))
        _add(tf, "link.jpg", kind=tarfile.SYMTYPE, link="/etc/passwd")
        _add(tf, "hard.jpg", kind=tarfile.LNKTYPE, link="ok1.jpg")
        _add(tf, "nocap.jpg", encode(noise_image(5)))
        _add(tf, "../both.jpg", encode(noise_image(6)))                     # one sample, two unsafe members
        _add(tf, "../both.json", json.dumps({"caption": "escapes twice"}).encode())
        _add(tf, "half.jpg", encode(noise_image(7)))                        # one safe member, one link
        _add(tf, "half.txt", kind=tarfile.SYMTYPE, link="/etc/hostname")
    m = shard_dataset(str(tar.parent), str(tmp_path / "out"), ShardConfig())
    assert m.source == "webdataset" and m.num_samples == 2
    # counted per sample, not per member: ../both (2 members) and half (1 of 2) are one rejection each
    assert m.rejected["unsafe_path"] == 6 and m.rejected["empty_caption"] == 1
    assert m.num_input_records == 9 and m.num_samples + m.rejected_total == 9
    examples = {e["ref"]: e["detail"] for e in m.rejected_examples["unsafe_path"]}
    assert len(examples) == 5  # the manifest keeps 5 examples per reason, one per sample
    assert "part-0.tar:../evil" in examples and "part-0.tar:/abs/evil" in examples and "part-0.tar:link" in examples
    assert examples["part-0.tar:../both"].count("../both.") == 2  # both members named in the one example


def test_truncated_input_tar_keeps_its_complete_samples(tmp_path):
    tar = tmp_path / "in" / "part-0.tar"
    tar.parent.mkdir()
    with tarfile.open(tar, "w", format=tarfile.GNU_FORMAT) as tf:
        for i in range(4):
            _add(tf, f"s{i}.jpg", encode(noise_image(i, (64, 48))))
            _add(tf, f"s{i}.txt", f"sample number {i}".encode())
    data = tar.read_bytes()
    tar.write_bytes(data[: int(len(data) * 0.6)])
    m = shard_dataset(str(tar.parent), str(tmp_path / "out"), ShardConfig())
    kept = sorted(s["meta"]["caption"] for s in _samples(str(tmp_path / "out")))
    assert kept and kept == [f"sample number {i}" for i in range(len(kept))] and len(kept) < 4
    lost = m.rejected["undecodable"] + m.rejected["bad_record"] + m.rejected["empty_caption"]
    assert lost >= 1 and m.num_samples + m.rejected_total == m.num_input_records
    assert any("part-0.tar" in e["ref"] for exs in m.rejected_examples.values() for e in exs)


def test_transform_orients_converts_and_resizes(tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    (root / "rot.jpg").write_bytes(jpeg_with_orientation(noise_image(1, (80, 40)), 6))  # displayed 40x80
    (root / "big.jpg").write_bytes(encode(noise_image(2, (1000, 500)), quality=95))
    alpha = Image.new("RGBA", (50, 50), (255, 0, 0, 0))                                 # fully transparent
    (root / "alpha.png").write_bytes(encode(alpha, "PNG"))
    (root / "gray.png").write_bytes(encode(noise_image(3, (30, 30), "L"), "PNG"))
    for stem in ("rot", "big", "alpha", "gray"):
        (root / f"{stem}.txt").write_text(stem)
    shard_dataset(str(root), str(tmp_path / "out"), ShardConfig(max_side=64, jpeg_quality=80))
    s = {x["meta"]["caption"]: x for x in _samples(str(tmp_path / "out"))}
    assert (s["rot"]["meta"]["orig_width"], s["rot"]["meta"]["orig_height"]) == (40, 80)
    assert s["rot"]["image"].size == (32, 64)  # portrait after EXIF rotation, long side 64
    assert s["big"]["image"].size == (64, 32) and s["big"]["meta"]["orig_width"] == 1000
    r, g, b = s["alpha"]["image"].getpixel((25, 25))
    assert min(r, g, b) > 240  # transparent -> white, not black or red
    assert s["gray"]["image"].mode == "RGB"


def test_caption_and_path_rules():
    assert clean_caption("  caf\u0065\u0301  au\u00a0lait ", 100) == ("café au lait", False)
    assert clean_caption("one two three four", 12) == ("one two", True)
    assert clean_caption("3 cats, 2 dogs!", 100) == ("3 cats, 2 dogs!", False)
    assert clean_caption("\u65e5\u672c\u8a9e 2024", 100)[0] == "\u65e5\u672c\u8a9e 2024"  # letters of any script
    for bad in (b"\xff\xfe", "a\x00b", "\x1b[31mred", 3.5, {"a": 1}, "2024-01-01", "!!! ???", "\u2764\ufe0f \U0001f600",
                "#42 -- $9.99"):
        with pytest.raises(Rejected) as exc:
            clean_caption(bad, 100)
        assert exc.value.reason == "bad_caption"
    with pytest.raises(Rejected, match="caption_too_long"):
        clean_caption("long " * 10, 20, "reject")
    assert safe_relpath("a/./b/../c.jpg") == "a/c.jpg"
    for bad in ("../x", "a/../../x", "/etc/passwd", "C:/x", "..\\x"):
        with pytest.raises(Rejected, match="unsafe_path"):
            safe_relpath(bad)
    assert resolve_under("s3://b/p", "img/a.jpg") == "s3://b/p/img/a.jpg"
    with pytest.raises(Rejected, match="unsafe_path"):
        resolve_under("s3://b/p", "../q/a.jpg")
