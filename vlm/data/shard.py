"""The sharding stage: raw image-text records -> validated, de-duplicated WebDataset shards + manifest.

Two passes, both parallel over worker processes:

1. **scan** (per record, in input order): read the image bytes, hash them (the sample key), clean the
   captions, check the image header (decodable, size limits) and optionally compute a perceptual hash.
   The main process then drops exact/near duplicates (merging their captions into the kept sample),
   assigns each key to train/val/test by hash and cuts each split into shards of ``samples_per_shard``.
2. **write** (per shard): decode, EXIF-orient, RGB, resize, JPEG-encode and write ``{split}-{i:06d}.tar``
   with deterministic tar headers; then a ``_state/<shard>.json`` marker. A re-run skips every shard
   whose marker matches the plan, so an interrupted run resumes at shard granularity, and identical
   input + config give byte-identical shards.

Samples that fail a check never stop the run: they are counted by reason in the manifest with example
refs. A bad config or an unusable input stops it at once with a clear message.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
import logging
import multiprocessing as mp
import os
import re
import tarfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from vlm import storage
from vlm.data.config import ShardConfig
from vlm.data.sources import InputError, Record, Source, open_source
from vlm.data.transform import ImageSpec, open_checked, perceptual_hash, process
from vlm.data.validate import REASONS, Rejected, RejectionLog, clean_captions

log = logging.getLogger(__name__)

FORMAT = "vlm-shards/1"
MANIFEST = "manifest.json"
STATE_DIR = "_state"
SPLITS = ("train", "val", "test")
SHARD_RE = re.compile(r"^(train|val|test)-\d{6}\.tar$")
RESERVED = ("caption", "captions", "source", "width", "height", "orig_width", "orig_height", "ref")

__all__ = ["shard_dataset", "run", "shard_name", "split_of", "FORMAT", "MANIFEST", "InputError"]


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


def split_of(key: str, fractions: dict[str, float]) -> str:
    """Deterministic split for a key: a uniform number from its hash against cumulative fractions."""
    u = int(hashlib.sha256(f"split:{key}".encode()).hexdigest()[:13], 16) / 16**13
    acc = 0.0
    last = next(s for s in reversed(SPLITS) if fractions.get(s, 0) > 0)
    for split in SPLITS:
        acc += fractions.get(split, 0.0)
        if u < acc and fractions.get(split, 0) > 0:
            return split
    return last


# ------------------------------------------------------------------------------------------ workers
_STATE: dict[str, Any] = {}


def _init_worker(source: Source, cfg: ShardConfig) -> None:
    storage._client_for.cache_clear()  # never share a forked parent's S3 connections
    _STATE.update(source=source, cfg=cfg, spec=_spec(cfg))


def _spec(cfg: ShardConfig) -> ImageSpec:
    return ImageSpec(cfg.min_side, cfg.max_side, cfg.max_pixels, cfg.jpeg_quality)


def _read(source: Source, record: Record) -> bytes:
    try:
        return source.read_image(record)
    except Rejected:
        raise
    except FileNotFoundError as exc:
        raise Rejected("missing_file", f"not found: {exc}") from None
    except IsADirectoryError:
        raise Rejected("missing_file", "is a folder, not a file") from None
    except Exception as exc:  # noqa: BLE001 - unreadable sample (permissions, S3 access...) is a sample problem
        raise Rejected("missing_file", f"cannot read: {type(exc).__name__}: {exc}") from None


def _scan_one(item: tuple[int, Record]) -> tuple:
    """Pass 1 for one record -> ("ok", index, key, captions, extra, phash, truncated) | ("rej", index, reason, detail)."""
    index, record = item
    source: Source = _STATE["source"]
    cfg: ShardConfig = _STATE["cfg"]
    spec: ImageSpec = _STATE["spec"]
    try:
        if record.error:
            raise Rejected(*record.error)
        raw_caption, extra = source.read_meta(record)
        captions, truncated = clean_captions(raw_caption, cfg.max_caption_chars, cfg.long_captions)
        data = _read(source, record)
        key = hashlib.sha256(data).hexdigest()[:32]
        open_checked(data, spec)
        phash = perceptual_hash(data, spec) if cfg.near_duplicates else None
    except Rejected as exc:
        return ("rej", index, exc.reason, exc.detail)
    return ("ok", index, key, captions, extra, phash, truncated)


def _write_one(task: dict[str, Any]) -> dict[str, Any]:
    """Pass 2 for one shard: transform every sample and write the tar + its state marker."""
    source: Source = _STATE["source"]
    spec: ImageSpec = _STATE["spec"]
    rejections = RejectionLog()
    samples: list[tuple[str, bytes, bytes]] = []
    for entry in task["entries"]:
        record: Record = entry["record"]
        try:
            jpeg, sizes = process(_read(source, record), spec)
        except Rejected as exc:
            rejections.add(exc.reason, record.ref, exc.detail)
            continue
        meta = {**entry["meta"], **sizes}
        samples.append((entry["key"], jpeg, json.dumps(meta, sort_keys=True, ensure_ascii=False).encode()))
    uri = storage.join(task["output"], task["name"])
    size, digest = _write_tar(uri, samples)
    result = {"name": task["name"], "split": task["split"], "num_samples": len(samples), "sha256": digest,
              "size": size, "fingerprint": task["fingerprint"], "rejected": rejections.to_dict()}
    storage.write_text(storage.join(task["output"], STATE_DIR, task["name"] + ".json"), json.dumps(result, indent=1))
    return result


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = size, 0, 0o644, 0, 0, "", ""
    return info


def _write_tar(uri: str, samples: list[tuple[str, bytes, bytes]]) -> tuple[int, str]:
    """Write a deterministic tar (fixed headers, input order) atomically; return (size, sha256)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for key, jpeg, meta in samples:
            tf.addfile(_tarinfo(f"{key}.jpg", len(jpeg)), io.BytesIO(jpeg))
            tf.addfile(_tarinfo(f"{key}.json", len(meta)), io.BytesIO(meta))
    data = buf.getvalue()
    storage.write_bytes(uri, data)
    return len(data), storage.sha256_bytes(data)


