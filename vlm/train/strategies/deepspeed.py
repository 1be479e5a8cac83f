"""``deepspeed``: ZeRO stage 1/2/3 (``train.zero_stage``; 2 is the default, as Prismer and mPLUG used).

The optimizer is our torch AdamW passed as a client optimizer, so no DeepSpeed C++ op is JIT-compiled
(CPU runs start in seconds). Precision stays fp32 in DeepSpeed; bf16 comes from autocast, as for the
other strategies. Checkpoints use DeepSpeed's own format (per-rank ZeRO partitions) without the frozen
weights, inside our checkpoint folder. DeepSpeed's own reader would unpickle anything; we load
with its checkpoint engine's ``load`` replaced by :func:`vlm.train.checkpoint.safe_torch_load` and
``TORCH_FORCE_WEIGHTS_ONLY_LOAD=1`` (any other ``torch.load`` it makes), allowing only the few DeepSpeed
classes its ZeRO files hold (:func:`safe_globals`): a file that needs anything else is refused.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from vlm.train.checkpoint import CheckpointError, safe_torch_load
from vlm.train.strategies.base import Strategy, register

log = logging.getLogger(__name__)
TAG = "deepspeed"


def ds_config(cfg, world_size: int) -> dict[str, Any]:
    return {
        "train_micro_batch_size_per_gpu": cfg.batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "train_batch_size": cfg.batch_size * cfg.grad_accum * world_size,
        "gradient_clipping": cfg.max_grad_norm,
        "zero_optimization": {"stage": cfg.zero_stage, "overlap_comm": False, "contiguous_gradients": True},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def _skip_shm_comm_build() -> None:
    """Do not JIT-compile DeepSpeed's CPU shared-memory comm op (1-2 min of C++ on first use).

    DeepSpeed builds it when its comm backend starts on CPU, but only its inference all-reduce uses it;
    training collectives go through torch.distributed (gloo). Set VLM_DS_SHM_COMM=1 to build it anyway.
    """
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is not None:
        deepspeed.ops.__compatible_ops__[builder.NAME] = False


def safe_globals() -> list[type]:
    """The classes DeepSpeed pickles into ZeRO checkpoints (plain records: loss scale, enum, slice address)."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]


@contextlib.contextmanager
def _weights_only(engine) -> Iterator[None]:
    """Every ``torch.load`` DeepSpeed makes inside this block is a weights-only one."""
    allowed = safe_globals()
    ckpt_engine = engine.checkpoint_engine
    ckpt_engine.load = lambda path, map_location=None: safe_torch_load(Path(path), allowed, map_location)
    before = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        with torch.serialization.safe_globals(allowed):
            yield
    finally:
        del ckpt_engine.load  # back to the class's method
        if before is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = before


@register("deepspeed")
class DeepSpeedStrategy(Strategy):
    def setup(self, model: torch.nn.Module) -> None:
        os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(os.environ.get("VLM_CACHE_DIR", Path.home() / ".cache" / "vlm"))
                                                          / "torch_extensions"))
        import deepspeed
        from deepspeed.utils import logger as ds_logger

        from vlm.train.optim import build_optimizer, build_scheduler

        ds_logger.setLevel(logging.WARNING)
        if self.info.device.type == "cpu" and os.environ.get("VLM_DS_SHM_COMM", "0") != "1":
            _skip_shm_comm_build()
        self.model = model.to(self.info.device)
        optimizer = build_optimizer(self.model, self.cfg)
        scheduler = build_scheduler(optimizer, self.cfg)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=self.model, optimizer=optimizer, lr_scheduler=scheduler,
            config=ds_config(self.cfg, self.info.world_size), dist_init_required=None)
        self._norm = 0.0

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        self.engine.backward(loss)  # DeepSpeed scales by 1/grad_accum itself
        if not last:
            self.engine.step()  # a no-op update off the accumulation boundary

    def step(self) -> float:
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    @property
    def lr(self) -> float:
        return float(self.engine.get_lr()[0])

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        params = [p for p in self.model.parameters() if p.requires_grad]
        ctx = contextlib.nullcontext()
        if self.cfg.zero_stage == 3:
            import deepspeed

            ctx = deepspeed.zero.GatheredParameters(params, modifier_rank=None)
        with ctx:
            return {k: v.detach().cpu().clone().contiguous() for k, v in self.model.trainable_state_dict().items()}

    def save_state(self, folder: Path) -> None:
        self.engine.save_checkpoint(str(folder), tag=TAG, save_latest=False, exclude_frozen_parameters=True)

    def load_state(self, folder: Path) -> None:
        try:
            with _weights_only(self.engine):
                path, _ = self.engine.load_checkpoint(str(folder), tag=TAG, load_module_strict=False,
                                                      load_optimizer_states=True, load_lr_scheduler_states=True)
        except pickle.UnpicklingError as exc:
            raise CheckpointError(f"{folder / TAG}: refused to load ({str(exc).splitlines()[0]})") from exc
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint under {folder}/{TAG}")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.engine.destroy()
