"""Captioning: beam-search captions scored with the COCO metrics, plus held-out caption perplexity."""

from __future__ import annotations

import logging
import math

from vlm.eval import metrics, scoring
from vlm.eval.tasks.base import TaskResult, register_task

log = logging.getLogger(__name__)


@register_task("caption")
def caption_task(model, samples, cfg) -> TaskResult | None:
    usable = [s for s in samples if s.captions]
    if not usable:
        return None
    preds = scoring.generate(model, [s.image for s in usable], [cfg.caption_instruction] * len(usable),
                             batch_size=cfg.batch_size, num_beams=cfg.num_beams, max_new_tokens=cfg.max_new_tokens,
                             desc="caption")
    refs = {s.key: s.captions for s in usable}
    corpus, per = metrics.caption_scores(refs, {s.key: p for s, p in zip(usable, preds)},
                                         tokenizer=None if cfg.tokenizer == "auto" else cfg.tokenizer,
                                         meteor=cfg.meteor)
    records = [{"key": s.key, "prediction": p, "references": s.captions, "scores": per[s.key]}
               for s, p in zip(usable, preds)]
    if cfg.perplexity:
        nlls = scoring.answer_nll(model, [{"image": s.image, "instruction": cfg.caption_instruction,
                                           "answer": s.captions[0]} for s in usable], cfg.batch_size,
                                  desc="perplexity")
        total, tokens = sum(n for n, _ in nlls), sum(t for _, t in nlls)
        if tokens:
            corpus["caption_perplexity"] = metrics.perplexity(total, tokens)
        for r, (nll, t) in zip(records, nlls):
            r["nll"], r["tokens"] = nll, t
            r["perplexity"] = math.exp(nll / t) if t else None
    return TaskResult(corpus, records, {"no_caption": len(samples) - len(usable)}, len(usable))
