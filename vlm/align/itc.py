"""Image-text scores from the model's ITC head (mPLUG fusion), for the optional ``min_itc_score`` filter.

Uses ``model.itc_score(images, texts)`` when the model provides one; otherwise computes the cosine between the
ITC projections exactly as ``MPlugFusion.contrastive_losses`` does in training (mean visual token vs. the text
CLS token). Scores lie in [-1, 1]; a model without fusion (no ITC head) is a configuration error.
"""

from __future__ import annotations

from typing import Any

MAX_TEXT_TOKENS = 500  # the fusion's text position table has 512 rows (CLS included)


def itc_scores(model: Any, images: list, texts: list[str]) -> list[float]:
    import torch
    import torch.nn.functional as F

    if len(images) != len(texts):
        raise ValueError(f"{len(images)} images for {len(texts)} texts")
    fn = getattr(model, "itc_score", None)
    if callable(fn):
        return [float(s) for s in fn(images, texts)]
    fusion = getattr(model, "fusion", None)
    if fusion is None or not hasattr(fusion, "itc_v"):
        raise ValueError("align.min_itc_score is set but the model has no ITC head: train one with "
                         "fusion.enabled and losses.itc > 0, or unset align.min_itc_score")
    pad = model.tokenizer.pad_token_id
    dev = model.device
    with torch.no_grad():
        vis = model.visual_tokens(model.vision.preprocess(images).to(dev))
        v = fusion.in_v(model.adapter(vis))
        ids = [model.tokenizer(t, add_special_tokens=False)["input_ids"][:MAX_TEXT_TOKENS] or [pad] for t in texts]
        width = max(map(len, ids))
        tid = torch.tensor([i + [pad] * (width - len(i)) for i in ids], device=dev)
        mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids], device=dev)
        t, _ = fusion.encode_text(model.llm.get_input_embeddings()(tid), mask)
        v_feat = F.normalize(fusion.itc_v(v.mean(1)).float(), dim=-1)
        t_feat = F.normalize(fusion.itc_t(t[:, 0]).float(), dim=-1)
    return (v_feat * t_feat).sum(-1).tolist()
