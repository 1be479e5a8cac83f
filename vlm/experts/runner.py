"""Expert-label precomputation: data shards in, label shards aligned 1:1 out, plus ``labels.json``.

For every data shard and every requested expert that has not finished it yet, the images are decoded,
shrunk to ``cfg.resolution``, batched and passed through the experts in dependency order; each expert's
labels go to ``{labels}/{expert}/{shard}.tar`` and a marker ``{labels}/{expert}/{shard}.done.json``
(written last) records the expert's fingerprint, counts and per-image failures. A shard with a marker is
finished and never recomputed, so an interrupted run resumes where it stopped. ``labels.json`` is rebuilt
from the markers at the end (and by :func:`write_labels_index`, e.g. after a kfp ParallelFor).

Damaged input (``docs/formats.md``): a data shard is checked against the manifest's size and sha256 before
any of its images is used. A shard that fails the check, or turns out truncated while read, gets no label
shard and no marker (a label shard never covers part of a data shard); it is counted in the summary's
``rejected`` / ``shards_rejected``, named in a warning, shown as not done in ``labels.json``, and computed by
the next run once repaired. An image that does not decode gets no label in any expert's shard: the key is
missing there, listed in each marker's ``failures`` and counted (``rejected["undecodable"]``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vlm import storage
from vlm.experts import registry
from vlm.experts.base import Batch, Expert, ExpertBrokenError, ExpertError, Failure, Label, check_label
from vlm.experts.config import ExpertsConfig
from vlm.data import format as fmt
from vlm.data.format import ShardRef
from vlm.experts.shards import LabelShardWriter, decode_image, read_label_shard

log = logging.getLogger(__name__)

LABELS_INDEX = fmt.LABELS_INDEX
MARKER_SUFFIX = ".done.json"
MAX_REASON = 500


# --------------------------------------------------------------------------------------- layout
label_shard_uri = fmt.label_shard_uri


def marker_uri(labels_uri: str, expert: str, shard: str) -> str:
    stem = shard[: -len(".tar")] if shard.endswith(".tar") else shard
    return storage.join(labels_uri, expert, stem + MARKER_SUFFIX)


def read_markers(labels_uri: str) -> dict[str, dict[str, dict[str, Any]]]:
    """``expert -> shard name -> marker`` for everything finished under ``labels_uri``."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    base = str(labels_uri).rstrip("/")
    for uri in storage.list_uris(labels_uri):
        if not uri.endswith(MARKER_SUFFIX):
            continue
        rel = uri[len(base):].replace("\\", "/").strip("/").split("/")
        if len(rel) != 2:
            continue
        marker = json.loads(storage.read_text(uri))
        out.setdefault(rel[0], {})[marker["shard"]] = marker
    return out


def fingerprint(desc: dict[str, Any]) -> str:
    keep = {k: desc[k] for k in ("name", "backend", "version", "source", "options", "resolution", "channels")}
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------- planning
def shard_groups(data_uri: str, n: int) -> list[list[str]]:
    """Split the dataset's shards into at most ``n`` contiguous groups of similar sample counts (for ParallelFor)."""
    n = int(n)  # kfp may hand integers over as floats
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    shards = fmt.find_shards(data_uri)
    n = min(n, len(shards))
    sizes = [s.num_samples if s.num_samples is not None else 1 for s in shards]
    total = sum(sizes)
    groups: list[list[str]] = [[] for _ in range(n)]
    acc = 0
    for shard, size in zip(shards, sizes, strict=True):
        # assign by the midpoint of the shard in the cumulative count: contiguous and balanced
        g = min(n - 1, int((acc + size / 2) * n / max(total, 1)))
        groups[g].append(shard.name)
        acc += size
    return [g for g in groups if g]


@dataclass(frozen=True)
class ExpertsResult:
    """What :func:`run_experts` answers. ``to_dict()`` is the JSON summary (``vlm experts``, the pipeline step).

    ``labelled`` / ``failed`` / ``complete`` are by expert; ``rejected`` counts images that got no label by
    reason; ``shards_rejected`` names each damaged data shard with its error.
    """

    data_uri: str
    labels_uri: str
    experts: list[str]  # in dependency order
    device: str
    shards_selected: int
    shards_computed: int
    expert_shards_skipped: int  # (expert, shard) pairs already done
    images: int
    labelled: dict[str, int]
    failed: dict[str, int]
    rejected: dict[str, int]
    shards_rejected: dict[str, str]
    seconds: float
    images_per_s: float
    complete: dict[str, bool]  # every shard of the dataset labelled (labels.json)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class _Plan:
    shard: ShardRef
    todo: list[str]                       # experts to compute for this shard, in dependency order
    load: dict[str, str] = field(default_factory=dict)  # dependency expert -> label shard URI to read


