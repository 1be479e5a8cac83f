"""The sharding stage: raw image-text records -> validated, de-duplicated WebDataset shards + manifest.

Three steps, the same in ``vlm shard`` and in the pipeline's fan-out (``docs/formats.md``):

1. **plan** (:func:`plan_partitions`): count the input records, cut them into chunks of
   ``samples_per_shard`` records (the unit of work and of resumption) and group whole chunks into at most
   ``partitions`` contiguous partitions of at least ``min_partition_records`` records (small inputs stay
   one partition). A dataset that is already complete for this input and config plans nothing.
2. **partition** (:func:`shard_partition`; N at once: kfp ParallelFor pods, or processes locally): per
   record, in ``workers`` processes (URL downloads ``download.threads`` at a time in each): read the bytes,
   hash them (the sample key), clean the captions and QA, check the image (decodable, size limits),
   optionally compute a perceptual hash, and transform it (EXIF orientation, RGB, resize, JPEG). Kept
   images go to part shards ``_parts/<chunk>/<split>.tar`` (the split follows from the key) and every
   record's outcome (key, captions, QA, sizes; or its rejection) to ``_parts/<chunk>/index.jsonl``,
   written last: a chunk with an index is done, so a killed partition resumes at its first unfinished chunk.
3. **merge** (:func:`merge_partitions`, one step): reads the chunk indices in input order and
   de-duplicates across all partitions (content hash: the first occurrence in input order wins and gains
   the duplicates' captions and QA; near duplicates by perceptual hash when enabled), cuts each split into
   shards of ``samples_per_shard``, copies their images out of the part shards (no re-encoding; in
   ``workers`` processes) with a ``_state/<shard>.json`` marker each, writes ``manifest.json`` and deletes
   ``_parts``.

A record's outcome depends only on the record and the merge only on input order, so the dataset (keys,
shard names, shard bytes, manifest totals) is the same for any number of partitions and workers, and the
same input + config give byte-identical shards. Samples that fail a check never stop the run: they are
counted per sample by reason in the manifest with example refs. A bad config or an unusable input stops
it at once with a clear message. A complete dataset is not re-read: re-sharding a changed input file
under the same URI needs another output (or deleting it).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import math
import multiprocessing as mp
import os
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from vlm import storage
from vlm.data import format as fmt
from vlm.data.config import ShardConfig
from vlm.data.sources import InputError, Record, Source, open_source
from vlm.data.transform import ImageSpec, open_checked, perceptual_hash, process
from vlm.data.validate import REASONS, Rejected, RejectionLog, clean_captions

log = logging.getLogger(__name__)

PARTS = "_parts"
STATE_DIR = "_state"
RESERVED = ("caption", "captions", "source", "width", "height", "orig_width", "orig_height", "ref")
# config fields that do not change the dataset (parallelism) or not a chunk's records (the merge's own)
_PARALLELISM = {"input": True, "output": True, "workers": True, "partitions": True, "min_partition_records": True,
                "download": {"threads"}}
_MERGE_ONLY = {"name": True, "limit": True, "near_duplicate_distance": True}

__all__ = ["shard_dataset", "plan_partitions", "shard_partition", "merge_partitions", "split_of", "InputError"]


def split_of(key: str, fractions: dict[str, float]) -> str:
    """Deterministic split for a key: a uniform number from its hash against cumulative fractions."""
    u = int(hashlib.sha256(f"split:{key}".encode()).hexdigest()[:13], 16) / 16**13
    acc = 0.0
    last = next(s for s in reversed(fmt.SPLITS) if fractions.get(s, 0) > 0)
    for split in fmt.SPLITS:
        acc += fractions.get(split, 0.0)
        if u < acc and fractions.get(split, 0) > 0:
            return split
    return last


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _fingerprint(input: str, cfg: ShardConfig) -> str:
    """What the dataset depends on: the input URI and every config field but the parallelism."""
    return _digest([fmt.FORMAT, input, cfg.model_dump(mode="json", exclude=_PARALLELISM)])


def _chunk_fingerprint(input: str, cfg: ShardConfig) -> str:
    return _digest([fmt.FORMAT, input, cfg.model_dump(mode="json", exclude={**_PARALLELISM, **_MERGE_ONLY})])


def _spec(cfg: ShardConfig) -> ImageSpec:
    return ImageSpec(cfg.min_side, cfg.max_side, cfg.max_pixels, cfg.jpeg_quality)


def _settle(input: str, output: str, cfg: ShardConfig | None) -> tuple[str, str, ShardConfig]:
    cfg = cfg if cfg is not None else ShardConfig()
    input, output = str(input or cfg.input), str(output or cfg.output)
    if not output:
        raise InputError("no output URI given")
    return input, output, cfg.model_copy(update={"input": input, "output": output})


# ------------------------------------------------------------------------------------------ workers
_STATE: dict[str, Any] = {}


def _init_worker(source: Source | None, cfg: ShardConfig) -> None:
    clear = getattr(storage, "_client_for", None)  # never share a forked parent's S3 connections
    if clear is not None:
        clear.cache_clear()
    if "threads" in _STATE:
        _STATE["threads"].shutdown(wait=False)
    _STATE.clear()
    _STATE.update(source=source, cfg=cfg, spec=_spec(cfg))


def _read(source: Source, record: Record) -> bytes | Rejected:
    try:
        return source.read_image(record)
    except Rejected as exc:
        return exc
    except FileNotFoundError as exc:
        return Rejected("missing_file", f"not found: {exc}")
    except IsADirectoryError:
        return Rejected("missing_file", "is a folder, not a file")
    except storage.StorageUnavailable:
        raise  # an outage is no property of the sample: the stage stops (and resumes on a re-run)
    except Exception as exc:  # noqa: BLE001 - unreadable sample (permissions, S3 access...) is a sample problem
        return Rejected("missing_file", f"cannot read: {type(exc).__name__}: {exc}")


def _reject(i: int, ref: str, exc: Rejected) -> dict[str, Any]:
    return {"i": i, "ref": ref, "reason": exc.reason, "detail": exc.detail}


def _meta(source: Source, record: Record, cfg: ShardConfig) -> tuple[list[str], dict[str, Any], int, int]:
    """(captions, extra with canonical QA, captions truncated, QA items dropped) or raise Rejected."""
    raw_caption, extra = source.read_meta(record)
    captions, truncated = clean_captions(raw_caption, cfg.max_caption_chars, cfg.long_captions)
    extra = _jsonable(dict(extra))
    dropped = 0
    if "qa" in extra:
        qa, dropped = fmt.parse_qa(extra["qa"])
        extra["qa"] = [q.to_json() for q in qa]
    return captions, extra, truncated, dropped


def _work(items: list[tuple[int, Record]]) -> list[dict[str, Any]]:
    """Everything per record for a batch: captions, bytes (downloads concurrently), key, checks, transform."""
    source: Source = _STATE["source"]
    cfg: ShardConfig = _STATE["cfg"]
    spec: ImageSpec = _STATE["spec"]
    out: dict[int, dict[str, Any]] = {}
    todo: list[tuple[int, Record, tuple]] = []
    for i, record in items:
        try:
            if record.error:
                raise Rejected(*record.error)
            todo.append((i, record, _meta(source, record, cfg)))
        except Rejected as exc:
            out[i] = _reject(i, record.ref, exc)
    if source.io_threads > 1 and len(todo) > 1:
        if "threads" not in _STATE:
            _STATE["threads"] = ThreadPoolExecutor(source.io_threads, thread_name_prefix="fetch")
        datas = list(_STATE["threads"].map(lambda t: _read(source, t[1]), todo))
    else:
        datas = [_read(source, t[1]) for t in todo]
    for (i, record, (captions, extra, truncated, dropped)), data in zip(todo, datas, strict=True):
        try:
            if isinstance(data, Rejected):
                raise data
            key = hashlib.sha256(data).hexdigest()[:32]
            open_checked(data, spec)
            phash = perceptual_hash(data, spec) if cfg.near_duplicates else None
            jpeg, sizes = process(data, spec)
        except Rejected as exc:
            out[i] = _reject(i, record.ref, exc)
            continue
        out[i] = {"i": i, "ref": record.ref, "key": key, "captions": captions, "extra": extra, "sizes": sizes,
                  "phash": f"{phash:016x}" if phash is not None else None, "truncated": truncated,
                  "qa_dropped": dropped, "jpg": jpeg}
    return [out[i] for i, _ in items]


@contextlib.contextmanager
def _pool(source: Source | None, cfg: ShardConfig):
    """A process pool (fork where available) or, for workers=1, an in-process ``map``."""
    if cfg.workers <= 1:
        _init_worker(source, cfg)
        yield None
        return
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    with mp.get_context(method).Pool(cfg.workers, initializer=_init_worker, initargs=(source, cfg)) as pool:
        yield pool


def _imap(pool, fn, items: Iterable, ordered: bool = True) -> Iterator:
    if pool is None:
        return map(fn, items)
    return (pool.imap if ordered else pool.imap_unordered)(fn, items)


def _progress(it: Iterable, total: int | None, desc: str, unit: str = "it") -> Iterable:
    from vlm.progress import Progress

    return Progress(it, total=total, desc=desc, unit=unit, leave=False)


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


# ------------------------------------------------------------------------------------------ layout
def _plan_uri(output: str) -> str:
    return storage.join(output, PARTS, "plan.json")


def _chunk_uri(output: str, start: int, name: str) -> str:
    return storage.join(output, PARTS, f"{start:012d}", name)


def _read_json(uri: str) -> Any:
    try:
        return json.loads(storage.read_text(uri))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def _intact(uri: str, size: int | None) -> bool:
    if storage.is_s3(uri):
        return storage.exists(uri)
    try:
        return size is None or os.path.getsize(uri) == size
    except OSError:
        return False


def _complete(output: str, fingerprint: str) -> fmt.Manifest | None:
    """The manifest of a dataset already complete for this fingerprint (every shard intact), else None."""
    try:
        manifest = fmt.read_manifest(output)
    except (FileNotFoundError, fmt.FormatError):
        return None
    if getattr(manifest, "fingerprint", None) != fingerprint:
        return None
    ok = all(_intact(storage.join(output, s.name), s.size) for s in manifest.shards)
    return manifest if ok else None


# ------------------------------------------------------------------------------------------ 1. plan
def plan_partitions(input: str, output: str, cfg: ShardConfig | None = None) -> dict[str, Any]:
    """Count the input and split it into partitions; writes ``_parts/plan.json`` and returns it.

    ``partitions`` is a list of ``[start, stop)`` record ranges (empty when the dataset is already
    complete for this input and config). Raises ``InputError`` for an unusable input.
    """
    input, output, cfg = _settle(input, output, cfg)
    fingerprint = _fingerprint(input, cfg)
    plan: dict[str, Any] = {"fingerprint": fingerprint, "created": time.time(), "chunk_records": cfg.samples_per_shard}
    if _complete(output, fingerprint) is not None:
        log.info("%s is already complete for this input and config: nothing to shard", output)
        return {**plan, "complete": True, "num_records": None, "partitions": []}
    source = open_source(input, cfg)
    n = source.count()
    n = min(n, cfg.limit) if cfg.limit else n
    chunks = math.ceil(n / cfg.samples_per_shard)
    parts = max(1, min(cfg.partitions, n // cfg.min_partition_records, chunks))
    bounds = [p * chunks // parts for p in range(parts + 1)]
    ranges = [[bounds[p] * cfg.samples_per_shard, min(n, bounds[p + 1] * cfg.samples_per_shard)]
              for p in range(parts)]
    plan.update(complete=False, num_records=n, source=source.name, partitions=ranges,
                chunk_fingerprint=_chunk_fingerprint(input, cfg))
    storage.write_text(_plan_uri(output), json.dumps(plan, indent=1))
    log.info("%s: %d records from %s in %d chunk(s), %d partition(s)", output, n, source.describe(), chunks, parts)
    return plan


def _read_plan(output: str, input: str, cfg: ShardConfig) -> dict[str, Any]:
    plan = _read_json(_plan_uri(output))
    if plan is None:
        raise InputError(f"no partition plan at {_plan_uri(output)}: run plan_partitions first")
    if plan["fingerprint"] != _fingerprint(input, cfg):
        raise InputError(f"the plan at {_plan_uri(output)} was made for another input or config: plan again")
    return plan


# ------------------------------------------------------------------------------------------ 2. partition
def _chunks(plan: dict[str, Any], index: int) -> list[tuple[int, int]]:
    start, stop = plan["partitions"][index]
    step = plan["chunk_records"]
    return [(s, min(s + step, stop)) for s in range(start, stop, step)]


def _index_lines(output: str, start: int) -> list[bytes]:
    """A chunk index, read whole (a few hundred bytes per record): header line, then one line per record."""
    return storage.read_bytes(_chunk_uri(output, start, "index.jsonl")).splitlines()


def _chunk_done(output: str, start: int, stop: int, fingerprint: str) -> dict[str, Any] | None:
    """The header of a finished chunk's index (its parts intact), else None."""
    try:
        head = json.loads(_index_lines(output, start)[0])
    except (FileNotFoundError, IndexError, ValueError, UnicodeDecodeError):
        return None
    if head.get("fingerprint") != fingerprint or (head.get("start"), head.get("stop")) != (start, stop):
        return None
    if all(_intact(_chunk_uri(output, start, f"{split}.tar"), info.get("size"))
           for split, info in head.get("parts", {}).items()):
        return head
    return None


