"""Baselines that never look at the image, from the train split, scored like the model on the evaluated items.

- ``majority``: every question gets the train split's most common answer;
- ``text_only``: every question gets the most common train answer to the same question text (lower-cased,
  spaces collapsed, final "?" dropped), else the majority answer. On template sets such as easy-vqa this
  lookup is strong (lopsided yes/no questions): a model is only useful where it beats it;
- ``constant_caption``: every image gets the train split's most common caption.

A train question's answer is the most common of its human answers (the first on ties).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

from vlm.eval.tasks.vqa import by_question_type, score_answer


def _question_key(text: str) -> str:
    return re.sub(r"\s+", " ", text.lower()).strip().rstrip("?").strip()


def _top(values: Sequence[str]) -> str:
    return Counter(values).most_common(1)[0][0]


def _scored(records: Sequence[dict], answers: Sequence[str]) -> dict[str, Any]:
    scored = [{**r, **score_answer(a, r["answers"])} for r, a in zip(records, answers)]
    n = len(scored)
    return {"vqa_accuracy": sum(r["accuracy"] for r in scored) / n,
            "vqa_exact_match": sum(r["exact_match"] for r in scored) / n,
            "by_question_type": {t: v["accuracy"] for t, v in by_question_type(scored).items()}}


def vqa_baselines(train_samples: Sequence, records: Sequence[dict]) -> dict[str, Any] | None:
    """``{majority: {answer, vqa_accuracy, vqa_exact_match, by_question_type}, text_only: {...}, n_train}``
    for the VQA ``records`` (the task's per-question results), or None without train questions."""
    train = [(qa["question"], _top(qa["answers"])) for s in train_samples for qa in s.qa if qa.get("answers")]
    if not train or not records:
        return None
    majority = _top([a for _, a in train])
    by_question: dict[str, list[str]] = defaultdict(list)
    for q, a in train:
        by_question[_question_key(q)].append(a)
    lookup = {q: _top(answers) for q, answers in by_question.items()}
    looked_up = [lookup.get(_question_key(r["question"])) for r in records]
    return {"n_train_questions": len(train),
            "majority": {"answer": majority, **_scored(records, [majority] * len(records))},
            "text_only": {"coverage": sum(a is not None for a in looked_up) / len(records),
                          **_scored(records, [a if a is not None else majority for a in looked_up])}}


def caption_baseline(train_samples: Sequence, records: Sequence[dict], **metric_options) -> dict[str, Any] | None:
    """``{caption, metrics}``: the most common train caption as every prediction, scored against the
    evaluated ``records``' references with :func:`vlm.eval.metrics.caption_metrics` (``metric_options``:
    ``tokenizer``, ``meteor``); None without train captions."""
    from vlm.eval.metrics import caption_metrics

    captions = [c for s in train_samples for c in s.captions]
    if not captions or not records:
        return None
    constant = _top(captions)
    scores = caption_metrics({r["key"]: r["references"] for r in records}, {r["key"]: constant for r in records},
                             **metric_options)
    return {"caption": constant, "metrics": scores}