# --------------------------------------------------------------------------------------- per process state
_EXPERTS: dict[str, Expert] = {}
_STATS: dict[str, dict[str, int]] = {}  # expert -> {"ok": n, "failed": n, "streak": n} in this process


def _expert(name: str, cfg: ExpertsConfig, device: str) -> Expert:
    key = f"{name}:{cfg.model_dump_json()}:{device}"
    if key not in _EXPERTS:
        exp = registry.build(name, cfg, device)
        t0 = time.perf_counter()
        exp.setup()
        log.info("expert %s (%s v%s) ready in %.1fs", name, exp.backend, exp.version, time.perf_counter() - t0)
        _EXPERTS[key] = exp
    return _EXPERTS[key]


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:MAX_REASON]


def _predict(expert: Expert, batch: Batch) -> list[Label | str]:
    """Labels (or a failure reason) per image; a failing batch is retried image by image to isolate the culprit."""
    try:
        labels = expert.predict(batch)
        if len(labels) != len(batch):
            raise ValueError(f"returned {len(labels)} labels for {len(batch)} images")
    except Exception as exc:  # noqa: BLE001 - per-image isolation below
        if len(batch) == 1:
            return [_reason(exc)]
        return [r for i in range(len(batch)) for r in _predict(expert, batch.subset(i))]
    out: list[Label | str] = []
    for img, label in zip(batch.images, labels, strict=True):
        try:
            out.append(check_label(expert, img, label))
        except ValueError as exc:
            out.append(f"bad output: {exc}"[:MAX_REASON])
    return out


def _note(expert: Expert, ok: bool, reason: str, cfg: ExpertsConfig) -> None:
    st = _STATS.setdefault(expert.name, {"ok": 0, "failed": 0, "streak": 0})
    if ok:
        st["ok"] += 1
        st["streak"] = 0
        return
    st["failed"] += 1
    st["streak"] += 1
    if st["ok"] == 0 and st["streak"] >= cfg.broken_after:
        raise ExpertBrokenError(f"expert {expert.name!r} ({expert.backend}) failed on all {st['streak']} images it was "
                                f"given, so it looks broken; stopping. Last reason: {reason}")


def _process_shard(plan: _Plan, labels_uri: str, cfg: ExpertsConfig, device: str, progress: Any = None) -> dict[str, Any]:
    """Compute ``plan.todo`` for one shard; write each label shard then its marker. Returns shard stats."""
    t0 = time.perf_counter()
    experts = {n: _expert(n, cfg, device) for n in plan.todo}
    loaded = {dep: read_label_shard(uri, dep) for dep, uri in plan.load.items()}
    writers = {n: LabelShardWriter(label_shard_uri(labels_uri, n, plan.shard.name), n) for n in plan.todo}
    failures: dict[str, list[Failure]] = {n: [] for n in plan.todo}
    ok_in_shard = dict.fromkeys(plan.todo, 0)
    rejected: Counter[str] = Counter()
    seen = 0

    def run_batch(keys: list[str], images: list[np.ndarray]) -> None:
        produced: dict[str, list[np.ndarray | None]] = {}
        for name in plan.todo:
            exp = experts[name]
            deps = {}
            for d in (*exp.requires, *exp.after):
                if d in produced:
                    deps[d] = produced[d]
                elif d in loaded:
                    deps[d] = [loaded[d].get(k) for k in keys]
            results = _predict(exp, Batch(keys, images, deps))
            produced[name] = []
            for key, res in zip(keys, results, strict=True):
                if isinstance(res, Label):
                    writers[name].add(key, res.map, res.meta)
                    produced[name].append(res.map)
                    ok_in_shard[name] += 1
                    _note(exp, True, "", cfg)
                else:
                    failures[name].append(Failure(key, name, res))
                    produced[name].append(None)
                    _note(exp, False, res, cfg)

    try:
        keys: list[str] = []
        images: list[np.ndarray] = []
        empty = plan.shard.num_samples == 0 and not storage.exists(plan.shard.uri)
        # verified against the manifest's sha256 first: labels are never computed from a damaged shard
        try:
            for sample in (iter(()) if empty else fmt.iter_shard(plan.shard, verify=True)):
                key = sample["__key__"]
                seen += 1
                try:
                    img = decode_image(sample, cfg.resolution)
                except Exception as exc:  # noqa: BLE001 - bad data is recorded, not fatal
                    reason = exc.reason if isinstance(exc, fmt.SampleError) else "undecodable"
                    rejected[reason] += 1
                    log.warning("shard %s: sample %s gets no labels: %s [%s]", plan.shard.uri, key, _reason(exc),
                                reason)
                    for name in plan.todo:
                        failures[name].append(Failure(key, name, f"undecodable image: {_reason(exc)}"))
                    continue
                keys.append(key)
                images.append(img)
                if len(keys) >= cfg.batch_size:
                    run_batch(keys, images)
                    if progress is not None:
                        progress.update(len(keys))
                    keys, images = [], []
        except fmt.ShardError as exc:
            log.warning("skipping %s [%s]: no labels are written for it; they are computed by a re-run once "
                        "the shard is repaired", exc, exc.reason)
            return {"shard": plan.shard.name, "samples": 0, "experts": {}, "rejected": {exc.reason: 1},
                    "error": str(exc), "seconds": time.perf_counter() - t0}
        if keys:
            run_batch(keys, images)
            if progress is not None:
                progress.update(len(keys))
        for name in plan.todo:
            st = _STATS.get(name, {"ok": 0})
            if ok_in_shard[name] == 0 and failures[name] and st["ok"] == 0:
                raise ExpertBrokenError(f"expert {name!r} failed on every image of {plan.shard.name} "
                                        f"({len(failures[name])}) and has not succeeded once; stopping. "
                                        f"First reason: {failures[name][0].reason}")
        stats: dict[str, Any] = {"shard": plan.shard.name, "samples": seen, "experts": {}, "rejected": dict(rejected)}
        for name in plan.todo:
            exp = experts[name]
            writers[name].commit()
            marker = {"shard": plan.shard.name, "expert": name, "fingerprint": fingerprint(exp.describe()),
                      "describe": exp.describe(), "data_sha256": plan.shard.sha256, "samples": seen,
                      "labelled": writers[name].count, "failed": len(failures[name]),
                      "used": sorted(d for d in (*exp.requires, *exp.after) if d in plan.todo or d in loaded),
                      "failures": [f.to_dict() for f in failures[name]], "seconds": round(time.perf_counter() - t0, 3)}
            storage.write_text(marker_uri(labels_uri, name, plan.shard.name), json.dumps(marker, indent=1))
            stats["experts"][name] = {"labelled": writers[name].count, "failed": len(failures[name])}
        stats["seconds"] = time.perf_counter() - t0
        return stats
    finally:
        for w in writers.values():
            w.abort()


