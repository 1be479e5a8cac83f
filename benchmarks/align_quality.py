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


def quality(texts: list[str], max_repetition: float) -> dict[str, float]:
    cleaned = [clean_description(t) for t in texts]
    reps = [repetition_rate(t) for t in texts]
    return {
        "n": len(texts),
        "repetition": round(mean(reps), 4),
        "repetitive": round(mean(r > max_repetition for r in reps), 4),
        "repeats": round(mean(bool(REPEAT_REASONS & set(c.reasons)) for c in cleaned), 4),
        "cut_off": round(mean(is_cut_off(t) for t in texts), 4),
        "edited": round(mean(bool(c.changes) for c in cleaned), 4),
        "rejected": round(mean(c.rejected for c in cleaned), 4),
        "words": round(mean(word_count(t) for t in texts), 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", required=True, help="model artefact URI (stage one)")
    p.add_argument("--after", required=True, help="model artefact URI (stage two)")
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
    args = p.parse_args()

    samples = read_samples(select_keys(args.data, args.num_images, args.seed, args.split))
    images = [s.image() for s in samples]
    report: dict = {"images": len(images), "split": args.split, "models": {}}
    for name, uri in (("before", args.before), ("after", args.after)):
        texts, seconds = describe_all(uri, images, args)
        report["models"][name] = {"uri": uri, **quality(texts, args.max_repetition), "seconds": round(seconds, 1),
                                  "descriptions": dict(zip((s.key for s in samples), texts))}
    cols = ["repetition", "repetitive", "repeats", "cut_off", "edited", "rejected", "words", "seconds"]
    print(f"{len(images)} held-out images ({args.split}), prompt: {args.instruction!r}")
    print(f"{'model':<8}" + "".join(f"{c:>12}" for c in cols))
    for name, m in report["models"].items():
        print(f"{name:<8}" + "".join(f"{m[c]:>12}" for c in cols))
    b, a = report["models"]["before"], report["models"]["after"]
    print(f"change: repetition {a['repetition'] - b['repetition']:+.4f}, repeats {a['repeats'] - b['repeats']:+.4f}, "
          f"cut-off {a['cut_off'] - b['cut_off']:+.4f}")
    if args.output:
        with open(args.output, "w") as fh:
            json.dump(report, fh, indent=2)


if __name__ == "__main__":
    main()
