"""The adapter base class and registry."""

from __future__ import annotations

import torch
from torch import nn

from vlm.models.config import AdapterConfig

ADAPTERS: dict[str, type[Adapter]] = {}


def register_adapter(name: str):
    def wrap(cls: type[Adapter]) -> type[Adapter]:
        ADAPTERS[name] = cls
        cls.name = name
        return cls

    return wrap


class Adapter(nn.Module):
    """Visual tokens ``(B, N, vision_dim)`` (+ optional key mask ``(B, N)``) -> LLM embeddings ``(B, M, llm_dim)``."""

    name: str = ""

    def __init__(self, cfg: AdapterConfig, vision_dim: int, llm_dim: int, vocab_size: int):
        super().__init__()
        self.cfg = cfg
        self.vision_dim, self.llm_dim = vision_dim, llm_dim

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


def build_adapter(cfg: AdapterConfig, vision_dim: int, llm_dim: int, vocab_size: int) -> Adapter:
    try:
        cls = ADAPTERS[cfg.type]
    except KeyError:
        raise ValueError(f"unknown adapter {cfg.type!r}; known: {sorted(ADAPTERS)}") from None
    return cls(cfg, vision_dim, llm_dim, vocab_size)