def _write_chunk(output: str, start: int, stop: int, fingerprint: str, results: list[dict[str, Any]],
                 fractions: dict[str, float]) -> dict[str, int]:
    """Kept images -> per-split part shards, then the chunk index (the chunk's done marker)."""
    writers: dict[str, fmt.ShardWriter] = {}
    stored: set[str] = set()
    lines = []
    try:
        for res in results:
            res = dict(res)
            jpeg = res.pop("jpg", None)
            if jpeg is not None:
                res["split"] = split_of(res["key"], fractions)
                if res["key"] not in stored:  # a repeat inside the chunk: the merge drops it anyway
                    stored.add(res["key"])
                    writer = writers.get(res["split"])
                    if writer is None:
                        writer = writers[res["split"]] = fmt.ShardWriter(_chunk_uri(output, start, f"{res['split']}.tar"))
                    writer.write(res["key"], {"jpg": jpeg})
            lines.append(json.dumps(res, sort_keys=True, ensure_ascii=False))
        parts = {s: {"size": w.commit().size, "samples": w.count} for s, w in sorted(writers.items())}
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    head = {"fingerprint": fingerprint, "start": start, "stop": stop, "parts": parts}
    body = "\n".join([json.dumps(head, sort_keys=True), *lines]) + "\n"
    storage.write_text(_chunk_uri(output, start, "index.jsonl"), body)
    return {"records": len(results), "kept": sum(1 for r in results if "key" in r)}


