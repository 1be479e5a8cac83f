"""Two-layer MLP projection with GELU (LLaVA-1.5 style)."""

from __future__ import annotations

import torch
from torch import nn

from vlm.models.adapters.base import Adapter, register_adapter


@register_adapter("mlp")
class MLPAdapter(Adapter):
    def __init__(self, cfg, vision_dim, llm_dim, vocab_size):
        super().__init__(cfg, vision_dim, llm_dim, vocab_size)
        self.net = nn.Sequential(nn.Linear(vision_dim, llm_dim), nn.GELU(), nn.Linear(llm_dim, llm_dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(x)