def _init_worker(threads: int) -> None:
    """Runs first in each worker process: share the cores instead of oversubscribing them."""
    import os

    from vlm.logs import setup_logging

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(threads))
    setup_logging(os.environ.get("VLM_LOG_LEVEL", "WARNING"))


def _worker(plan: _Plan, labels_uri: str, cfg: ExpertsConfig, device: str) -> dict[str, Any]:
    return _process_shard(plan, labels_uri, cfg, device)


# --------------------------------------------------------------------------------------- entry points
def run_experts(data_uri: str, labels_uri: str, experts: list[str], cfg: ExpertsConfig,
                shards: list[str] | None = None, overwrite: bool = False) -> ExpertsResult:
    """Compute ``experts`` for the data shards under ``data_uri`` (all, or the names in ``shards``).

    Resumable: shards whose label marker exists with the same expert fingerprint are skipped; a marker with
    a different fingerprint (other version/options/source) or computed from a changed data shard is an
    error unless ``overwrite``.
    """
    from vlm.experts.hf import resolve_device
    from vlm.progress import Progress

    t0 = time.perf_counter()
    _STATS.clear()
    if not experts:
        raise ExpertError("no experts requested")
    all_shards = fmt.find_shards(data_uri)
    by_name = {s.name: s for s in all_shards}
    if shards is not None:
        unknown = [s for s in shards if s not in by_name]
        if unknown:
            raise ValueError(f"unknown shard(s) {unknown} (dataset {data_uri} has {len(all_shards)} shards)")
        selected = [by_name[s] for s in shards]
    else:
        selected = all_shards
    markers = read_markers(labels_uri)
    names = registry.order(experts, cfg, on_disk=markers)
    device = resolve_device(cfg.device)
    described = {n: registry.build(n, cfg, device).describe() for n in names}  # fails early on missing weights
    prints = {n: fingerprint(d) for n, d in described.items()}

    plans: list[_Plan] = []
    skipped = 0
    for shard in selected:
        todo = []
        for n in names:
            m = markers.get(n, {}).get(shard.name)
            if m is None or overwrite:
                todo.append(n)
                continue
            if m["fingerprint"] != prints[n]:
                raise ExpertError(f"{marker_uri(labels_uri, n, shard.name)} was computed with other settings "
                                  f"({m['describe']}) than now ({described[n]}); use another labels URI or overwrite")
            if shard.sha256 and m.get("data_sha256") and m["data_sha256"] != shard.sha256:
                raise ExpertError(f"data shard {shard.name} changed since its {n!r} labels were computed "
                                  "(sha256 differs); use another labels URI or overwrite")
        skipped += len(names) - len(todo)
        if not todo:
            continue
        load = {}
        for n in todo:
            cls = registry.resolve(n, cfg)
            for d in (*cls.requires, *cls.after):
                if d in todo or d in load:
                    continue
                if shard.name in markers.get(d, {}):
                    load[d] = label_shard_uri(labels_uri, d, shard.name)
                elif d in cls.requires:
                    raise ExpertError(f"expert {n!r} needs {d!r} labels for {shard.name}, which are not computed; "
                                      f"add {d!r} to the experts list")
        plans.append(_Plan(shard, todo, load))

    log.info("experts %s over %d shard(s) of %s -> %s: %d to compute, %d expert-shards already done (device %s)",
             names, len(selected), data_uri, labels_uri, len(plans), skipped, device)
    results: list[dict[str, Any]] = []
    if plans and cfg.workers <= 1:
        total = sum(p.shard.num_samples or 0 for p in plans) or None
        with Progress(total=total, unit="img", desc="experts") as bar:
            for plan in plans:
                results.append(_process_shard(plan, labels_uri, cfg, device, bar))
    elif plans:
        import multiprocessing as mp

        import os

        n = min(cfg.workers, len(plans))
        with ProcessPoolExecutor(max_workers=n, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                 initargs=(max(1, (os.cpu_count() or 1) // n),)) as pool:
            futures = [pool.submit(_worker, p, labels_uri, cfg, device) for p in plans]
            try:
                for fut in Progress(futures, unit="shard", desc="experts"):
                    results.append(fut.result())
            except BaseException:
                for f in futures:
                    f.cancel()
                raise

    index = write_labels_index(data_uri, labels_uri)
    labelled = {n: sum(r["experts"].get(n, {}).get("labelled", 0) for r in results) for n in names}
    failed = {n: sum(r["experts"].get(n, {}).get("failed", 0) for r in results) for n in names}
    images = sum(r["samples"] for r in results)
    rejected: Counter[str] = Counter()
    for r in results:
        rejected.update(r.get("rejected", {}))
    shards_rejected = {r["shard"]: r["error"] for r in results if "error" in r}
    seconds = time.perf_counter() - t0
    result = ExpertsResult(
        data_uri=str(data_uri), labels_uri=str(labels_uri), experts=names, device=device,
        shards_selected=len(selected), shards_computed=len(plans), expert_shards_skipped=skipped, images=images,
        labelled=labelled, failed=failed, rejected=dict(rejected), shards_rejected=shards_rejected,
        seconds=round(seconds, 3), images_per_s=round(images / seconds, 3) if seconds > 0 else 0.0,
        complete={n: index["experts"].get(n, {}).get("complete", False) for n in names})
    log.info("experts done: %d images in %.1fs (%.2f img/s), labelled %s, failed %s", images, seconds,
             result.images_per_s, labelled, failed)
    if shards_rejected:
        log.warning("experts: %d damaged data shard(s) got no labels: %s", len(shards_rejected),
                    ", ".join(sorted(shards_rejected)))
    return result


def write_labels_index(data_uri: str, labels_uri: str, max_failures: int = 10_000) -> dict[str, Any]:
    """Rebuild ``{labels_uri}/labels.json`` from the shard markers (safe to call any time, e.g. after a fan-out)."""
    shards = fmt.find_shards(data_uri)
    names = [s.name for s in shards]
    markers = read_markers(labels_uri)
    manifest_sha = fmt.manifest_sha256(data_uri)
    dataset = fmt.read_manifest(data_uri).name if manifest_sha else None
    experts: dict[str, Any] = {}
    for name, per_shard in sorted(markers.items()):
        done = [s for s in names if s in per_shard]
        ms = [per_shard[s] for s in done]
        latest = ms[-1]["describe"] if ms else next(iter(per_shard.values()))["describe"]
        failures = [f for m in ms for f in m.get("failures", [])]
        experts[name] = {**latest, "fingerprint": ms[-1]["fingerprint"] if ms else None,
                         "member": f"{{key}}.{name}.png", "shards_done": len(done), "shards_total": len(names),
                         "complete": len(done) == len(names), "samples": sum(m["samples"] for m in ms),
                         "labelled": sum(m["labelled"] for m in ms), "failed": len(failures),
                         "failures": failures[:max_failures]}
    index = {"format": 1, "data": {"uri": str(data_uri), "manifest_sha256": manifest_sha, "dataset": dataset,
                                   "shards": names},
             "experts": experts}
    fmt.write_labels_index(labels_uri, index)
    return index
