"""Damaged datasets for the bad-input tests of every stage (``docs/formats.md``, "Damaged input").

A dataset is sharded by the real sharding stage (``builtin:shapes``), copied, then damaged in one of three
ways: a truncated tar (the manifest still lists its full size and sha256), one sample whose image member is
garbage inside an otherwise valid tar (the manifest is updated, so only the sample is bad) or a manifest whose
sha256 for a shard does not match the shard's bytes.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from vlm.data import format as fmt
from vlm.data.config import ShardConfig
from vlm.data.shard import shard_dataset

DAMAGES = ("truncated", "corrupt_image", "sha_mismatch")
GARBAGE = b"\x89PNG\r\n\x1a\n this is not an image any more"
# what each damage is counted as by a stage that reads the shard verified against the manifest
REASON = {"truncated": "checksum_mismatch", "corrupt_image": "undecodable", "sha_mismatch": "checksum_mismatch"}


def shapes(root: Path, n: int = 36, per_shard: int = 4) -> str:
    """A small ``builtin:shapes`` dataset (several shards per split) sharded by the sharding stage."""
    out = root / "shapes"
    shard_dataset("builtin:shapes", str(out), ShardConfig(builtin_size=n, samples_per_shard=per_shard,
                                                          builtin_image_size=32))
    return str(out)


def damaged(clean: str, dest: Path, damage: str, split: str = "train", index: int = 0) -> tuple[str, str, str]:
    """A copy of dataset ``clean`` at ``dest`` with shard ``index`` of ``split`` damaged.

    Returns ``(dataset URI, damaged shard name, key of the damaged sample or "")``.
    """
    shutil.copytree(clean, dest)
    manifest = fmt.read_manifest(str(dest))
    info = manifest.shards_of(split)[index]
    path = dest / info.name
    key = ""
    if damage == "truncated":
        samples = [s for s in fmt.scan_tar(str(path)) if isinstance(s, fmt.TarSample)]
        member = min(samples[len(samples) // 2].members.values(), key=lambda m: m.offset)
        path.write_bytes(path.read_bytes()[: member.offset + member.size // 2])  # cut inside a middle sample
    elif damage == "corrupt_image":
        samples = list(fmt.iter_shard(str(path)))
        key = samples[0]["__key__"]
        ext, _ = fmt.image_member(samples[0])
        samples[0][ext] = GARBAGE
        members = [(s["__key__"], {k: v for k, v in s.items() if not k.startswith("__")}) for s in samples]
        new = fmt.write_shard(str(path), members, split)
        info.sha256, info.size = new.sha256, new.size
        fmt.write_manifest(str(dest), manifest)
    elif damage == "sha_mismatch":
        info.sha256 = "0" * 64
        fmt.write_manifest(str(dest), manifest)
    else:
        raise ValueError(f"unknown damage {damage!r}; one of {DAMAGES}")
    return str(dest), info.name, key
