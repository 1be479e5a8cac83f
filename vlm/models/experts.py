"""Prismer's experts input: one conv stem per expert label map, then an experts resampler.

Each expert's label map (uint8 ``HxW``, resized to the image size) goes through its own stem of five 3x3
convolutions (the first four with stride 2), is pooled to ``grid x grid`` tokens and tagged with a learned
expert embedding. Learnable latents cross-attend to all present experts' tokens (plus a learned null token,
so a sample with no expert at all still works) and give ``num_tokens`` tokens in the vision width, which
are appended to the RGB tokens before the adapter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from vlm.models.config import ExpertsInputConfig
from vlm.models.layers import PerceiverResampler


class ExpertStem(nn.Module):
    """Five 3x3 conv layers: (B, 1, S, S) -> (B, grid*grid, channels)."""

    def __init__(self, channels: int, grid: int):
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 1
        for i in range(5):
            layers += [nn.Conv2d(in_ch, channels, 3, stride=2 if i < 4 else 1, padding=1),
                       nn.GroupNorm(min(8, channels), channels), nn.GELU()]
            in_ch = channels
        self.convs = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.convs(x)).flatten(2).transpose(1, 2)


class ExpertsInput(nn.Module):
    def __init__(self, names: Sequence[str], cfg: ExpertsInputConfig, out_dim: int):
        super().__init__()
        self.names = list(names)
        c = cfg.stem_channels
        self.stems = nn.ModuleDict({n: ExpertStem(c, cfg.grid) for n in self.names})
        self.expert_embed = nn.Parameter(torch.randn(len(self.names), c) * 0.02)
        self.null = nn.Parameter(torch.zeros(1, 1, c))
        heads = cfg.num_heads if c % cfg.num_heads == 0 else 1
        self.resampler = PerceiverResampler(c, c, cfg.num_tokens, cfg.num_layers, heads)
        self.proj = nn.Linear(c, out_dim)

    def forward(self, maps: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """``maps`` (B, E, S, S) uint8 in config order, ``present`` (B, E) bool -> (B, num_tokens, out_dim)."""
        b = maps.shape[0]
        x = maps.float().div(255.0).to(self.null.dtype)
        tokens, masks = [], []
        for i, name in enumerate(self.names):
            t = self.stems[name](x[:, i : i + 1]) + self.expert_embed[i]
            tokens.append(t)
            masks.append(present[:, i : i + 1].expand(-1, t.shape[1]))
        tokens.append(self.null.expand(b, -1, -1))
        masks.append(present.new_ones(b, 1))
        return self.proj(self.resampler(torch.cat(tokens, 1), torch.cat(masks, 1).bool()))


def collate_experts(names: Sequence[str], per_example: Sequence[Mapping[str, np.ndarray] | None],
                    size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack per-example expert maps (any subset present) -> ``(B, E, S, S)`` uint8 and ``(B, E)`` bool."""
    b, e = len(per_example), len(names)
    maps = torch.zeros(b, e, size, size, dtype=torch.uint8)
    present = torch.zeros(b, e, dtype=torch.bool)
    for i, experts in enumerate(per_example):
        for j, name in enumerate(names):
            arr = (experts or {}).get(name)
            if arr is None:
                continue
            arr = np.asarray(arr)
            if arr.ndim == 3 and arr.shape[-1] == 1:
                arr = arr[..., 0]
            if arr.ndim != 2:
                raise ValueError(f"expert {name!r} map must be HxW, got shape {arr.shape}")
            if arr.dtype != np.uint8:
                raise ValueError(f"expert {name!r} map must be uint8, got {arr.dtype}")
            if arr.shape != (size, size):
                arr = np.asarray(Image.fromarray(arr).resize((size, size), Image.NEAREST))
            maps[i, j] = torch.from_numpy(arr.copy())
            present[i, j] = True
    return maps, present
