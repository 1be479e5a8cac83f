"""``ddp``: DistributedDataParallel; gradients of the trainable parameters are all-reduced."""

from __future__ import annotations

import contextlib

import torch
from torch.nn.parallel import DistributedDataParallel

from vlm.train.strategies.base import Strategy, register


@register("ddp")
class DDPStrategy(Strategy):
    def setup(self, model: torch.nn.Module) -> None:
        self.model = model.to(self.info.device)
        if self.info.distributed:
            ids = [self.info.device.index] if self.info.device.type == "cuda" else None
            self.engine = DistributedDataParallel(self.model, device_ids=ids, broadcast_buffers=False)
        else:
            self.engine = self.model
        self._build_optim(self.model)

    def sync_context(self, last: bool) -> contextlib.AbstractContextManager:
        if not last and isinstance(self.engine, DistributedDataParallel):
            return self.engine.no_sync()
        return contextlib.nullcontext()
