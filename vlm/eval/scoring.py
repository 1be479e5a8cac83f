"""Model-side scoring helpers: batched generation and per-example answer log-likelihood."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from vlm.progress import Progress

log = logging.getLogger(__name__)


def batched(items: Sequence[Any], size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


def generate(model, images: Sequence[Any], instructions: Sequence[str], *, batch_size: int, num_beams: int,
             max_new_tokens: int, desc: str = "generate") -> list[str]:
    """``model.generate`` over batches, with a progress bar."""
    out: list[str] = []
    pairs = list(zip(images, instructions))
    with Progress(total=len(pairs), desc=desc, unit="img") as bar:
        for chunk in batched(pairs, batch_size):
            ims, ins = zip(*chunk)
            out.extend(model.generate(list(ims), instructions=list(ins), num_beams=num_beams,
                                      max_new_tokens=max_new_tokens))
            bar.update(len(chunk))
    return out


def answer(model, images: Sequence[Any], questions: Sequence[str], *, batch_size: int, num_beams: int,
           max_new_tokens: int, desc: str = "answer") -> list[str]:
    """``model.answer`` over batches, with progress bars. A ``describe_first`` model first describes each
    distinct image (the same object asked several questions) once, in batches of its own."""
    images, questions = list(images), list(questions)
    descriptions = None
    if getattr(getattr(model, "config", None), "describe_first", False):
        from vlm.models.model import distinct_images

        rows, which = distinct_images(images)
        written: list[str] = []
        with Progress(total=len(rows), desc=f"{desc}: describe", unit="img") as bar:
            for chunk in batched(rows, batch_size):
                written.extend(model.describe([images[i] for i in chunk], num_beams=num_beams))
                bar.update(len(chunk))
        descriptions = [written[j] for j in which]
    out: list[str] = []
    with Progress(total=len(images), desc=desc, unit="question") as bar:
        for start in range(0, len(images), batch_size):
            rows = slice(start, start + batch_size)
            out.extend(model.answer(images[rows], questions[rows], num_beams=num_beams, max_new_tokens=max_new_tokens,
                                    descriptions=descriptions[rows] if descriptions is not None else None))
            bar.update(len(images[rows]))
    return out


def _row_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token NLL and token count per row (labels ``-100`` ignored)."""
    lp = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), labels[:, 1:], ignore_index=-100, reduction="none")
    mask = labels[:, 1:] != -100
    return (lp * mask).sum(1), mask.sum(1)


@torch.no_grad()
def answer_nll(model, examples: Sequence[dict[str, Any]], batch_size: int, desc: str = "score"
               ) -> list[tuple[float, int]]:
    """``(summed NLL, answer tokens)`` of each example's ``answer`` given its image and instruction.

    Uses ``model.collate`` + ``model(**batch)``; the visual tokens spliced into the sequence (logits longer
    than the text) get label ``-100`` at ``image_positions``. Falls back to one example at a time
    (``out.loss`` x tokens) for models whose logits are not aligned that way.
    """
    was_training = model.training
    model.train(False)
    out: list[tuple[float, int]] = []
    try:
        with tqdm(total=len(examples), desc=desc, unit="ex", leave=False) as bar:
            for chunk in batched(list(examples), batch_size):
                batch = model.collate(chunk)
                res = model(**batch)
                labels = batch["labels"].to(res.logits.device)
                extra = res.logits.shape[1] - labels.shape[1]
                if extra >= 0 and "image_positions" in batch:
                    pos = batch["image_positions"].tolist()
                    full = torch.stack([torch.cat([labels[i, :p], labels.new_full((extra,), -100), labels[i, p:]])
                                        for i, p in enumerate(pos)])
                    nll, n = _row_nll(res.logits, full)
                    out.extend((float(a), int(b)) for a, b in zip(nll, n))
                else:
                    for ex in chunk:
                        b = model.collate([ex])
                        r = model(**b)
                        n = int((b["labels"][:, 1:] != -100).sum())
                        out.append((float(r.loss) * n, n))
                bar.update(len(chunk))
    finally:
        model.train(was_training)
    return out
