"""MiniGPT-4's adapter: one linear projection per visual token."""

from __future__ import annotations

import torch
from torch import nn

from vlm.models.adapters.base import Adapter, register_adapter


@register_adapter("linear")
class LinearAdapter(Adapter):
    def __init__(self, cfg, vision_dim, llm_dim, vocab_size):
        super().__init__(cfg, vision_dim, llm_dim, vocab_size)
        self.proj = nn.Linear(vision_dim, llm_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.proj(x)
