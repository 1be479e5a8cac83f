"""Plain, simple-typed functions over the model library (what the CLI and kfp components call)."""

from __future__ import annotations

import time
from typing import Any


def prepare_default_models() -> dict[str, Any]:
    """Dequantise and cache SmolLM2 (once) and check EfficientNet-Lite0 loads; for image builds / CI warm-up."""
    from vlm.models.llm import smollm2_path
    from vlm.models.vision import EfficientNetLite0

    start = time.perf_counter()
    path = smollm2_path()
    EfficientNetLite0()
    return {"smollm2": str(path), "seconds": round(time.perf_counter() - start, 2)}


def describe_model(config_path: str = "", model_uri: str = "") -> dict[str, Any]:
    """Build the model of a pipeline config (or load an artefact) and report its parameter counts."""
    from vlm.models import build_model, load

    if model_uri:
        model = load(model_uri)
    else:
        from vlm.config import load_config

        model = build_model(load_config(config_path).model if config_path else None)
    cfg = model.config
    return {"vision": cfg.vision.type, "llm": cfg.llm.type, "adapter": cfg.adapter.type,
            "experts": list(cfg.experts), **model.parameter_counts()}


def caption_images(images: list[str], model_uri: str = "", config_path: str = "", instruction: str = "",
                   num_beams: int = 0, max_new_tokens: int = 0, question: str = "") -> dict[str, Any]:
    """Caption (or follow ``instruction`` about, or answer ``question`` about) image files/URIs with a saved
    model or an untrained config."""
    from vlm import storage
    from vlm.models import build_model, load

    if model_uri:
        model = load(model_uri)
    else:
        from vlm.config import load_config

        model = build_model(load_config(config_path).model if config_path else None)
    data = [storage.read_bytes(uri) for uri in images]
    start = time.perf_counter()
    kwargs = {"num_beams": num_beams or None, "max_new_tokens": max_new_tokens or None}
    texts = (model.answer(data, [question] * len(data), **kwargs) if question
             else model.generate(data, instruction or None, **kwargs))
    return {"answers" if question else "captions": dict(zip(images, texts)),
            "seconds": round(time.perf_counter() - start, 2)}
