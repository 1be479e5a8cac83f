"""Detailed descriptions from the stage-one model, continued when short (MiniGPT-4 stage two).

Each image is prompted with ``###Human: <Img><ImageHere></Img> <instruction> ###Assistant: ``. While an
answer is shorter than ``min_answer_tokens`` tokens (at most ``max_continuations`` times) the dialogue is
extended with ``###Human: Continue ###Assistant: `` and the model's next answer appended. Generation runs in
batches; each continuation round batches only the images that still need one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from vlm.align.config import AlignConfig

log = logging.getLogger(__name__)

TURN_MARK = "###"


@dataclass
class Description:
    pieces: list[str] = field(default_factory=list)   # each answer as generated (first, then continuations)
    prompt: str = ""                                   # the last prompt sent (the whole dialogue)
    tokens: int = 0                                    # tokens of the joined answer

    @property
    def continued(self) -> int:
        return max(0, len(self.pieces) - 1)

    @property
    def text(self) -> str:
        """The raw description: every answer, earlier ones cut at a new turn they started."""
        parts = [_answer_part(p) for p in self.pieces[:-1]] + self.pieces[-1:]
        return " ".join(p.strip() for p in parts if p.strip())


def _answer_part(piece: str) -> str:
    return piece.split(TURN_MARK, 1)[0].strip()


def count_tokens(tokenizer: Any, text: str) -> int:
    if not text:
        return 0
    try:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])
    except TypeError:
        return len(tokenizer.encode(text))


def continuation_prompt(prompt: str, answer: str, continue_prompt: str) -> str:
    """The dialogue so far plus the continue turn: ``<prompt><answer> ###Human: Continue ###Assistant: ``."""
    return f"{prompt}{_answer_part(answer)} {continue_prompt}"


def describe(model: Any, images: list, cfg: AlignConfig) -> list[Description]:
    """Describe each image in detail, continuing short answers; one batch of ``images`` (PIL RGB)."""
    first = model.format_prompt(cfg.instruction)
    descs = [Description(prompt=first) for _ in images]
    gen_kwargs = dict(num_beams=cfg.num_beams, max_new_tokens=cfg.max_new_tokens,
                      repetition_penalty=cfg.repetition_penalty)
    todo = list(range(len(images)))
    for round_ in range(cfg.max_continuations + 1):
        if not todo:
            break
        outs = model.generate([images[i] for i in todo], prompts=[descs[i].prompt for i in todo], **gen_kwargs)
        if len(outs) != len(todo):
            raise RuntimeError(f"model.generate returned {len(outs)} texts for {len(todo)} images")
        still: list[int] = []
        for i, out in zip(todo, outs):
            d = descs[i]
            d.pieces.append(out)
            d.tokens = count_tokens(model.tokenizer, d.text)
            # continue only when short, when the model said something new, and when rounds remain
            if d.tokens < cfg.min_answer_tokens and _answer_part(out) and round_ < cfg.max_continuations:
                d.prompt = continuation_prompt(d.prompt, out, cfg.continue_prompt)
                still.append(i)
        todo = still
    return descs
