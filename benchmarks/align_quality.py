"""Compare description quality of two model artefacts (e.g. stage one vs. stage two) on held-out images.

Each model describes the same seeded sample of held-out images with MiniGPT-4's detailed-description prompt
(one turn, no continuation: we measure what the model writes on its own). Printed per model:

- ``repetition``: mean rep-3 (share of word 3-grams that repeat an earlier one); ``repetitive``: share above
  ``--max-repetition`` (the curation filter's threshold)
- ``repeats``: share of descriptions in which the cleaner finds a repeated sentence, a repeated clause or a
  word loop (rep-3 also counts the template words of a list, "a red square at the top, a blue ...")
- ``cut_off``: share of descriptions that stop mid-sentence (no final ``.!?`` or a dangling last word)
- ``edited``: share the deterministic cleaner had to change; ``rejected``: share it rejected outright
- ``words``: mean length in words

The change of each of the first four figures (after - before) comes with a paired bootstrap 95% interval over
the images: a change whose interval excludes 0 is outside the noise of the sample. ``--after`` takes several
models (candidate recipes) and ``--reuse`` takes an earlier ``--output`` so a model already described on the
same images with the same settings is not described again.

Usage::

    python benchmarks/align_quality.py --before runs/quickstart/pretrain/model \\
        --after runs/quickstart/finetune/model --data runs/quickstart/data --split test --num-images 64
"""

from __future__ import annotations

import argparse
import json
import time
from statistics import mean

from vlm.align.clean import clean_description, is_cut_off, repetition_rate, word_count
from vlm.align.config import DESCRIBE_INSTRUCTION
from vlm.align.samples import read_samples, select_keys


def describe_all(model_uri: str, images: list, args) -> tuple[list[str], float]:
    import torch

    from vlm.models import load

    model = load(model_uri)
    if torch.cuda.is_available():
        model.to("cuda")
    model.eval()
    prompt = model.format_prompt(args.instruction)
    texts: list[str] = []
    t0 = time.perf_counter()
    for i in range(0, len(images), args.batch_size):
        batch = images[i : i + args.batch_size]
        texts += model.generate(batch, prompts=[prompt] * len(batch), num_beams=args.num_beams,
                                max_new_tokens=args.max_new_tokens, repetition_penalty=1.0)
    return texts, time.perf_counter() - t0


REPEAT_REASONS = {"repeated_sentence", "repeated_clause", "word_loop"}


PAIRED = ("repetition", "repetitive", "repeats", "cut_off")


def per_image(texts: list[str], max_repetition: float) -> dict[str, list[float]]:
    """Each figure for each description (the report's figures are their means)."""
    cleaned = [clean_description(t) for t in texts]
    reps = [repetition_rate(t) for t in texts]
    return {
        "repetition": reps,
        "repetitive": [float(r > max_repetition) for r in reps],
        "repeats": [float(bool(REPEAT_REASONS & set(c.reasons))) for c in cleaned],
        "cut_off": [float(is_cut_off(t)) for t in texts],
        "edited": [float(bool(c.changes)) for c in cleaned],
        "rejected": [float(c.rejected) for c in cleaned],
        "words": [float(word_count(t)) for t in texts],
    }


def quality(figures: dict[str, list[float]]) -> dict[str, float]:
    """The report's figures: means of ``per_image``."""
    return {"n": len(figures["words"]), **{k: round(mean(v), 2 if k == "words" else 4) for k, v in figures.items()}}


def paired_change(before: list[float], after: list[float], rounds: int = 2000, seed: int = 0) -> dict[str, float]:
    """Mean change (after - before) over the same images with a paired bootstrap 95% interval."""
    import numpy as np

    diff = np.asarray(after, dtype=float) - np.asarray(before, dtype=float)
    idx = np.random.default_rng(seed).integers(0, len(diff), size=(rounds, len(diff)))
    low, high = np.percentile(diff[idx].mean(axis=1), [2.5, 97.5])
    return {"change": round(float(diff.mean()), 4), "low": round(float(low), 4), "high": round(float(high), 4)}


def reusable(report_path: str | None, keys: list[str], settings: dict) -> dict[str, list[str]]:
    """Descriptions by model URI from an earlier report made on the same images with the same settings."""
    try:
        with open(report_path or "") as fh:
            old = json.load(fh)
    except FileNotFoundError:
        return {}
    if old.get("settings") != settings:
        return {}
    return {m["uri"]: list(m["descriptions"].values()) for m in old.get("models", {}).values()
            if list(m.get("descriptions", {})) == keys}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", required=True, help="model artefact URI (stage one)")
    p.add_argument("--after", required=True, nargs="+", help="model artefact URI(s) (stage two; several to compare)")
    p.add_argument("--data", required=True, help="data shards URI")
    p.add_argument("--split", default="test", help="held-out split (default test)")
    p.add_argument("--num-images", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--num-beams", type=int, default=1)
    p.add_argument("--max-new-tokens", type=int, default=120)
    p.add_argument("--max-repetition", type=float, default=0.3)
    p.add_argument("--instruction", default=DESCRIBE_INSTRUCTION)
    p.add_argument("--output", help="also write the figures and every description as JSON here")
    p.add_argument("--reuse", help="an earlier --output: models already described there are not described again")
    args = p.parse_args()

    samples = read_samples(select_keys(args.data, args.num_images, args.seed, args.split))
    images = [s.image() for s in samples]
    keys = [s.key for s in samples]
    settings = {"data": args.data, "split": args.split, "seed": args.seed, "num_beams": args.num_beams,
                "max_new_tokens": args.max_new_tokens, "instruction": args.instruction}
    report: dict = {"images": len(images), "split": args.split, "settings": settings, "models": {}}
    names = ["after"] if len(args.after) == 1 else [f"after{i + 1}" for i in range(len(args.after))]
    described = reusable(args.reuse, keys, settings)
    per: dict[str, dict[str, list[float]]] = {}
    for name, uri in zip(["before", *names], [args.before, *args.after]):
        texts, seconds = described.get(uri), 0.0
        if texts is None:
            texts, seconds = describe_all(uri, images, args)
        per[name] = per_image(texts, args.max_repetition)
        report["models"][name] = {"uri": uri, **quality(per[name]), "seconds": round(seconds, 1),
                                  "descriptions": dict(zip(keys, texts))}
    cols = ["repetition", "repetitive", "repeats", "cut_off", "edited", "rejected", "words", "seconds"]
    print(f"{len(images)} held-out images ({args.split}), prompt: {args.instruction!r}")
    print(f"{'model':<8}" + "".join(f"{c:>12}" for c in cols))
    for name, m in report["models"].items():
        print(f"{name:<8}" + "".join(f"{m[c]:>12}" for c in cols))
    for name in names:
        changes = {k: paired_change(per["before"][k], per[name][k]) for k in PAIRED}
        report["models"][name]["change"] = changes
        print(f"change {name} - before (paired bootstrap 95%): " + ", ".join(
            f"{k} {c['change']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}]" for k, c in changes.items()))
    if args.output:
        with open(args.output, "w") as fh:
            json.dump(report, fh, indent=2)


if __name__ == "__main__":
    main()