# ------------------------------------------------------------------------------------------ planning
@dataclass
class _Kept:
    index: int
    key: str
    captions: list[str]
    extra: dict[str, Any]
    phash: int | None


@dataclass
class _NearIndex:
    """Hamming-radius search over 64-bit hashes: with d+1 bands, any hash within d bits shares a band."""

    distance: int
    bands: list[tuple[int, int]] = field(default_factory=list)
    tables: list[dict[int, list[int]]] = field(default_factory=list)
    hashes: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = min(self.distance + 1, 64)
        edges = [round(64 * i / n) for i in range(n + 1)]
        self.bands = [(edges[i], edges[i + 1] - edges[i]) for i in range(n)]
        self.tables = [{} for _ in self.bands]

    def _parts(self, h: int) -> list[int]:
        return [(h >> shift) & ((1 << width) - 1) for shift, width in self.bands]

    def find(self, h: int) -> int | None:
        if self.distance >= 64:
            return 0 if self.hashes else None
        for table, part in zip(self.tables, self._parts(h), strict=True):
            for j in table.get(part, ()):
                if (self.hashes[j] ^ h).bit_count() <= self.distance:
                    return j
        return None

    def add(self, h: int) -> None:
        j = len(self.hashes)
        self.hashes.append(h)
        for table, part in zip(self.tables, self._parts(h), strict=True):
            table.setdefault(part, []).append(j)


def _merge_extra(kept: dict[str, Any], new: dict[str, Any]) -> None:
    """Fold a duplicate's QA into the kept sample (no repeats)."""
    if isinstance(new.get("qa"), list):
        qa = kept.setdefault("qa", [])
        for item in new["qa"]:
            if item not in qa:
                qa.append(item)


