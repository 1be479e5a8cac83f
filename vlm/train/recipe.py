"""What a stage-one run learned: held-out VQA exact match against the majority and text-prior baselines.

    python -m vlm.train.recipe --model runs/stage1/pretrain/model --data runs/stage1/data [--n 300]

Baselines (from the train split): the majority answer, and the "text prior" (each question's most common
training answer, ignoring the image). Accuracy is also reported on the questions the text prior gets wrong,
where only the image can help. The held-out caption loss before/after is in the training summary/MLflow.
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections import Counter, defaultdict
from typing import Any

from vlm.data import format as fmt


def _qa(data_uri: str, split: str):
    """``(raw sample, question, majority answer)`` for every valid QA record of ``split``."""
    for raw in fmt.iter_samples(data_uri, split, decoded=False, rank=0, world_size=1, worker=0, num_workers=1):
        try:
            qa, _ = fmt.parse_qa(fmt.sample_meta(raw).get("qa"))
        except fmt.SampleError:
            continue
        for item in qa:
            yield raw, item.question, item.answer


def vqa_probe(model_uri: str, data_uri: str, split: str = "test", n: int = 300, batch_size: int = 16,
              seed: int = 0) -> dict[str, Any]:
    """Exact match of greedy answers on ``n`` held-out questions (one per image), with baselines."""
    import random

    from vlm.models import load

    prior: dict[str, Counter] = defaultdict(Counter)
    overall: Counter = Counter()
    for _, q, a in _qa(data_uri, "train"):
        prior[q][a] += 1
        overall[a] += 1
    if not overall:
        raise ValueError(f"no train QA pairs under {data_uri}")
    majority = overall.most_common(1)[0][0]
    rng = random.Random(seed)
    items, seen = [], set()
    for raw, q, a in _qa(data_uri, split):
        if raw["__key__"] not in seen and rng.random() < 0.5:
            seen.add(raw["__key__"])
            try:
                items.append((fmt.decode(raw)["image"], q, a))
            except fmt.SampleError:
                continue
        if len(items) >= n:
            break
    model = load(model_uri)
    preds: list[str] = []
    for i in range(0, len(items), batch_size):
        chunk = items[i : i + batch_size]
        preds += model.generate([c[0] for c in chunk], instructions=[c[1] for c in chunk], num_beams=1,
                                max_new_tokens=6)
    norm = lambda s: s.strip().lower().rstrip(".")  # noqa: E731
    correct = [norm(p) == norm(a) for p, (_, _, a) in zip(preds, items)]
    text_prior = [(prior[q].most_common(1)[0][0] if prior[q] else majority) == a for _, q, a in items]
    hard = [c for c, t in zip(correct, text_prior) if not t]
    return {"n": len(items), "exact_match": sum(correct) / len(items),
            "majority_answer": majority, "majority_baseline": sum(a == majority for *_, a in items) / len(items),
            "text_prior_baseline": sum(text_prior) / len(items),
            "exact_match_where_text_prior_fails": (sum(hard) / len(hard)) if hard else None, "n_hard": len(hard),
            "examples": [{"q": q, "answer": a, "pred": p} for (_, q, a), p in itertools.islice(zip(items, preds), 8)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--n", type=int, default=300)
    args = ap.parse_args()
    print(json.dumps(vqa_probe(args.model, args.data, args.split, args.n), indent=2))


if __name__ == "__main__":
    main()
