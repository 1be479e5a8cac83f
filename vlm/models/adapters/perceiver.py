"""Perceiver Resampler (Flamingo): learnable queries cross-attend to the visual tokens -> num_queries tokens."""

from __future__ import annotations

import torch
from torch import nn

from vlm.models.adapters.base import Adapter, register_adapter
from vlm.models.layers import PerceiverResampler


@register_adapter("perceiver")
class PerceiverAdapter(Adapter):
    def __init__(self, cfg, vision_dim, llm_dim, vocab_size):
        super().__init__(cfg, vision_dim, llm_dim, vocab_size)
        self.resampler = PerceiverResampler(vision_dim, cfg.hidden_size, cfg.num_queries, cfg.num_layers,
                                            cfg.num_heads, cfg.mlp_ratio)
        self.proj = nn.Linear(cfg.hidden_size, llm_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.proj(self.resampler(x, mask))