def shard_partition(input: str, output: str, cfg: ShardConfig | None, index: int) -> dict[str, Any]:
    """Shard partition ``index`` of the plan: every unfinished chunk, in order (resumable per chunk)."""
    input, output, cfg = _settle(input, output, cfg)
    index = int(index)  # kfp may hand integers over as floats
    t0 = time.perf_counter()
    if _complete(output, _fingerprint(input, cfg)) is not None:
        return {"partition": index, "chunks": 0, "resumed_chunks": 0, "records": 0, "kept": 0, "elapsed_s": 0.0}
    plan = _read_plan(output, input, cfg)
    if not 0 <= index < len(plan["partitions"]):
        raise InputError(f"partition {index} out of range: the plan has {len(plan['partitions'])}")
    chunks = _chunks(plan, index)
    fp = plan["chunk_fingerprint"]
    done = [_chunk_done(output, a, b, fp) is not None for a, b in chunks]
    first = next((k for k, d in enumerate(done) if not d), len(chunks))
    totals = {"records": 0, "kept": 0}
    if first < len(chunks):
        source = open_source(input, cfg)
        records = source.iter_range(chunks[first][0], chunks[-1][1])
        fractions = cfg.split.fractions()
        batch = max(8, 2 * source.io_threads)
        with _pool(source, cfg) as pool:
            bar = _progress(None, plan["partitions"][index][1] - chunks[first][0], f"partition {index}", "rec")
            for (start, stop), finished in zip(chunks[first:], done[first:], strict=True):
                items = list(zip(range(start, stop), itertools.islice(records, stop - start), strict=False))
                if finished:
                    bar.update(len(items))
                    continue
                batches = [items[k : k + batch] for k in range(0, len(items), batch)]
                results = [r for rs in _imap(pool, _work, batches) for r in rs]
                counts = _write_chunk(output, start, stop, fp, results, fractions)
                totals = {k: totals[k] + counts[k] for k in totals}
                bar.update(len(items))
            bar.close()
    summary = {"partition": index, "chunks": len(chunks), "resumed_chunks": sum(done), **totals,
               "elapsed_s": round(time.perf_counter() - t0, 3)}
    log.info("partition %d: %d chunk(s) (%d already done), %d records, %d kept, %.1fs", index, len(chunks),
             sum(done), totals["records"], totals["kept"], summary["elapsed_s"])
    return summary


