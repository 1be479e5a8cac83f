"""``fsdp2``: per-parameter sharding with ``torch.distributed.fsdp.fully_shard`` (FSDP2).

Each block of the model's ``nn.ModuleList``\ s (transformer layers) is a unit, the rest is the root unit,
so the frozen encoder/LLM weights are sharded too (the memory win on GPUs). Checkpoints hold full (unsharded) state, gathered with
``torch.distributed.checkpoint.state_dict``, so a run can resume on a different number of processes.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.distributed as dist

from vlm.train.strategies.base import Strategy, register


@register("fsdp2")
class FSDP2Strategy(Strategy):
    def setup(self, model: torch.nn.Module) -> None:
        from torch.distributed.fsdp import fully_shard

        self.model = model.to(self.info.device)
        if dist.is_initialized():
            for module in _shard_units(model):
                fully_shard(module)
            fully_shard(model)
        self.engine = self.model
        self._build_optim(self.model)

    def sync_context(self, last: bool) -> contextlib.AbstractContextManager:
        if hasattr(self.engine, "set_requires_gradient_sync"):
            self.engine.set_requires_gradient_sync(last)
        return contextlib.nullcontext()

    def _options(self, **kw):
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        return StateDictOptions(full_state_dict=True, cpu_offload=dist.is_initialized(), **kw)

    def optimizer_state(self) -> dict[str, Any]:
        if not dist.is_initialized():
            return super().optimizer_state()
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return get_optimizer_state_dict(self.model, self.optimizer, options=self._options())

    def load_optimizer_state(self, state: dict[str, Any]) -> None:
        if not dist.is_initialized():
            return super().load_optimizer_state(state)
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        set_optimizer_state_dict(self.model, self.optimizer, optim_state_dict=state,
                                 options=self._options(broadcast_from_rank0=False))


def _shard_units(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Blocks of every ``nn.ModuleList`` (transformer layers of the encoder and LLM, adapter layers).

    Blocks are only ever run through their own ``forward``, which is where FSDP2 gathers their weights;
    everything else (embeddings called directly, heads, the adapter's projections) stays in the root unit.
    """
    units = []
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList):
            units += [m for m in module if any(True for _ in m.parameters())]
    return units
