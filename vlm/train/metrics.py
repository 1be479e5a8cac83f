"""Training figures: evaluation loss per task, FLOPs per token, peak FLOPs and memory."""

from __future__ import annotations

import math
import os
import resource
from typing import Any

import torch

from vlm.train import dist
from vlm.train.batches import MODEL_KEYS, to_device


PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "L4": 121e12}


def peak_flops(device: torch.device) -> float | None:
    if os.environ.get("VLM_PEAK_FLOPS"):
        return float(os.environ["VLM_PEAK_FLOPS"])
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def flops_per_token(counts: dict[str, int]) -> float:
    """Frozen weights: forward + activation-gradient backward (4N); trainable: forward + full backward (6N)."""
    return 6.0 * counts.get("trainable", 0) + 4.0 * counts.get("frozen", 0)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@torch.no_grad()
def evaluate(strategy, examples: list[dict[str, Any]], batch_size: int, info: dist.DistInfo) -> dict[str, float]:
    """Mean loss per task on a fixed example list, split across ranks (every rank runs as many batches)."""
    if not examples:
        return {}
    strategy.train(False)
    collate = strategy.model.collate
    out: dict[str, float] = {}
    for task in sorted({e["task"] for e in examples}):
        items = [e for e in examples if e["task"] == task]
        mine = items[info.rank :: info.world_size]
        n_batches = math.ceil(math.ceil(len(items) / info.world_size) / batch_size)
        total = count = 0.0
        for b in range(n_batches):
            chunk = mine[b * batch_size : (b + 1) * batch_size]
            real = len(chunk)
            if not chunk:  # keep collectives aligned (FSDP/ZeRO-3): run a dummy batch with weight 0
                chunk = items[:1]
            batch = to_device(collate([{k: v for k, v in e.items() if k in MODEL_KEYS} for e in chunk]), info.device)
            loss = strategy.forward(batch).loss
            total += float(loss) * real
            count += real
        total, count = dist.all_reduce_sum([total, count], info.device)
        out[f"eval/{task}_loss"] = total / max(count, 1)
    strategy.train(True)
    return out


def fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())