# ------------------------------------------------------------------------------------------ 3. merge
@dataclass
class _Kept:
    index: int
    key: str
    chunk: int
    split: str
    ref: str
    captions: list[str]
    extra: dict[str, Any]
    sizes: dict[str, int]


@dataclass
class _NearIndex:
    """Hamming-radius search over 64-bit hashes: with d+1 bands, any hash within d bits shares a band."""

    distance: int
    bands: list[tuple[int, int]] = field(default_factory=list)
    tables: list[dict[int, list[int]]] = field(default_factory=list)
    hashes: list[int] = field(default_factory=list)
    refs: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = min(self.distance + 1, 64)
        edges = [round(64 * i / n) for i in range(n + 1)]
        self.bands = [(edges[i], edges[i + 1] - edges[i]) for i in range(n)]
        self.tables = [{} for _ in self.bands]

    def _parts(self, h: int) -> list[int]:
        return [(h >> shift) & ((1 << width) - 1) for shift, width in self.bands]

    def find(self, h: int) -> str | None:
        if self.distance >= 64:
            return self.refs[0] if self.hashes else None
        for table, part in zip(self.tables, self._parts(h), strict=True):
            for j in table.get(part, ()):
                if (self.hashes[j] ^ h).bit_count() <= self.distance:
                    return self.refs[j]
        return None

    def add(self, h: int, ref: str) -> None:
        j = len(self.hashes)
        self.hashes.append(h)
        self.refs.append(ref)
        for table, part in zip(self.tables, self._parts(h), strict=True):
            table.setdefault(part, []).append(j)


