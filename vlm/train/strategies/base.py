"""The strategy interface: how the model is wrapped, stepped and checkpointed on N processes.

A strategy owns the wrapped model, the optimizer and the LR scheduler. The loop calls, per optimizer step::

    for i in range(grad_accum):
        out = strategy.micro_step(batch, last=i == grad_accum - 1)   # forward (autocast) + backward
    grad_norm = strategy.step()                     # clip, optimizer + scheduler step, zero grads

Checkpoint hooks are collective (every rank calls them): ``trainable_state_dict`` returns the full trainable
weights on CPU (valid on rank 0), ``save_state``/``load_state`` write/read optimizer + scheduler state in
a local folder (read back without arbitrary unpickling: ``vlm.train.checkpoint.safe_torch_load``).
New strategies subclass :class:`Strategy` in a new file and decorate it with ``@register``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from vlm.train.checkpoint import safe_torch_load
from vlm.train.config import TrainConfig
from vlm.train.dist import DistInfo
from vlm.train.precision import resolve as resolve_precision

STRATEGIES: dict[str, type[Strategy]] = {}


def register(name: str) -> Callable[[type[Strategy]], type[Strategy]]:
    def deco(cls: type[Strategy]) -> type[Strategy]:
        cls.name = name
        STRATEGIES[name] = cls
        return cls

    return deco


def get_strategy(cfg: TrainConfig, info: DistInfo) -> Strategy:
    import vlm.train.strategies  # noqa: F401 - registers the built-in strategies

    if cfg.strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {cfg.strategy!r}; known: {', '.join(sorted(STRATEGIES))}")
    return STRATEGIES[cfg.strategy](cfg, info)


class Strategy:
    name = "base"

    def __init__(self, cfg: TrainConfig, info: DistInfo):
        self.cfg, self.info = cfg, info
        self.precision = resolve_precision(cfg.precision, info.device)  # "auto" -> what this device runs fast
        self.model: torch.nn.Module | None = None  # the unwrapped model (collate, save, state dicts)
        self.engine: Any = None  # what forward() calls
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None

    # ----------------------------------------------------------------- set-up
    def setup(self, model: torch.nn.Module) -> None:
        raise NotImplementedError

    def _build_optim(self, params_model: torch.nn.Module) -> None:
        from vlm.train.optim import build_optimizer, build_scheduler

        self.optimizer = build_optimizer(params_model, self.cfg)
        self.scheduler = build_scheduler(self.optimizer, self.cfg)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.engine.parameters() if p.requires_grad]

    # ----------------------------------------------------------------- one step
    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "bf16":
            return torch.autocast(self.info.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def forward(self, batch: dict[str, Any]) -> Any:
        with self.autocast():
            return self.engine(**batch)

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        (loss / self.cfg.grad_accum).backward()

    def sync_context(self, last: bool) -> contextlib.AbstractContextManager:
        """Gradient synchronisation only on the last micro-batch of an accumulation cycle."""
        return contextlib.nullcontext()

    def micro_step(self, batch: dict[str, Any], last: bool) -> Any:
        with self.sync_context(last):
            out = self.forward(batch)
            self.backward(out.loss, last)
        return out

    def clip(self) -> float:
        norm = torch.nn.utils.clip_grad_norm_(self.trainable_parameters(), self.cfg.max_grad_norm)
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        return float(norm)

    def step(self) -> float:
        norm = self.clip()
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def train(self, mode: bool = True) -> None:
        self.engine.train(mode)

    # ----------------------------------------------------------------- checkpoint hooks (collective)
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        sd = self.model.trainable_state_dict()
        out = {}
        for k, v in sd.items():
            v = v.detach()
            if hasattr(v, "full_tensor"):
                v = v.full_tensor()
            out[k] = v.cpu().clone().contiguous()
        return out

    def optimizer_state(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_optimizer_state(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state)

    def save_state(self, folder: Path) -> None:
        state = {"optimizer": self.optimizer_state(), "scheduler": self.scheduler.state_dict()}
        if self.info.is_main:
            tmp = folder / ".trainer.pt.tmp"
            torch.save(state, tmp)
            tmp.replace(folder / "trainer.pt")

    def load_state(self, folder: Path) -> None:
        state = safe_torch_load(folder / "trainer.pt")  # weights_only: tensors and plain values, no code
        self.load_optimizer_state(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    def close(self) -> None:
        pass
