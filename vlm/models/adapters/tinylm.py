"""PaLM2-VAdapter: a 1-layer perceiver resampler feeding a small causal transformer LM used as the adapter.

Progressive training (``adapter.stage``):

1. ``decoder``: the tiny LM is trained as a captioner on its own (resampled image tokens as a prefix, its own
   token embeddings and tied LM head over the LLM's vocabulary): :meth:`TinyLMAdapter.decoder_loss`.
2. ``adapter``: the tiny LM's outputs at the visual positions go through an FC layer into the frozen LLM.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vlm.models.adapters.base import Adapter, register_adapter
from vlm.models.layers import Block, PerceiverResampler


@register_adapter("tinylm")
class TinyLMAdapter(Adapter):
    def __init__(self, cfg, vision_dim, llm_dim, vocab_size):
        super().__init__(cfg, vision_dim, llm_dim, vocab_size)
        d = cfg.hidden_size
        self.resampler = PerceiverResampler(vision_dim, d, cfg.num_queries, 1, cfg.num_heads, cfg.mlp_ratio)
        self.embed = nn.Embedding(vocab_size, d)
        self.pos = nn.Parameter(torch.randn(1024, d) * 0.02)
        self.blocks = nn.ModuleList(Block(d, cfg.num_heads, mlp_ratio=cfg.mlp_ratio) for _ in range(cfg.num_layers))
        self.norm = nn.LayerNorm(d)
        self.proj = nn.Linear(d, llm_dim)  # FC for dimension matching into the LLM

    def _lm(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if h.shape[1] > self.pos.shape[0]:
            raise ValueError(f"tinylm sequence of {h.shape[1]} tokens exceeds its {self.pos.shape[0]} positions")
        h = h + self.pos[: h.shape[1]]
        for block in self.blocks:
            h = block(h, mask=mask, causal=True)
        return self.norm(h)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.proj(self._lm(self.resampler(x, mask)))

    def decoder_loss(self, x: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 1: caption loss of the tiny LM itself. ``input_ids`` (B, T) right-padded caption tokens."""
        prefix = self.resampler(x, mask)
        h = torch.cat([prefix, self.embed(input_ids)], dim=1)
        key_mask = torch.cat([attention_mask.new_ones(prefix.shape[:2]), attention_mask], dim=1).bool()
        h = self._lm(h, key_mask)
        logits = h[:, prefix.shape[1] - 1 : -1] @ self.embed.weight.T  # position t predicts caption token t
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)
        return loss, logits
