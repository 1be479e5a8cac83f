"""Adapter registry: one file per adapter in this package, each decorated with ``@register_adapter(name)``.

An adapter maps visual tokens ``(B, N, vision_dim)`` to LLM input embeddings ``(B, M, llm_dim)``. To add one,
drop a module here that subclasses :class:`Adapter` and add its name to ``AdapterConfig.type``.
"""

from __future__ import annotations

import importlib
import pkgutil

from vlm.models.adapters.base import ADAPTERS, Adapter, build_adapter, register_adapter

for _mod in pkgutil.iter_modules(__path__):
    if _mod.name != "base":
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = ["ADAPTERS", "Adapter", "build_adapter", "register_adapter"]
