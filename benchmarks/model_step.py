"""Forward+backward time per batch for each adapter with the default models (EfficientNet-Lite0 + SmolLM2-135M).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/model_step.py [--batch 8] [--steps 3] [--bf16] [--adapters linear,mlp]

Prints one JSON line per adapter: wall seconds per step (mean/min over --steps after one warm-up step), CPU
seconds per step (less sensitive to other processes on a shared box; / threads ~ wall time when idle), samples/s,
LLM sequence length, trainable/frozen parameters. The batch is real photos with MiniGPT-4 prompts and short answers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def batch_examples(n: int) -> list[dict]:
    from PIL import Image
    from skimage import data

    photos = [data.chelsea(), data.coffee(), data.astronaut(), data.rocket()]
    qa = [("What animal is this?", "a ginger cat lying on a wooden floor"),
          ("What is in the cup?", "a cup of coffee with a saucer and a spoon"),
          ("Who is in the picture?", "an astronaut in a white suit in front of a flag"),
          ("What is happening?", "a rocket is launching from its pad")]
    return [{"image": Image.fromarray(photos[i % 4]), "instruction": qa[i % 4][0], "answer": qa[i % 4][1]}
            for i in range(n)]


def bench(adapter: str, batch_size: int, steps: int, bf16: bool, device: str) -> dict:
    from vlm.models import build_model

    model = build_model({"adapter": {"type": adapter}, "bf16": bf16}).to(device)
    model.train()
    batch = model.collate(batch_examples(batch_size))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    times, cpu = [], []
    for i in range(steps + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        start, cpu_start = time.perf_counter(), time.process_time()
        out = model(**batch)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - cpu_start)
    seq = batch["input_ids"].shape[1] + model.adapter(model.visual_tokens(batch["pixel_values"][:1])).shape[1]
    mean = statistics.mean(times)
    return {"adapter": adapter, "batch": batch_size, "bf16": bf16, "device": device, "threads": torch.get_num_threads(),
            "seq_len": int(seq), "s_per_step": round(mean, 3), "min_s": round(min(times), 3),
            "cpu_s_per_step": round(statistics.mean(cpu), 3),
            "samples_per_s": round(batch_size / mean, 2), **model.parameter_counts()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--adapters", default="linear,mlp,perceiver,qformer,tinylm")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    for adapter in args.adapters.split(","):
        print(json.dumps(bench(adapter, args.batch, args.steps, args.bf16, args.device)), flush=True)


if __name__ == "__main__":
    main()