def _merge_extra(kept: dict[str, Any], new: dict[str, Any]) -> None:
    """Fold a duplicate's QA into the kept sample (no repeats)."""
    if isinstance(new.get("qa"), list):
        qa = kept.setdefault("qa", [])
        for item in new["qa"]:
            if item not in qa:
                qa.append(item)


def _index_records(output: str, start: int) -> Iterator[dict[str, Any]]:
    for line in _index_lines(output, start)[1:]:  # after the header
        if line.strip():
            yield json.loads(line)


def _write_final(task: dict[str, Any]) -> dict[str, Any]:
    """One final shard: its images copied out of the part shards (input order) with the merged json."""
    output = task["output"]
    with fmt.ShardWriter(storage.join(output, task["name"])) as writer:
        for chunk, group in itertools.groupby(task["entries"], key=lambda e: e["chunk"]):
            wanted = {e["key"]: e["meta"] for e in group}
            part = _chunk_uri(output, chunk, f"{task['split']}.tar")
            found = 0
            for raw in fmt.iter_shard(part, keys=set(wanted)):
                writer.write(raw["__key__"], {"jpg": raw["jpg"], "json": json.dumps(
                    wanted[raw["__key__"]], sort_keys=True, ensure_ascii=False).encode()})
                found += 1
            if found != len(wanted):
                raise InputError(f"part shard {part} lacks {len(wanted) - found} of its samples: delete "
                                 f"{storage.join(output, PARTS, f'{chunk:012d}')} and re-run its partition")
    result = {"name": task["name"], "split": task["split"], "num_samples": writer.count, "sha256": writer.sha256,
              "size": writer.size, "fingerprint": task["fingerprint"]}
    storage.write_text(storage.join(output, STATE_DIR, task["name"] + ".json"), json.dumps(result, indent=1))
    return result


