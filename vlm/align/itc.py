"""Image-text scores for the optional ``min_itc_score`` filter, from the model's ITC head (mPLUG fusion)."""

from __future__ import annotations

from typing import Any


def itc_scores(model: Any, images: list, texts: list[str]) -> list[float]:
    """``model.itc_score`` per (image, text) pair, in [-1, 1]; a model without an ITC head is a config error."""
    if getattr(model, "fusion", None) is None:
        raise ValueError("align.min_itc_score is set but the model has no ITC head: train one with "
                         "fusion.enabled and losses.itc > 0, or unset align.min_itc_score")
    return [float(s) for s in model.itc_score(images, texts)]
