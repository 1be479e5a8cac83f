"""``none``: one process (or N independent ones), the model as is. The reference for the others."""

from __future__ import annotations

import torch

from vlm.train.strategies.base import Strategy, register


@register("none")
class NoStrategy(Strategy):
    def setup(self, model: torch.nn.Module) -> None:
        if self.info.distributed:
            raise ValueError("strategy 'none' runs in one process; use ddp, fsdp2 or deepspeed under torchrun "
                             f"(WORLD_SIZE={self.info.world_size})")
        self.model = self.engine = model.to(self.info.device)
        self._build_optim(model)
