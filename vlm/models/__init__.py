"""Vision-language models: frozen vision encoder + trainable adapter + frozen causal LLM.

``build_model(cfg)`` assembles one from a :class:`ModelConfig`; ``load(uri)`` restores a saved artefact.
"""

from __future__ import annotations

from vlm.models.artifact import load, load_config
from vlm.models.config import ModelConfig
from vlm.models.model import VisionLanguageModel, VLMOutput, build_model

__all__ = ["ModelConfig", "VisionLanguageModel", "VLMOutput", "build_model", "load", "load_config"]