def _jsonable(value: Any) -> Any:
    """Plain JSON types from numpy/pandas/pyarrow values."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):
        return _jsonable(value.tolist())
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


# ------------------------------------------------------------------------------------------ driver
@contextlib.contextmanager
def _pool(source: Source, cfg: ShardConfig):
    """A process pool (fork where available) or, for workers=1, an in-process ``imap``."""
    if cfg.workers <= 1:
        _init_worker(source, cfg)
        yield None
        return
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    with mp.get_context(method).Pool(cfg.workers, initializer=_init_worker, initargs=(source, cfg)) as pool:
        yield pool


def _imap(pool, fn, items: Iterable, chunksize: int = 1, ordered: bool = True) -> Iterator:
    if pool is None:
        return map(fn, items)
    return (pool.imap if ordered else pool.imap_unordered)(fn, items, chunksize=chunksize)


def _progress(it: Iterable, total: int | None, desc: str) -> Iterable:
    from tqdm.auto import tqdm

    return tqdm(it, total=total, desc=desc, unit="it", disable=None, leave=False)


def _read_marker(output: str, name: str) -> dict[str, Any] | None:
    try:
        return json.loads(storage.read_text(storage.join(output, STATE_DIR, name + ".json")))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def _finished(output: str, task: dict[str, Any]) -> dict[str, Any] | None:
    """The marker of a shard that is already written for exactly this plan, else None."""
    marker = _read_marker(output, task["name"])
    if not marker or marker.get("fingerprint") != task["fingerprint"]:
        return None
    uri = storage.join(output, task["name"])
    if storage.is_s3(uri):
        return marker if storage.exists(uri) else None
    try:
        return marker if os.path.getsize(uri) == marker.get("size") else None
    except OSError:
        return None


def shard_dataset(input: str, output: str, cfg: ShardConfig | None = None) -> dict[str, Any]:
    """Shard ``input`` into validated WebDataset shards under ``output`` (local path or s3:// URI).

    Returns the manifest (also written to ``<output>/manifest.json``). Raises ``InputError`` for an
    unusable input and pydantic's ``ValidationError`` for a bad config.
    """
    cfg = cfg if cfg is not None else ShardConfig()
    input = str(input or cfg.input)
    output = str(output or cfg.output)
    if not output:
        raise InputError("no output URI given")
    cfg = cfg.model_copy(update={"input": input, "output": output})
    t0 = time.perf_counter()
    source = open_source(input, cfg)
    log.info("sharding %s -> %s (%d worker(s))", source.describe(), output, cfg.workers)
    rejections = RejectionLog()
    fractions = cfg.split.fractions()

    with _pool(source, cfg) as pool:
        # ---- pass 1: scan, dedup, plan
        records = itertools.islice(source.records(), cfg.limit) if cfg.limit else source.records()
        index_records: dict[int, Record] = {}

        def numbered() -> Iterator[tuple[int, Record]]:
            for i, rec in enumerate(records):
                index_records[i] = rec
                yield i, rec

        kept: dict[str, _Kept] = {}
        near = _NearIndex(cfg.near_duplicate_distance) if cfg.near_duplicates else None
        near_keys: list[str] = []
        truncated = merged = n_records = 0
        for res in _progress(_imap(pool, _scan_one, numbered(), chunksize=16), None, "scan"):
            n_records += 1
            if res[0] == "rej":
                _, i, reason, detail = res
                rejections.add(reason, index_records.pop(i).ref, detail)
                continue
            _, i, key, captions, extra, phash, ntrunc = res
            ref = index_records[i].ref
            truncated += ntrunc
            dup = kept.get(key)
            if dup is None and near is not None and phash is not None:
                j = near.find(phash)
                if j is not None:
                    index_records.pop(i)
                    rejections.add("near_duplicate", ref, f"pHash within {cfg.near_duplicate_distance} bits of "
                                   f"{index_records[kept[near_keys[j]].index].ref}")
                    continue
            if dup is not None:
                index_records.pop(i)
                new = [c for c in captions if c not in dup.captions]
                dup.captions.extend(new)
                merged += len(new)
                _merge_extra(dup.extra, extra)
                rejections.add("duplicate", ref, f"same image as {index_records[dup.index].ref}")
                continue
            kept[key] = _Kept(i, key, captions, _jsonable(dict(extra)), phash)
            if near is not None and phash is not None:
                near.add(phash)
                near_keys.append(key)

        by_split: dict[str, list[_Kept]] = {s: [] for s in SPLITS}
        for k in sorted(kept.values(), key=lambda k: k.index):
            by_split[split_of(k.key, fractions)].append(k)
        tasks = []
        for split in SPLITS:
            items = by_split[split]
            for n, start in enumerate(range(0, len(items), cfg.samples_per_shard)):
                entries = []
                for k in items[start : start + cfg.samples_per_shard]:
                    rec = index_records[k.index]
                    extra = {key: v for key, v in k.extra.items() if key not in RESERVED}
                    meta = {**extra, "caption": k.captions[0], "captions": k.captions, "source": source.name,
                            "ref": rec.ref}
                    entries.append({"key": k.key, "record": rec, "meta": meta})
                fp = hashlib.sha256(json.dumps(
                    [FORMAT, _spec(cfg).__dict__, [(e["key"], e["meta"]) for e in entries]],
                    sort_keys=True, default=str).encode()).hexdigest()
                tasks.append({"name": shard_name(split, n), "split": split, "output": output,
                              "entries": entries, "fingerprint": fp})
        t_scan = time.perf_counter() - t0
        log.info("scan: %d records, %d kept, %d rejected, %d shards planned (%.1fs)", n_records, len(kept),
                 rejections.total, len(tasks), t_scan)

        # ---- pass 2: write (skipping finished shards)
        results: dict[str, dict[str, Any]] = {}
        todo = []
        for task in tasks:
            done = _finished(output, task)
            if done is not None:
                results[task["name"]] = done
            else:
                todo.append(task)
        resumed = len(results)
        if resumed:
            log.info("resuming: %d of %d shards already written", resumed, len(tasks))
        for res in _progress(_imap(pool, _write_one, todo, ordered=False), len(todo), "write"):
            results[res["name"]] = res

    _remove_stale(output, {t["name"] for t in tasks})
    shards = []
    for task in tasks:
        res = results[task["name"]]
        rejections.merge(res["rejected"])
        shards.append({k: res[k] for k in ("name", "split", "num_samples", "sha256", "size")})
    elapsed = time.perf_counter() - t0
    total = sum(s["num_samples"] for s in shards)
    rej = rejections.to_dict()
    manifest = {
        "format": FORMAT,
        "name": cfg.name,
        "input": input,
        "source": source.name,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": cfg.model_dump(mode="json"),
        "num_samples": total,
        "num_input_records": n_records,
        "splits": {s: {"num_samples": sum(x["num_samples"] for x in shards if x["split"] == s),
                       "num_shards": sum(1 for x in shards if x["split"] == s)} for s in SPLITS},
        "shards": shards,
        "rejected": rej["counts"],
        "rejected_total": sum(rej["counts"].values()),
        "rejected_examples": rej["examples"],
        "rejected_reasons": REASONS,
        "captions_truncated": truncated,
        "captions_merged": merged,
        "image": {"format": "jpg", "max_side": cfg.max_side, "jpeg_quality": cfg.jpeg_quality},
        "resumed_shards": resumed,
        "elapsed_s": round(elapsed, 3),
        "scan_s": round(t_scan, 3),
    }
    storage.write_text(storage.join(output, MANIFEST), json.dumps(manifest, indent=2, ensure_ascii=False))
    log.info("wrote %d samples in %d shards to %s in %.1fs (%d rejected)", total, len(shards), output, elapsed,
             manifest["rejected_total"])
    return manifest


def _remove_stale(output: str, planned: set[str]) -> None:
    """Delete shards (and markers) of an earlier plan that this plan no longer has."""
    for uri in storage.list_uris(output, recursive=False):
        name = uri.rstrip("/").rsplit("/", 1)[-1]
        if SHARD_RE.match(name) and name not in planned:
            log.info("removing stale shard %s", name)
            storage.delete(uri)
            storage.delete(storage.join(output, STATE_DIR, name + ".json"))


def run(input: str, output: str, config_json: str = "", workers: int = 0, limit: int = 0) -> dict[str, Any]:
    """Simple-typed entry point for pipeline components: returns a JSON-able summary of the manifest.

    ``config_json``: a JSON object of ShardConfig fields; ``workers``/``limit`` override when > 0.
    """
    data = json.loads(config_json) if config_json else {}
    if workers > 0:
        data["workers"] = workers
    if limit > 0:
        data["limit"] = limit
    manifest = shard_dataset(input, output, ShardConfig.model_validate(data))
    return {"manifest_uri": storage.join(output, MANIFEST), "num_samples": manifest["num_samples"],
            "num_shards": len(manifest["shards"]), "splits": manifest["splits"],
            "rejected": manifest["rejected"], "rejected_total": manifest["rejected_total"],
            "resumed_shards": manifest["resumed_shards"], "elapsed_s": manifest["elapsed_s"]}


if __name__ == "__main__":  # pragma: no cover
    import sys

    print(json.dumps(run(sys.argv[1], sys.argv[2]), indent=2))
