"""Vision-language models: frozen vision encoder + trainable adapter + frozen causal LLM.

``build_model(cfg)`` assembles one from a :class:`ModelConfig`; ``load(uri)`` restores a saved artefact.
The exports load on first use (PEP 562), so ``vlm.models.config`` (and ``vlm.config``) import without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"ModelConfig": "vlm.models.config", "VisionLanguageModel": "vlm.models.model",
            "VLMOutput": "vlm.models.model", "build_model": "vlm.models.model", "load": "vlm.models.artifact",
            "load_config": "vlm.models.artifact"}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
