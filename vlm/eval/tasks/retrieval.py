"""Image-text retrieval with a generative model: similarity = mean log-likelihood of the caption given the image.

A model that has its own ``similarity(images, texts) -> [n_images, n_texts]`` (e.g. a contrastive head)
is used directly. Otherwise every image x caption pair is scored, so keep ``retrieval_max_images`` small.
"""

from __future__ import annotations

import numpy as np

from vlm.eval import metrics, scoring
from vlm.eval.tasks.base import TaskResult, register_task


@register_task("retrieval")
def retrieval_task(model, samples, cfg) -> TaskResult | None:
    usable = [s for s in samples if s.captions][: cfg.retrieval_max_images]
    if len(usable) < 2:
        return None
    texts, owner = [], []
    for i, s in enumerate(usable):
        for c in s.captions[: cfg.retrieval_captions_per_image]:
            texts.append(c)
            owner.append(i)
    images = [s.image for s in usable]
    if callable(getattr(model, "similarity", None)):
        sim = np.asarray(model.similarity(images, texts), dtype=np.float64)
    else:
        pairs = [{"image": im, "instruction": cfg.caption_instruction, "answer": t} for im in images for t in texts]
        nll = scoring.answer_nll(model, pairs, cfg.batch_size, desc="retrieval")
        sim = np.array([-a / max(b, 1) for a, b in nll], dtype=np.float64).reshape(len(images), len(texts))
    ks = [k for k in cfg.retrieval_ks if k <= max(len(images), len(texts))] or [1]
    out = metrics.retrieval_recall(sim, ks=ks, text_to_image=owner)
    records = {"keys": [s.key for s in usable], "texts": texts, "text_to_image": owner,
               "similarity": np.round(sim, 5).tolist()}
    return TaskResult({f"retrieval_{k}": v for k, v in out.items()}, records, {}, len(usable))
