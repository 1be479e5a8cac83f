"""VQA: short answers generated per question, scored with the official VQAv2 accuracy.

With fewer than 4 human answers (our synthetic sets have one or two) the leave-one-out rule can never give
full credit, so such questions are scored by normalised exact match against any answer (``scoring: exact``).
Each record carries its question type (:mod:`vlm.eval.question_types`); accuracy per answer type
(``vqa_accuracy_<type>``, VQAv2's yes/no, number, other) and, for at most :data:`MAX_TYPE_METRICS` question
types, per question type (``vqa_accuracy_q_<type>``) are metrics too.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence

from vlm.eval import metrics, scoring
from vlm.eval.question_types import METRIC_PREFIX, question_type
from vlm.eval.tasks.base import TaskResult, register_task
from vlm.eval.vqa_normalize import normalize_answer

MIN_ANSWERS_FOR_VQA_SCORE = 4
MAX_TYPE_METRICS = 12


def metric_suffix(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "none"


def score_answer(prediction: str, answers: Sequence[str]) -> dict[str, float | str]:
    """``{accuracy, exact_match, scoring}`` of one answer: VQAv2 accuracy with 4+ answers, else exact match."""
    exact = float(normalize_answer(prediction) in {normalize_answer(a) for a in answers})
    official = len(answers) >= MIN_ANSWERS_FOR_VQA_SCORE
    return {"accuracy": metrics.vqa_accuracy(prediction, answers) if official else exact, "exact_match": exact,
            "scoring": "vqa" if official else "exact"}


def by_question_type(records: Sequence[dict], key: str = "accuracy") -> dict[str, dict[str, float]]:
    """``{type: {n, accuracy, exact_match}}`` over records (``key`` names the accuracy field)."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        groups[r["question_type"]].append(r)
    return {t: {"n": len(rs), "accuracy": sum(r[key] for r in rs) / len(rs),
                "exact_match": sum(r["exact_match"] for r in rs) / len(rs)} for t, rs in sorted(groups.items())}


@register_task("vqa")
def vqa_task(model, samples, cfg) -> TaskResult | None:
    items = [(s, qa) for s in samples for qa in s.qa]
    items = items[: cfg.max_questions] if cfg.max_questions else items
    if not items:
        return None
    preds = scoring.answer(model, [s.image for s, _ in items],
                           [cfg.vqa_instruction.replace("{question}", qa["question"]) for _, qa in items],
                           batch_size=cfg.batch_size, num_beams=cfg.num_beams,
                           max_new_tokens=cfg.vqa_max_new_tokens, desc="vqa")
    records, by_answer_type = [], defaultdict(list)
    for (s, qa), pred in zip(items, preds):
        answers = qa["answers"]
        records.append({"key": s.key, "question": qa["question"], "answers": answers, "prediction": pred,
                        **score_answer(pred, answers), "question_type": question_type(qa),
                        "answer_type": qa.get("answer_type"), "question_id": qa.get("question_id")})
        if qa.get("answer_type"):
            by_answer_type[qa["answer_type"]].append(records[-1]["accuracy"])
    n = len(records)
    out = {"vqa_accuracy": sum(r["accuracy"] for r in records) / n,
           "vqa_exact_match": sum(r["exact_match"] for r in records) / n}
    for t, accs in sorted(by_answer_type.items()):
        out[f"vqa_accuracy_{metric_suffix(t)}"] = sum(accs) / len(accs)
    types = by_question_type(records)
    if len(types) <= MAX_TYPE_METRICS:
        out.update({f"{METRIC_PREFIX}{metric_suffix(t)}": v["accuracy"] for t, v in types.items()})
    return TaskResult(out, records, {"no_question": sum(1 for s in samples if not s.qa)}, n)
