"""BLIP-2-style Q-Former: learnable queries through blocks of self-attention + cross-attention to the image."""

from __future__ import annotations

import torch
from torch import nn

from vlm.models.adapters.base import Adapter, register_adapter
from vlm.models.layers import Block


@register_adapter("qformer")
class QFormerAdapter(Adapter):
    def __init__(self, cfg, vision_dim, llm_dim, vocab_size):
        super().__init__(cfg, vision_dim, llm_dim, vocab_size)
        self.queries = nn.Parameter(torch.randn(cfg.num_queries, cfg.hidden_size) * 0.02)
        self.blocks = nn.ModuleList(Block(cfg.hidden_size, cfg.num_heads, cross_dim=vision_dim, mlp_ratio=cfg.mlp_ratio)
                                    for _ in range(cfg.num_layers))
        self.norm = nn.LayerNorm(cfg.hidden_size)
        self.proj = nn.Linear(cfg.hidden_size, llm_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        q = self.queries.unsqueeze(0).expand(x.shape[0], -1, -1)
        for block in self.blocks:
            q = block(q, context=x, context_mask=mask)
        return self.proj(self.norm(q))
