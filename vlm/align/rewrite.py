"""Optional rewrite pass: a local instruct LLM fixes what the rule-based cleaner could not.

MiniGPT-4 asked ChatGPT to fix each description; we ask a local instruct LLM (SmolLM2-135M-Instruct by
default, loaded through ``vlm.models.llm``) with the paper's instruction. Small LLMs sometimes drift, so a
rewrite is accepted only when, after cleaning it again, it is non-empty and keeps at least
``rewrite_min_overlap`` of the input's content words, is at most 1.3x as long, and does not talk about the
text ("sentence", "punctuation"...: an explanation, not a fix); otherwise the cleaned input is kept and the
reason recorded (``rewrite_empty``, ``rewrite_drifted``, ``rewrite_explains``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from vlm.align.clean import ENGLISH_FUNCTION_WORDS, _words, clean_description, word_count
from vlm.align.config import AlignConfig

log = logging.getLogger(__name__)

MAX_LENGTH_RATIO = 1.3  # a fix removes or rewrites text; a much longer answer is an explanation
META_WORDS = frozenset("paragraph sentence sentences punctuation rewrite rewritten corrected correction explanation "
                       "grammar apostrophe".split())
PREAMBLE_PREFIXES = ("here is", "here's", "corrected paragraph", "the corrected", "sure", "fixed paragraph")


@dataclass
class RewriteResult:
    text: str            # what the stage keeps (the rewrite, or the input when the rewrite was refused)
    rewritten: str       # the LLM's raw output
    accepted: bool
    reason: str | None   # why a rewrite was refused


def content_overlap(source: str, rewrite: str) -> float:
    """Share of the source's content words (not function words) that the rewrite keeps."""
    src = {w for w in _words(source) if w not in ENGLISH_FUNCTION_WORDS}
    if not src:
        return 1.0
    return len(src & set(_words(rewrite))) / len(src)


def _strip_preamble(text: str) -> str:
    text = text.strip()
    head, sep, rest = text.partition(":")
    if sep and head.lower().startswith(PREAMBLE_PREFIXES) and len(head) < 60:
        return rest.strip()
    return text


class Rewriter:
    """Loads the instruct LLM once; :meth:`__call__` rewrites a batch of cleaned descriptions."""

    def __init__(self, cfg: AlignConfig, device: str | None = None):
        import torch

        from vlm.models.config import LLMConfig
        from vlm.models.llm import build_llm

        source = cfg.rewrite_model
        if source in (None, "", "smollm2"):
            llm_cfg = LLMConfig(type="smollm2")
        elif source == "tiny":  # randomly initialised, for tests
            llm_cfg = LLMConfig(type="tiny")
        else:
            llm_cfg = LLMConfig(type="hf", source=source)
        self.cfg = cfg
        self.model, self.tokenizer = build_llm(llm_cfg)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device)
        self.tokenizer.padding_side = "left"

    def prompt(self, text: str) -> str:
        message = f"{self.cfg.rewrite_instruction}\n\nParagraph: {text}"
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template([{"role": "user", "content": message}], tokenize=False,
                                                      add_generation_prompt=True)
        return f"{message}\n\nResult: "

    def generate(self, texts: list[str]) -> list[str]:
        import torch

        prompts = [self.prompt(t) for t in texts]
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        with torch.inference_mode():
            out = self.model.generate(**enc, max_new_tokens=self.cfg.rewrite_max_new_tokens, do_sample=False,
                                      num_beams=1, repetition_penalty=1.1,
                                      pad_token_id=self.tokenizer.pad_token_id)
        return self.tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)

    def __call__(self, texts: list[str]) -> list[RewriteResult]:
        return [self.judge(t, raw) for t, raw in zip(texts, self.generate(texts))]

    def judge(self, source: str, raw: str) -> RewriteResult:
        cleaned = clean_description(_strip_preamble(raw)).text
        if cleaned is None:
            return RewriteResult(source, raw, False, "rewrite_empty")
        if content_overlap(source, cleaned) < self.cfg.rewrite_min_overlap:
            return RewriteResult(source, raw, False, "rewrite_drifted")
        if word_count(cleaned) > MAX_LENGTH_RATIO * word_count(source) + 2 or \
                (set(_words(cleaned)) & META_WORDS) - set(_words(source)):
            return RewriteResult(source, raw, False, "rewrite_explains")
        return RewriteResult(cleaned, raw, True, None)
