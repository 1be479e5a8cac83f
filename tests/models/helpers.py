"""Tiny configs and images shared by the model-library tests."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

ADAPTERS = ["linear", "mlp", "perceiver", "qformer", "tinylm"]


def tiny_config(adapter_type: str = "linear", **overrides) -> dict:
    cfg = {"vision": {"type": "tiny"}, "llm": {"type": "tiny"},
           "adapter": {"type": adapter_type, "hidden_size": 32, "num_heads": 4, "num_queries": 4, "num_layers": 1},
           "generation": {"num_beams": 3, "max_new_tokens": 6}, "max_length": 96}
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def make_images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (24 + 8 * i, 40, 3), dtype=np.uint8)) for i in range(n)]


def train_steps(model, batch, steps: int, lr: float = 3e-3) -> list[float]:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    return losses
