"""Filters applied after cleaning (and the optional rewrite): each returns a rejection reason or None.

A newcomer adds a filter by writing ``def my_filter(text, cfg, item) -> str | None`` and listing it in
``FILTERS``. ``item`` carries what the stage knows about the sample (e.g. ``itc_score``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from vlm.align.clean import repetition_rate, word_count
from vlm.align.config import AlignConfig

Filter = Callable[[str, AlignConfig, Mapping[str, Any]], "str | None"]


def min_length(text: str, cfg: AlignConfig, item: Mapping[str, Any]) -> str | None:
    return "too_short" if word_count(text) < cfg.min_words else None


def repetition(text: str, cfg: AlignConfig, item: Mapping[str, Any]) -> str | None:
    return "repetitive" if repetition_rate(text, cfg.repetition_ngram) > cfg.max_repetition else None


def itc(text: str, cfg: AlignConfig, item: Mapping[str, Any]) -> str | None:
    if cfg.min_itc_score is None:
        return None
    score = item.get("itc_score")
    if score is None:
        return "no_itc_score"
    return "low_itc" if score < cfg.min_itc_score else None


FILTERS: dict[str, Filter] = {"min_length": min_length, "repetition": repetition, "itc": itc}


def apply_filters(text: str | None, cfg: AlignConfig, item: Mapping[str, Any] | None = None) -> list[str]:
    """Every rejection reason for ``text`` (empty list = keep). A None text is rejected as ``empty``."""
    if not text or not text.strip():
        return ["empty"]
    item = item or {}
    return [r for f in FILTERS.values() if (r := f(text, cfg, item))]
