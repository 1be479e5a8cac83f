"""What a stage-one run learned: held-out VQA exact match, per question type, against a text-only lookup.

    python -m vlm.train.recipe --model runs/stage1/pretrain/model --data runs/stage1/data [--images 150]

Every question of ``images`` held-out images (the ``test`` split: never trained on) is answered greedily.
The text-only lookup answers each question with its most common training answer, ignoring the image;
``image_needed`` is the accuracy on the questions that lookup gets wrong, where only the image can help.
Training runs the same probe after its last step (``train.probe_images``) and logs it as ``probe/*``.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from typing import Any

from vlm.data import format as fmt


def _qa(data_uri: str, split: str, decoded: bool = False):
    """``(sample, [(question, majority answer, all answers), ...])`` of every sample of ``split`` with valid QA."""
    for raw in fmt.iter_samples(data_uri, split, decoded=False, rank=0, world_size=1, worker=0, num_workers=1):
        try:
            qa, _ = fmt.parse_qa(fmt.sample_meta(raw).get("qa"))
            sample = fmt.decode(raw) if decoded else raw
        except fmt.SampleError:
            continue
        if qa:
            yield sample, [(item.question, item.answer, item.answers) for item in qa]


def question_type(question: str, answer: str) -> str:
    """A coarse type from the wording: yes_no, count, position, color, shape or other."""
    q = question.lower()
    if answer.lower() in ("yes", "no"):
        return "yes_no"
    for kind, words in (("count", ("how many",)), ("position", ("where",)), ("color", ("color", "colour")),
                        ("shape", ("shape",))):
        if any(w in q for w in words):
            return kind
    return "other"


def _norm(text: str) -> str:
    return text.strip().lower().rstrip(".").strip()


class TextLookup:
    """Each question's most common training answer (the image ignored); the overall majority for new ones."""

    def __init__(self, data_uri: str, split: str = "train"):
        self.answers: dict[str, Counter] = defaultdict(Counter)
        overall: Counter = Counter()
        for _, qa in _qa(data_uri, split):
            for q, a, _ in qa:
                self.answers[_norm(q)][_norm(a)] += 1
                overall[_norm(a)] += 1
        if not overall:
            raise ValueError(f"no {split} QA pairs under {data_uri}")
        self.majority = overall.most_common(1)[0][0]

    def __call__(self, question: str) -> str:
        seen = self.answers.get(_norm(question))
        return seen.most_common(1)[0][0] if seen else self.majority


def probe(model, data_uri: str, split: str = "test", images: int = 150, batch_size: int = 32,
          max_new_tokens: int = 6) -> dict[str, Any]:
    """Greedy exact match (any reference answer) on every question of the first ``images`` samples of ``split`` (a held-out split).

    Returns ``metrics`` (``probe/overall``, ``probe/image_needed``, ``probe/<type>``, ``probe/lookup_*``,
    counts) and a few ``examples``."""
    if split == "train":
        raise ValueError("the probe must run on a held-out split, not 'train'")
    lookup = TextLookup(data_uri)
    items: list[tuple[Any, str, str, tuple[str, ...]]] = []
    n_images = 0
    for sample, qa in _qa(data_uri, split, decoded=True):
        if n_images >= images:
            break
        n_images += 1
        items += [(sample["image"], q, a, answers) for q, a, answers in qa]
    if not items:
        raise ValueError(f"no {split} QA pairs under {data_uri}: nothing to probe")
    from vlm.eval.scoring import answer

    preds = answer(model, [c[0] for c in items], [c[1] for c in items], batch_size=batch_size, num_beams=1,
                   max_new_tokens=max_new_tokens, desc="probe")
    rows = [{"type": question_type(q, a), "correct": _norm(p) in {_norm(x) for x in answers},
             "lookup": lookup(q) in {_norm(x) for x in answers}, "q": q, "answer": a, "pred": p}
            for (_, q, a, answers), p in zip(items, preds)]

    def acc(sel: list[dict], key: str = "correct") -> float:
        return sum(r[key] for r in sel) / len(sel) if sel else float("nan")

    hard = [r for r in rows if not r["lookup"]]
    metrics = {"probe/overall": acc(rows), "probe/image_needed": acc(hard), "probe/lookup_overall": acc(rows, "lookup"),
               "probe/n_images": n_images, "probe/n_questions": len(rows), "probe/n_image_needed": len(hard)}
    for kind in sorted({r["type"] for r in rows}):
        sel = [r for r in rows if r["type"] == kind]
        metrics[f"probe/{kind}"] = acc(sel)
        metrics[f"probe/lookup_{kind}"] = acc(sel, "lookup")
        metrics[f"probe/image_needed_{kind}"] = acc([r for r in sel if not r["lookup"]])
    wrong = [r for r in rows if not r["correct"]][:5]
    return {"metrics": metrics, "examples": [{k: r[k] for k in ("q", "answer", "pred")} for r in rows[:5] + wrong]}


def table(metrics: dict[str, float]) -> str:
    """The probe as a small text table: one line per question type, model vs text-only lookup."""
    kinds = sorted(k.removeprefix("probe/lookup_") for k in metrics
                   if k.startswith("probe/lookup_") and k != "probe/lookup_overall")
    lines = [f"{'questions':<14}{'model':>8}{'lookup':>8}{'image-needed':>14}"]
    lines.append(f"{'overall':<14}{metrics['probe/overall']:>8.3f}{metrics['probe/lookup_overall']:>8.3f}"
                 f"{metrics['probe/image_needed']:>14.3f}")
    for kind in kinds:
        lines.append(f"{kind:<14}{metrics[f'probe/{kind}']:>8.3f}{metrics[f'probe/lookup_{kind}']:>8.3f}"
                     f"{metrics[f'probe/image_needed_{kind}']:>14.3f}")
    lines.append(f"{int(metrics['probe/n_questions'])} questions of {int(metrics['probe/n_images'])} held-out images, "
                 f"{int(metrics['probe/n_image_needed'])} that the text-only lookup gets wrong")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model artefact URI")
    ap.add_argument("--data", required=True, help="dataset URI (shards)")
    ap.add_argument("--split", default="test", help="held-out split")
    ap.add_argument("--images", type=int, default=150, help="held-out images; every question of each is asked")
    ap.add_argument("--json", action="store_true", help="print the metrics as JSON instead of the table")
    args = ap.parse_args()
    from vlm.models import load

    result = probe(load(args.model), args.data, args.split, args.images)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(table(result["metrics"]))
    for ex in result["examples"]:
        print(f"  {ex['q']!r}: {ex['pred']!r} (answer {ex['answer']!r})")


if __name__ == "__main__":
    main()
