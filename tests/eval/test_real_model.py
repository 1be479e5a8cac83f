"""Slow: the default (pretrained EfficientNet-Lite0 + SmolLM2-135M) model through the whole evaluation."""

from __future__ import annotations

import math

import pytest


@pytest.mark.slow
def test_default_model_evaluates_on_shapes(shapes_shards, tmp_path):
    from vlm.eval.config import EvalConfig
    from vlm.eval.runner import evaluate
    from vlm.models import ModelConfig, build_model

    try:
        model = build_model(ModelConfig())
    except (ImportError, FileNotFoundError, OSError) as exc:  # pretrained packages not installed here
        pytest.skip(f"default model unavailable: {exc}")
    cfg = EvalConfig(tasks=["caption", "vqa"], max_samples=2, max_questions=2, max_new_tokens=8, vqa_max_new_tokens=4,
                     meteor=False)
    summary = evaluate("default", shapes_shards, cfg, model=model, track=False, output=str(tmp_path / "out"))
    assert summary.n == {"caption": 2, "vqa": 2}
    # SmolLM2 assigns a finite, better-than-uniform likelihood to real captions even with an untrained adapter
    assert 1 < summary.metrics["caption_perplexity"] < model.tokenizer.vocab_size
    assert all(math.isfinite(v) for v in summary.metrics.values())
