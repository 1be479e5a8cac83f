"""The curated set on disk: dataset shards (caption = final text), a json listing and summary statistics.

Written through :mod:`vlm.data.format` (``docs/formats.md``). Layout under the output URI::

    train-000000.tar ...   kept samples: {key}.{jpg|png|webp} (source bytes) + {key}.json (caption = final,
                           the source's question-answer pairs under qa)
    manifest.json          the dataset manifest with kind "curated": name, config, num_samples, shards
                           (name, split, num_samples, sha256, size), rejected by first reason (unusable
                           input images by their reason, e.g. undecodable), input count, shards_rejected
    curated.json           one entry per sampled image: key, raw, cleaned, final caption, reasons, changes
    summary.json           kept/rejected, repetition rate, cut-off rate and length before and after
"""

from __future__ import annotations

import json
import time
from collections import Counter
from statistics import mean
from typing import Any

from vlm import storage
from vlm.align.clean import is_cut_off, repetition_rate, word_count
from vlm.align.samples import ImageSample
from vlm.data import format as fmt

SPLIT = "train"


def sample_json(record: dict[str, Any], sample: ImageSample) -> dict[str, Any]:
    meta = sample.meta or {}
    width, height = meta.get("width"), meta.get("height")
    if not width or not height:
        width, height = sample.image().size
    return {"caption": record["final"], "captions": [record["final"]], "source": meta.get("source", "align"),
            "width": width, "height": height, "raw_description": record["raw"],
            "original_caption": meta.get("caption"), **({"qa": meta["qa"]} if meta.get("qa") else {})}


def write_shards(kept: list[dict[str, Any]], samples: dict[str, ImageSample], output_uri: str,
                 samples_per_shard: int) -> list[fmt.ShardInfo]:
    def members():
        for record in kept:
            sample = samples[record["key"]]
            yield record["key"], {sample.ext: sample.data, "json": json.dumps(sample_json(record, sample)).encode()}

    return fmt.write_split(output_uri, SPLIT, members(), samples_per_shard)


def _avg(values: list[float]) -> float:
    return round(mean(values), 4) if values else 0.0


def summarize(records: list[dict[str, Any]], ngram: int = 3) -> dict[str, Any]:
    """Counts and before/after quality figures over all sampled images (and over the kept ones)."""
    kept = [r for r in records if r["kept"]]
    rejected = Counter(reason for r in records for reason in r["reasons"])
    first_reason = Counter(r["reasons"][0] for r in records if r["reasons"])
    changes = Counter(c["reason"] for r in records for c in r["changes"])
    raws = [r["raw"] for r in records if not r.get("input_error")]  # the quality figures are of generations
    finals = [r["final"] for r in kept]
    return {
        "sampled": len(records),
        "kept": len(kept),
        "rejected": len(records) - len(kept),
        "keep_rate": round(len(kept) / len(records), 4) if records else 0.0,
        "rejected_by_reason": dict(sorted(rejected.items())),
        "rejected_by_first_reason": dict(sorted(first_reason.items())),
        "changes_by_reason": dict(sorted(changes.items())),
        "unusable_inputs": sum(1 for r in records if r.get("input_error")),
        "continued": sum(1 for r in records if r["continued"]),
        "rewritten": sum(1 for r in records if r.get("rewrite_accepted")),
        "rewrite_refused": dict(Counter(r["rewrite_reason"] for r in records if r.get("rewrite_reason"))),
        "repetition_raw": _avg([repetition_rate(t, ngram) for t in raws]),
        "repetition_final": _avg([repetition_rate(t, ngram) for t in finals]),
        "cut_off_raw": _avg([float(is_cut_off(t)) for t in raws]),
        "cut_off_final": _avg([float(is_cut_off(t)) for t in finals]),
        "words_raw": _avg([word_count(t) for t in raws]),
        "words_final": _avg([word_count(t) for t in finals]),
        "raw_tokens": _avg([r["raw_tokens"] for r in records if not r.get("input_error")]),
    }


def write_curated_set(records: list[dict[str, Any]], samples: dict[str, ImageSample], output_uri: str,
                      config: dict[str, Any], samples_per_shard: int = 1000, ngram: int = 3,
                      shards_rejected: dict[str, int] | None = None) -> dict[str, Any]:
    """Write shards, manifest, listing and summary; returns the summary (``shards_rejected``: data shards
    left out of the draw, by reason)."""
    kept = [r for r in records if r["kept"]]
    shards = write_shards(kept, samples, output_uri, samples_per_shard)
    summary = {**summarize(records, ngram), "shards_rejected": dict(shards_rejected or {})}
    manifest = fmt.Manifest.build(shards, kind="curated", name="align-curated",
                                  created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), config=config,
                                  rejected=summary["rejected_by_first_reason"], num_input_records=len(records),
                                  shards_rejected=summary["shards_rejected"])
    listing = [{k: r.get(k) for k in ("key", "raw", "cleaned", "rewritten", "final", "kept", "reasons", "changes",
                                     "continued", "raw_tokens", "itc_score", "source_shard", "input_error")}
               for r in records]
    storage.write_text(storage.join(output_uri, "curated.json"), json.dumps(listing, indent=1, ensure_ascii=False))
    storage.write_text(storage.join(output_uri, "summary.json"), json.dumps(summary, indent=2))
    fmt.write_manifest(output_uri, manifest)
    return summary
