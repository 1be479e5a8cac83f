"""Generation + curation as one stage: sample -> describe -> clean -> (rewrite) -> filter -> write.

Work is split over ranks (``RANK``/``WORLD_SIZE``, e.g. under torchrun): every rank draws the same seeded
sample and takes every ``world_size``-th image. Each rank writes one json-lines file per finished batch under
``<output>/generations/<fingerprint>/``, so a restarted stage skips finished batches (resumable at batch
granularity; the fingerprint changes with anything that changes generation). Rank 0 waits for all ranks,
applies the filters (cheap, so thresholds can change without regenerating) and writes the curated set.

Damaged input (``docs/formats.md``): a sampled image that cannot be used (its shard fails the manifest
check, or it does not decode) becomes a record rejected for that reason (``input_error``), so it is counted
in the summary, MLflow and the curated manifest like any other rejection; a shard left out of the draw is
counted in ``shards_rejected``. A shard damaged after generation, found while writing, stops the stage.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import Counter
from typing import Any

from vlm import storage
from vlm.align.clean import clean_description
from vlm.align.config import AlignConfig
from vlm.align.filters import apply_filters
from vlm.align.generate import describe
from vlm.align.itc import itc_scores
from vlm.align.samples import list_split_shards, read_samples, select_keys
from vlm.align.writer import write_curated_set

log = logging.getLogger(__name__)

GENERATION_FIELDS = ("num_images", "split", "seed", "instruction", "continue_prompt", "min_answer_tokens",
                     "max_continuations", "max_new_tokens", "num_beams", "repetition_penalty", "batch_size",
                     "rewrite", "rewrite_model", "rewrite_instruction", "rewrite_max_new_tokens",
                     "rewrite_min_overlap")


def _dist() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def fingerprint(model_uri: str, data_uri: str, cfg: AlignConfig, world: int) -> str:
    fields = {k: getattr(cfg, k) for k in GENERATION_FIELDS}
    fields.update(model=str(model_uri), data=str(data_uri), world=world, itc=cfg.min_itc_score is not None)
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def _chunk_name(rank: int, world: int, index: int) -> str:
    return f"rank{rank:05d}-of-{world:05d}-batch{index:06d}.jsonl"


def _load_model(model_uri: str):
    import torch

    from vlm.models import load

    model = load(model_uri)
    if torch.cuda.is_available():
        model.to(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
    model.eval()
    return model


def _unusable(shard: str, key: str, reason: str) -> dict[str, Any]:
    """The record of a sampled image that could not be read (``input_error``: the reason)."""
    return {"key": key, "source_shard": shard, "raw": "", "pieces": [], "continued": 0, "raw_tokens": 0,
            "cleaned": "", "clean_reject": None, "changes": [], "rewritten": None, "rewrite_accepted": False,
            "rewrite_reason": None, "itc_score": None, "input_error": reason}


def _process_batch(model: Any, rewriter: Any, batch: list, cfg: AlignConfig) -> list[dict[str, Any]]:
    if not batch:
        return []
    images = [s.image() for s in batch]
    descs = describe(model, images, cfg)
    records = []
    for sample, desc in zip(batch, descs):
        raw = desc.text
        cleaned = clean_description(raw)
        records.append({
            "key": sample.key, "source_shard": sample.shard, "raw": raw, "pieces": desc.pieces,
            "continued": desc.continued, "raw_tokens": desc.tokens, "cleaned": cleaned.text,
            "clean_reject": cleaned.reject_reason, "changes": [c.to_dict() for c in cleaned.changes],
            "rewritten": None, "rewrite_accepted": False, "rewrite_reason": None, "itc_score": None,
        })
    if rewriter is not None:
        todo = [r for r in records if r["cleaned"]]
        if todo:
            for record, res in zip(todo, rewriter([r["cleaned"] for r in todo])):
                record.update(rewritten=res.rewritten, rewrite_accepted=res.accepted, rewrite_reason=res.reason)
                if res.accepted:
                    record["pre_rewrite"] = record["cleaned"]
                    record["cleaned_final"] = res.text
    if cfg.min_itc_score is not None:
        idx = [i for i, r in enumerate(records) if r["cleaned"]]
        if idx:
            texts = [records[i].get("cleaned_final") or records[i]["cleaned"] for i in idx]
            for i, score in zip(idx, itc_scores(model, [images[i] for i in idx], texts)):
                records[i]["itc_score"] = score
    return records


def _wait_for_ranks(work: str, world: int, timeout_s: float) -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        return
    deadline = time.time() + timeout_s
    markers = [storage.join(work, f"rank{r:05d}-of-{world:05d}.done") for r in range(world)]
    while not all(storage.exists(m) for m in markers):
        if time.time() > deadline:
            missing = [m for m in markers if not storage.exists(m)]
            raise TimeoutError(f"ranks did not finish within {timeout_s:.0f}s: {missing}")
        time.sleep(2.0)


def finalize(record: dict[str, Any], cfg: AlignConfig) -> dict[str, Any]:
    """Apply the filters to a generated record: sets ``final``, ``reasons`` and ``kept``."""
    final = record.get("cleaned_final") or record["cleaned"]
    reasons = [record["input_error"]] if record.get("input_error") else apply_filters(final, cfg, record)
    return {**record, "final": final, "reasons": reasons, "kept": not reasons}


def generate_and_curate(model_uri: str, data_uri: str, output_uri: str, cfg: AlignConfig,
                        run_id: str | None = None, *, experiment: str | None = None, rank: int | None = None,
                        world_size: int | None = None) -> dict[str, Any]:
    """Build the curated alignment set from a stage-one model artefact; returns a JSON-able summary.

    Rank 0 returns the full summary (counts by reason, repetition/cut-off/length before and after, the
    output URI); other ranks return their own batch counts. With ``run_id`` (attach) or ``experiment`` or
    ``MLFLOW_TRACKING_URI`` set, rank 0 logs params, metrics and the listing to MLflow (stage ``align``).
    ``rank``/``world_size`` default to ``RANK``/``WORLD_SIZE`` from the environment.
    """
    env_rank, env_world = _dist()
    rank = env_rank if rank is None else rank
    world = env_world if world_size is None else world_size
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside world size {world}")
    shards_rejected: Counter[str] = Counter()
    pairs = select_keys(data_uri, cfg.num_images, cfg.seed, cfg.split, rejected=shards_rejected)
    refs = {s.uri: s for s in list_split_shards(data_uri, cfg.split)}
    mine = pairs[rank::world]
    fp = fingerprint(model_uri, data_uri, cfg, world)
    work = storage.join(output_uri, "generations", fp)
    batches = [mine[i : i + cfg.batch_size] for i in range(0, len(mine), cfg.batch_size)]
    model = rewriter = None
    done = skipped = 0
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    it = enumerate(batches)
    if tqdm is not None:
        it = tqdm(it, total=len(batches), desc=f"align rank {rank}", disable=rank != 0 or not batches)
    for index, pairs_batch in it:
        chunk = storage.join(work, _chunk_name(rank, world, index))
        if storage.exists(chunk):
            skipped += 1
            continue
        if model is None:
            model = _load_model(model_uri)
            if cfg.rewrite:
                from vlm.align.rewrite import Rewriter

                rewriter = Rewriter(cfg)
        bad: dict[tuple[str, str], str] = {}
        records = _process_batch(model, rewriter, read_samples(pairs_batch, refs, bad), cfg)
        records += [_unusable(shard, key, reason) for (shard, key), reason in bad.items()]
        storage.write_text(chunk, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        done += 1
    storage.write_text(storage.join(work, f"rank{rank:05d}-of-{world:05d}.done"), "")
    if skipped:
        log.info("rank %d: resumed, %d finished batch(es) skipped", rank, skipped)
    if rank != 0:
        _wait_for_ranks(work, world, float(os.environ.get("VLM_ALIGN_WAIT_S", "21600")))
        return {"rank": rank, "batches": len(batches), "generated": done, "skipped": skipped}
    _wait_for_ranks(work, world, float(os.environ.get("VLM_ALIGN_WAIT_S", "21600")))

    records = []
    for uri in storage.list_uris(work):
        if uri.endswith(".jsonl"):
            records += [json.loads(line) for line in storage.read_text(uri).splitlines() if line.strip()]
    expected = {k for _, k in pairs}
    if {r["key"] for r in records} != expected:
        raise RuntimeError(f"{work} holds {len(records)} records for {len(expected)} sampled images; "
                           "delete the folder to regenerate")
    records = sorted((finalize(r, cfg) for r in records), key=lambda r: r["key"])
    keep_pairs = [(r["source_shard"], r["key"]) for r in records if r["kept"]]
    samples = {s.key: s for s in read_samples(keep_pairs, refs)}
    config = {"model_uri": str(model_uri), "data_uri": str(data_uri), "align": cfg.model_dump(mode="json",
                                                                                                exclude={"finetune"})}
    summary = write_curated_set(records, samples, output_uri, config, cfg.samples_per_shard, cfg.repetition_ngram,
                                shards_rejected=dict(shards_rejected))
    result = {**summary, "output_uri": str(output_uri), "fingerprint": fp, "batches": len(batches),
              "generated": done, "skipped": skipped}
    log.info("align: kept %d of %d (%s)", summary["kept"], summary["sampled"], summary["rejected_by_reason"])
    if run_id or experiment or os.environ.get("MLFLOW_TRACKING_URI"):
        result["run_id"] = _track(result, cfg, output_uri, run_id, experiment)
    return result


def _track(result: dict[str, Any], cfg: AlignConfig, output_uri: str, run_id: str | None,
           experiment: str | None) -> str:
    from vlm import tracking

    metrics = {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    metrics.update({f"rejected.{k}": v for k, v in result["rejected_by_reason"].items()})
    metrics.update({f"changes.{k}": v for k, v in result["changes_by_reason"].items()})
    metrics.update({f"shards_rejected.{k}": v for k, v in result["shards_rejected"].items()})
    with tracking.stage_run("align", experiment or os.environ.get("VLM_EXPERIMENT", "vlm-align"),
                            run_id=run_id, finish=run_id is None) as run:
        run.log_params({"align": cfg.model_dump(mode="json", exclude={"finetune"})})
        run.log_metrics(metrics)
        run.set_tags({"vlm.align.output": output_uri})
        run.log_dict({k: v for k, v in result.items()}, "align/summary.json")
        run.log_text(storage.read_text(storage.join(output_uri, "curated.json")), "align/curated.json")
        return run.run_id


__all__ = ["generate_and_curate", "finalize", "fingerprint", "itc_scores"]
