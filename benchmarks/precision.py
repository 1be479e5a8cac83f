"""fp32 vs bf16 autocast on this machine: forward+backward of the LLM's shapes, and what ``precision: auto`` picks.

    .venv/bin/python benchmarks/precision.py            # 2 threads; prints one JSON line per shape, then the choice

Times one frozen linear (input gradients only, as behind a frozen LLM) per shape, best of 3: a SmolLM2-135M
projection on 16x80 tokens and its 49k-word LM head on 32 supervised rows. Where the CPU has no bf16 units
(no AVX512-BF16, no AMX) bf16 is many times slower, which is why ``vlm.train.precision`` picks fp32 there.
"""

from __future__ import annotations

import json
import time

import torch

from vlm.train.precision import native_bf16, resolve

SHAPES = {"projection 576->1536, 16x80 tokens": ((16, 80, 576), 1536),
          "LM head 576->49152, 32 rows": ((32, 576), 49152)}


def fwd_bwd_s(shape: tuple[int, ...], out: int, bf16: bool, repeats: int = 3) -> float:
    layer = torch.nn.Linear(shape[-1], out, bias=False).requires_grad_(False)
    x = torch.randn(*shape, requires_grad=True)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = layer(x)
        y.float().sum().backward()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    torch.set_num_threads(min(2, torch.get_num_threads()))
    for name, (shape, out) in SHAPES.items():
        fp32, bf16 = fwd_bwd_s(shape, out, False), fwd_bwd_s(shape, out, True)
        print(json.dumps({"shape": name, "fp32_s": round(fp32, 4), "bf16_s": round(bf16, 4),
                          "bf16_over_fp32": round(bf16 / fp32, 2)}), flush=True)
    cpu = torch.device("cpu")
    print(json.dumps({"native_bf16": native_bf16(cpu), "auto_picks": resolve("auto", cpu)}))


if __name__ == "__main__":
    main()
