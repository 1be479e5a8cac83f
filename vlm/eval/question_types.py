"""The type of a VQA question, for per-type accuracy: a type given with the data, else one read off its wording.

A ``question_type`` (VQAv2 annotations: "what color is the", "how many"...) or ``type`` field wins. Otherwise
the templates of our sources decide (``builtin:shapes``: "how many shapes are there?", "what color is the
circle?", "where is the square?", "is there a diamond in the image?", "what shape is red?"; ``easy-vqa``:
"what is the blue shape?", "what is the color of the triangle?", "does the image not contain a circle?"...),
by these rules in order:

- ``count``: starts with "how many";
- ``yes/no``: starts with an auxiliary verb (is, are, does, do, can, was, has...);
- ``position``: starts with "where";
- ``color``: mentions "color"/"colour";
- ``shape``: mentions "shape" (after the colour rule: "what color is the shape?" asks for a colour);
- else the first two words ("what is", "who is"...), so new templates still group sensibly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

METRIC_PREFIX = "vqa_accuracy_q_"  # the VQA task's per-question-type metrics: vqa_accuracy_q_<type>
AUXILIARIES = frozenset("is are was were does do did can could will would has have had should".split())
_WORD = re.compile(r"[a-z0-9']+")


def question_type(qa: Mapping[str, Any]) -> str:
    """The type of one ``{question, answers, question_type?, type?}`` item (see the module docstring)."""
    given = qa.get("question_type") or qa.get("type")
    if isinstance(given, str) and given.strip():
        return given.strip()
    words = _WORD.findall(str(qa.get("question", "")).lower())
    if not words:
        return "other"
    if words[:2] == ["how", "many"]:
        return "count"
    if words[0] in AUXILIARIES:
        return "yes/no"
    if words[0] == "where":
        return "position"
    if "color" in words or "colour" in words:
        return "color"
    if "shape" in words:
        return "shape"
    return " ".join(words[:2])
