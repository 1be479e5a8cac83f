"""The precision a training process computes in: ``auto`` is bf16 autocast only where the chip multiplies bf16 fast.

CUDA GPUs with bf16 support and CPUs with AVX512-BF16 or AMX have bf16 matrix units; there bf16 autocast halves
activation memory and speeds GEMMs up. A CPU without them (AVX2 only, such as the 2-core AMD EPYC machines this
project is developed on) has no fast bf16 GEMM in oneDNN/MKL: measured there with torch 2.13
(``benchmarks/precision.py``), one frozen 576->1536 linear on 16x80 tokens takes 1.44 s forward+backward
under bf16 autocast and 0.046 s in fp32 (31x), SmolLM2's 49k-word LM head on 32 rows 2.43 s against 0.09 s.
So ``auto`` (the default) is fp32 on such a CPU; an explicit ``bf16`` is honoured there with a warning that
says so.
"""

from __future__ import annotations

import logging
from typing import Literal

import torch

log = logging.getLogger(__name__)

Precision = Literal["fp32", "bf16"]


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` has bf16 matrix units (CUDA with bf16; CPU with AVX512-BF16 or AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        cpu = torch.cpu
        return bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
                    or getattr(cpu, "_is_amx_tile_supported", lambda: False)())
    return True  # other accelerators (mps, xpu...): their autocast decides


def resolve(requested: str, device: torch.device) -> Precision:
    """``auto`` -> bf16 where :func:`native_bf16`, else fp32; ``bf16``/``fp32`` as asked (a warning where bf16
    is slow)."""
    if requested == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if requested == "bf16" and not native_bf16(device):
        log.warning("precision bf16 on a %s without bf16 matrix units (no AVX512-BF16/AMX): its GEMMs run ~30x "
                    "slower than fp32 here; precision: auto picks fp32 on this machine", device.type)
    if requested not in ("fp32", "bf16"):
        raise ValueError(f"unknown precision {requested!r}: auto, fp32 or bf16")
    return requested  # type: ignore[return-value]
