"""Transformer building blocks shared by adapters, the experts resampler and the mPLUG fusion.

All attention goes through ``torch.nn.functional.scaled_dot_product_attention`` (flash/memory-efficient
kernels on GPU). Masks are boolean ``(B, Lk)`` key masks, True = attend.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _key_mask(mask: torch.Tensor | None, q_len: int) -> torch.Tensor | None:
    if mask is None:
        return None
    return mask[:, None, None, :].expand(-1, 1, q_len, -1)


class Attention(nn.Module):
    """Multi-head attention (self or cross) over SDPA."""

    def __init__(self, dim: int, num_heads: int, kv_dim: int | None = None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(kv_dim or dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                causal: bool = False) -> torch.Tensor:
        b, n, d = x.shape
        context = x if context is None else context
        h = self.num_heads
        q = self.q(x).view(b, n, h, d // h).transpose(1, 2)
        k, v = self.kv(context).view(b, context.shape[1], 2, h, d // h).permute(2, 0, 3, 1, 4)
        attn_mask = _key_mask(mask, n)
        if causal:
            causal_mask = torch.ones(n, context.shape[1], dtype=torch.bool, device=x.device).tril()
            attn_mask = causal_mask if attn_mask is None else attn_mask & causal_mask
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.out(out.transpose(1, 2).reshape(b, n, d))


class FeedForward(nn.Sequential):
    def __init__(self, dim: int, ratio: float = 4.0):
        hidden = int(dim * ratio)
        super().__init__(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class Block(nn.Module):
    """Pre-norm transformer block: optional self-attention, optional cross-attention, feed-forward."""

    def __init__(self, dim: int, num_heads: int, *, self_attn: bool = True, cross_dim: int | None = None,
                 mlp_ratio: float = 4.0):
        super().__init__()
        self.self_norm = nn.LayerNorm(dim) if self_attn else None
        self.self_attn = Attention(dim, num_heads) if self_attn else None
        self.cross_norm = nn.LayerNorm(dim) if cross_dim else None
        self.ctx_norm = nn.LayerNorm(cross_dim) if cross_dim else None
        self.cross_attn = Attention(dim, num_heads, kv_dim=cross_dim) if cross_dim else None
        self.ff = FeedForward(dim, mlp_ratio)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
        if self.self_attn is not None:
            x = x + self.self_attn(self.self_norm(x), mask=mask, causal=causal)
        if self.cross_attn is not None:
            if context is None:
                raise ValueError("this block cross-attends: pass context")
            x = x + self.cross_attn(self.cross_norm(x), self.ctx_norm(context), mask=context_mask)
        return x + self.ff(x)


class PerceiverLayer(nn.Module):
    """Flamingo's Perceiver Resampler layer: latents attend to [inputs; latents], then feed-forward."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm_x = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.ff = FeedForward(dim, mlp_ratio)

    def forward(self, latents: torch.Tensor, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        lat = self.norm_latents(latents)
        context = torch.cat([self.norm_x(x), lat], dim=1)
        if mask is not None:
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], lat.shape[1])], dim=1)
        latents = latents + self.attn(lat, context, mask=mask)
        return latents + self.ff(latents)


class PerceiverResampler(nn.Module):
    """Learnable queries cross-attending to a variable number of input tokens -> a fixed number of tokens."""

    def __init__(self, in_dim: int, dim: int, num_queries: int, num_layers: int, num_heads: int,
                 mlp_ratio: float = 4.0):
        super().__init__()
        self.proj = nn.Linear(in_dim, dim)
        self.latents = nn.Parameter(torch.randn(num_queries, dim) * 0.02)
        self.layers = nn.ModuleList(PerceiverLayer(dim, num_heads, mlp_ratio) for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.proj(x)
        latents = self.latents.unsqueeze(0).expand(x.shape[0], -1, -1)
        for layer in self.layers:
            latents = layer(latents, x, mask)
        return self.norm(latents)


class Bottleneck(nn.Module):
    """Prismer's residual adaptor: x + up(GELU(down(LN(x)))); up is zero-initialised so it starts as identity."""

    def __init__(self, dim: int, reduction: int = 4):
        super().__init__()
        width = max(4, dim // reduction)
        self.norm = nn.LayerNorm(dim)
        self.down = nn.Linear(dim, width)
        self.up = nn.Linear(width, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:  # channels-first feature map (B, C, H, W)
            return self.forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return x + self.up(F.gelu(self.down(self.norm(x))))
