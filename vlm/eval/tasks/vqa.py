"""VQA: short answers generated per question, scored with the official VQAv2 accuracy.

With fewer than 4 human answers (our synthetic sets have one) the leave-one-out rule can never give full
credit, so such questions are scored by normalised exact match against any answer (``scoring: exact``).
"""

from __future__ import annotations

import re
from collections import defaultdict

from vlm.eval import metrics, scoring
from vlm.eval.tasks.base import TaskResult, register_task
from vlm.eval.vqa_normalize import normalize_answer

MIN_ANSWERS_FOR_VQA_SCORE = 4


def _metric_suffix(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "none"


@register_task("vqa")
def vqa_task(model, samples, cfg) -> TaskResult | None:
    items = [(s, qa) for s in samples for qa in s.qa]
    items = items[: cfg.max_questions] if cfg.max_questions else items
    if not items:
        return None
    preds = scoring.generate(model, [s.image for s, _ in items],
                             [cfg.vqa_instruction.replace("{question}", qa["question"]) for _, qa in items],
                             batch_size=cfg.batch_size, num_beams=cfg.num_beams,
                             max_new_tokens=cfg.vqa_max_new_tokens, desc="vqa")
    records, by_type = [], defaultdict(list)
    for (s, qa), pred in zip(items, preds):
        answers = qa["answers"]
        exact = float(normalize_answer(pred) in {normalize_answer(a) for a in answers})
        official = len(answers) >= MIN_ANSWERS_FOR_VQA_SCORE
        acc = metrics.vqa_accuracy(pred, answers) if official else exact
        records.append({"key": s.key, "question": qa["question"], "answers": answers, "prediction": pred,
                        "accuracy": acc, "exact_match": exact, "scoring": "vqa" if official else "exact",
                        "answer_type": qa.get("answer_type"), "question_id": qa.get("question_id")})
        if qa.get("answer_type"):
            by_type[qa["answer_type"]].append(acc)
    n = len(records)
    out = {"vqa_accuracy": sum(r["accuracy"] for r in records) / n,
           "vqa_exact_match": sum(r["exact_match"] for r in records) / n}
    for t, accs in sorted(by_type.items()):
        out[f"vqa_accuracy_{_metric_suffix(t)}"] = sum(accs) / len(accs)
    return TaskResult(out, records, {"no_question": sum(1 for s in samples if not s.qa)}, n)