def _finished(output: str, task: dict[str, Any]) -> dict[str, Any] | None:
    """The marker of a shard that is already written for exactly this plan, else None."""
    marker = _read_json(storage.join(output, STATE_DIR, task["name"] + ".json"))
    if not marker or marker.get("fingerprint") != task["fingerprint"]:
        return None
    return marker if _intact(storage.join(output, task["name"]), marker.get("size")) else None


def merge_partitions(input: str, output: str, cfg: ShardConfig | None = None) -> fmt.Manifest:
    """De-duplicate the partitions' records globally, write the final shards and ``manifest.json``.

    Returns the manifest (its extra fields: ``partitions``, ``chunks``, ``resumed_shards``, ``elapsed_s``,
    ``num_input_records``, ``rejected_examples``...). A dataset already complete for this input and config is
    returned as it is (``resumed_shards`` = all). Raises ``InputError`` naming the partitions that are not finished.
    """
    input, output, cfg = _settle(input, output, cfg)
    t0 = time.perf_counter()
    fingerprint = _fingerprint(input, cfg)
    done = _complete(output, fingerprint)
    if done is not None:
        return done.model_copy(update={"resumed_shards": len(done.shards)})
    plan = _read_plan(output, input, cfg)
    missing = [p for p in range(len(plan["partitions"]))
               if any(_chunk_done(output, a, b, plan["chunk_fingerprint"]) is None for a, b in _chunks(plan, p))]
    if missing:
        raise InputError(f"partition(s) {missing} of {output} are not finished: run shard_partition for them "
                         "(finished chunks are kept)")
    chunks = [c for p in range(len(plan["partitions"])) for c in _chunks(plan, p)]
    rejections = RejectionLog()
    kept: dict[str, _Kept] = {}
    near = _NearIndex(cfg.near_duplicate_distance) if cfg.near_duplicates else None
    counts = {"records": 0, "truncated": 0, "merged": 0, "qa_dropped": 0}
    for start, _ in _progress(chunks, len(chunks), "merge", "chunk"):
        for rec in _index_records(output, start):
            counts["records"] += 1
            if "reason" in rec:
                rejections.add(rec["reason"], rec["ref"], rec["detail"])
                continue
            counts["truncated"] += rec["truncated"]
            counts["qa_dropped"] += rec.get("qa_dropped", 0)
            key, dup = rec["key"], kept.get(rec["key"])
            if dup is not None:
                new = [c for c in rec["captions"] if c not in dup.captions]
                dup.captions.extend(new)
                counts["merged"] += len(new)
                _merge_extra(dup.extra, rec["extra"])
                rejections.add("duplicate", rec["ref"], f"same image as {dup.ref}")
                continue
            if near is not None and rec["phash"] is not None:
                other = near.find(int(rec["phash"], 16))
                if other is not None:
                    rejections.add("near_duplicate", rec["ref"],
                                   f"pHash within {cfg.near_duplicate_distance} bits of {other}")
                    continue
                near.add(int(rec["phash"], 16), rec["ref"])
            kept[key] = _Kept(rec["i"], key, start, rec["split"], rec["ref"], list(rec["captions"]),
                              rec["extra"], rec["sizes"])

    source_name = plan.get("source", "")
    tasks = []
    for split in fmt.SPLITS:
        items = [k for k in kept.values() if k.split == split]  # dicts keep input order
        for n, at in enumerate(range(0, len(items), cfg.samples_per_shard)):
            entries = []
            for k in items[at : at + cfg.samples_per_shard]:
                extra = {name: v for name, v in k.extra.items() if name not in RESERVED}
                meta = {**extra, "caption": k.captions[0], "captions": k.captions, "source": source_name,
                        "ref": k.ref, **k.sizes}
                entries.append({"key": k.key, "chunk": k.chunk, "meta": meta})
            fp = _digest([fmt.FORMAT, _spec(cfg).__dict__, [(e["key"], e["meta"]) for e in entries]])
            tasks.append({"name": fmt.shard_name(split, n), "split": split, "output": output, "entries": entries,
                          "fingerprint": fp})
    results: dict[str, dict[str, Any]] = {}
    todo = []
    for task in tasks:
        marker = _finished(output, task)
        if marker is not None:
            results[task["name"]] = marker
        else:
            todo.append(task)
    resumed = len(results)
    if resumed:
        log.info("resuming: %d of %d shards already written", resumed, len(tasks))
    with _pool(None, cfg) as pool:
        for res in _progress(_imap(pool, _write_final, todo, ordered=False), len(todo), "write", "shard"):
            results[res["name"]] = res
    _remove_stale(output, {t["name"] for t in tasks})

    shards = [fmt.ShardInfo(**{k: results[t["name"]][k] for k in ("name", "split", "num_samples", "sha256", "size")})
              for t in tasks]
    rej = rejections.to_dict()
    manifest = fmt.Manifest.build(
        shards, name=cfg.name, created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        config=cfg.model_dump(mode="json"), rejected=rej["counts"], input=input, source=source_name,
        fingerprint=fingerprint, num_input_records=counts["records"], rejected_examples=rej["examples"],
        rejected_reasons=REASONS, captions_truncated=counts["truncated"], captions_merged=counts["merged"],
        qa_dropped=counts["qa_dropped"], partitions=len(plan["partitions"]), chunks=len(chunks),
        image={"format": "jpg", "max_side": cfg.max_side, "jpeg_quality": cfg.jpeg_quality},
        resumed_shards=resumed, merge_s=round(time.perf_counter() - t0, 3),
        elapsed_s=round(time.time() - plan["created"], 3))
    fmt.write_manifest(output, manifest)
    storage.delete(storage.join(output, PARTS), recursive=True)
    log.info("wrote %d samples in %d shards to %s (%d rejected, %d partition(s))", manifest.num_samples,
             len(shards), output, manifest.rejected_total, len(plan["partitions"]))
    return manifest


def _remove_stale(output: str, planned: set[str]) -> None:
    """Delete shards (and markers) of an earlier plan that this plan no longer has."""
    for uri in storage.list_uris(output, recursive=False):
        name = uri.rstrip("/").rsplit("/", 1)[-1]
        if fmt.SHARD_RE.match(name) and name not in planned:
            log.info("removing stale shard %s", name)
            storage.delete(uri)
            storage.delete(storage.join(output, STATE_DIR, name + ".json"))


# ------------------------------------------------------------------------------------------ all in one
def _partition_main(input: str, output: str, cfg_json: str, index: int) -> None:
    from vlm.logs import setup_logging

    setup_logging(os.environ.get("VLM_LOG_LEVEL", "WARNING"))
    shard_partition(input, output, ShardConfig.model_validate_json(cfg_json), index)


def _run_partitions(input: str, output: str, cfg: ShardConfig, count: int) -> None:
    """Each partition in its own process, all at once (each with ``workers`` worker processes)."""
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    procs = [ctx.Process(target=_partition_main, args=(input, output, cfg.model_dump_json(), i), name=f"partition-{i}")
             for i in range(count)]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join()
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
    failed = [i for i, p in enumerate(procs) if p.exitcode != 0]
    if failed:
        raise RuntimeError(f"partition(s) {failed} failed (exit codes {[procs[i].exitcode for i in failed]}); "
                           "re-run to resume them from their last finished chunk")


def shard_dataset(input: str, output: str, cfg: ShardConfig | None = None) -> fmt.Manifest:
    """Shard ``input`` into validated WebDataset shards under ``output`` (local path or s3:// URI).

    plan -> partitions (in parallel processes when there are several) -> merge. Returns the manifest
    (also written to ``<output>/manifest.json``). Raises ``InputError`` for an unusable input and
    pydantic's ``ValidationError`` for a bad config.
    """
    input, output, cfg = _settle(input, output, cfg)
    plan = plan_partitions(input, output, cfg)
    count = len(plan["partitions"])
    if count > 1:
        _run_partitions(input, output, cfg, count)
    else:
        for index in range(count):
            shard_partition(input, output, cfg, index)
    return merge_partitions(input, output, cfg)
