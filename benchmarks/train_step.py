"""Step time and samples/s of the training engine vs a plain reference loop, in the same run.

    .venv/bin/python benchmarks/train_step.py                      # default models (EfficientNet-Lite0 + SmolLM2), CPU
    .venv/bin/python benchmarks/train_step.py --tiny               # tiny random models (smoke test, seconds)
    .venv/bin/python benchmarks/train_step.py --realistic          # GPU: ~1B Llama + ViT-L (random init), bf16 ZeRO-2
    .venv/bin/python benchmarks/train_step.py --recipe configs/stage1.yaml --contend   # the recipe's model, and
                                                                   # each variant again beside a CPU busy loop

The reference loop calls the model directly (fp32, torch AdamW, no strategy, no clipping/scheduler/autocast).
The engine runs the same pre-collated batches through ``vlm.train`` strategies (``none`` and, with
``--realistic`` or ``--strategy deepspeed``, DeepSpeed ZeRO-2 in one process) in fp32 and in ``--precision``
(default ``auto``: bf16 autocast on CUDA and on CPUs with bf16 units, fp32 elsewhere, as training resolves it).
``--recipe FILE`` adds the engine on that config's model section (pooled visual tokens, encoder cache, LoRA).
``--contend`` times each variant again with one CPU-bound process running beside it (``contended_*``,
``slowdown`` = contended / idle step time). The thread policy of ``vlm.train.threads`` (OMP_WAIT_POLICY=PASSIVE)
applies unless ``--omp-default``.
Prints one JSON line per variant: step time, samples/s, tokens/s, peak memory and (GPU) MFU; then the
speed-ups over the reference.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if "--omp-default" not in sys.argv:
    from vlm.train import threads

    threads.wait_policy()  # before torch loads OpenMP

import torch  # noqa: E402


def _images(n: int, size: int = 64, offset: int = 0):
    from PIL import Image, ImageDraw

    out = []
    for i in range(offset, offset + n):
        img = Image.new("RGB", (size, size), (240, 240, 240))
        ImageDraw.Draw(img).ellipse((8, 8, size - 8, size - 8), fill=((i * 70) % 255, 90 + i % 100, 200))
        out.append(img)
    return out


def _examples(n: int, offset: int = 0) -> list[dict]:
    return [{"image": im, "instruction": "What shape is in the image?", "answer": "a circle in the middle of the image"}
            for im in _images(n, offset=offset)]


@contextlib.contextmanager
def _busy_process():
    """One CPU-bound process (a Python busy loop) running beside the block."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        yield
    finally:
        proc.kill()
        proc.wait()


def _realistic_sources(root: Path) -> dict:
    """Randomly initialised ~1B Llama and ViT-L/16 checkpoints written once (weights cannot be downloaded)."""
    from transformers import LlamaConfig, LlamaForCausalLM, ViTConfig, ViTModel

    from vlm.models.llm import tiny_tokenizer

    llm_dir, vit_dir = root / "llama-1b", root / "vit-l16"
    if not (llm_dir / "config.json").exists():
        tok = tiny_tokenizer()
        cfg = LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                          num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048,
                          torch_dtype="bfloat16")
        LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(llm_dir)
        tok.save_pretrained(llm_dir)
    if not (vit_dir / "config.json").exists():
        ViTModel(ViTConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                           image_size=224, patch_size=16)).save_pretrained(vit_dir)
    # vision.precision auto: the ViT-L in bf16 like the LLM (an fp32 encoder, the default, costs GPU throughput)
    return {"vision": {"type": "hf", "source": str(vit_dir), "precision": "auto"},
            "llm": {"type": "hf", "source": str(llm_dir)}}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _measure(step_fn, batches, warmup: int, steps: int, device, batch_size: int, tokens: int, fpt: float | None):
    for b in batches[:warmup]:
        step_fn(b)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(steps):
        step_fn(batches[(warmup + i) % len(batches)])
    _sync(device)
    dt = (time.perf_counter() - t0) / steps
    out = {"step_time_s": round(dt, 4), "samples_per_s": round(batch_size / dt, 2), "tokens_per_s": round(tokens / dt, 1),
           "cpu_s_per_step": round((time.process_time() - c0) / steps, 4)}  # ~ idle step time x threads on a busy host
    if device.type == "cuda":
        out["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        from vlm.train.metrics import peak_flops

        peak = peak_flops(device)
        if peak and fpt:
            out["mfu"] = round(tokens / dt * fpt / peak, 4)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny random vision encoder and LLM")
    ap.add_argument("--realistic", action="store_true", help="~1B Llama + ViT-L/16, random init (GPU)")
    ap.add_argument("--adapter", default="linear")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--strategy", default="", help="also time this strategy (e.g. deepspeed) besides 'none'")
    ap.add_argument("--cache", default=os.environ.get("VLM_CACHE_DIR", ".cache/vlm"))
    ap.add_argument("--recipe", default="", help="also time the engine on this pipeline config's model section")
    ap.add_argument("--contend", action="store_true", help="time each variant again beside a CPU busy loop")
    ap.add_argument("--omp-default", action="store_true", help="leave OpenMP's wait policy at its default")
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                    help="the engine's precision besides fp32 (auto: as training resolves it on this device)")
    args = ap.parse_args()

    from vlm.logs import setup_logging
    from vlm.models.config import ModelConfig
    from vlm.train.config import TrainConfig
    from vlm.train.dist import DistInfo
    from vlm.train.batches import count_tokens, to_device
    from vlm.train.metrics import flops_per_token
    from vlm.train.precision import resolve
    from vlm.train.trainer import model_factory
    from vlm.train.strategies import get_strategy

    setup_logging("WARNING")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model_kw: dict = {"adapter": {"type": args.adapter}}
    if args.tiny:
        model_kw.update(vision={"type": "tiny"}, llm={"type": "tiny"})
    if args.realistic:
        model_kw.update(_realistic_sources(Path(args.cache) / "bench-models"))
    mcfg = ModelConfig.model_validate(model_kw)
    build = model_factory()
    torch.manual_seed(0)
    model = build(mcfg).to(device)
    counts = model.parameter_counts()
    n_batches = 2
    batches = [to_device(model.collate(_examples(args.batch_size, i * args.batch_size)), device)
               for i in range(n_batches)]
    tokens = count_tokens(batches[0])
    fpt = flops_per_token(counts)
    precision = resolve(args.precision, device)
    header = {"device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu x{torch.get_num_threads()} threads",
              "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
              "vision": mcfg.vision.type, "llm": mcfg.llm.type, "adapter": mcfg.adapter.type, **counts,
              "batch_size": args.batch_size, "text_tokens_per_batch": tokens,
              "precision": f"{args.precision} -> {precision}"}
    print(json.dumps(header), flush=True)
    init = {k: v.detach().clone() for k, v in model.trainable_state_dict().items()}

    def reset():
        model.load_trainable_state_dict(init)

    # the reference: the model called directly, fp32, plain AdamW
    model.train(True)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.05)

    def ref_step(batch):
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    variants = [("reference fp32", None, None, model)]
    if not args.realistic:
        variants += [("engine none fp32", "none", "fp32", model)]
    if precision != "fp32":
        variants += [(f"engine none {precision}", "none", precision, model)]
    if args.strategy or args.realistic:
        extra = args.strategy or "deepspeed"
        variants += [(f"engine {extra} zero2 {precision}", extra, precision, model)]
    if args.recipe:
        import yaml

        rcfg = ModelConfig.model_validate({**(yaml.safe_load(Path(args.recipe).read_text()).get("model") or {}),
                                           **model_kw})
        torch.manual_seed(0)
        recipe_model = build(rcfg).to(device)
        variants += [(f"engine none {precision} {Path(args.recipe).stem}", "none", precision, recipe_model)]
    results: dict[str, float] = {}
    for name, strategy, variant_precision, net in variants:
        if net is model:
            reset()
        if strategy is None:
            fn = ref_step
        else:
            if strategy == "deepspeed":
                os.environ.setdefault("RANK", "0"), os.environ.setdefault("WORLD_SIZE", "1")
                os.environ.setdefault("LOCAL_RANK", "0"), os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
                os.environ.setdefault("MASTER_PORT", "29517")
            tcfg = TrainConfig(strategy=strategy, precision=variant_precision, batch_size=args.batch_size, lr=1e-4,
                               steps=args.steps + args.warmup, zero_stage=2)
            strat = get_strategy(tcfg, DistInfo(0, 1, 0, device))
            strat.setup(net)

            def fn(batch, strat=strat):
                strat.micro_step(batch, last=True)
                strat.step()
        res = _measure(fn, batches, args.warmup, args.steps, device, args.batch_size, tokens, fpt)
        results[name] = res["samples_per_s"]
        if args.contend:
            with _busy_process():
                busy = _measure(fn, batches, 1, args.steps, device, args.batch_size, tokens, fpt)
            res.update({f"contended_{k}": v for k, v in busy.items()},
                       slowdown=round(busy["step_time_s"] / res["step_time_s"], 2))
        print(json.dumps({"variant": name, **res}), flush=True)
    ref = results.pop("reference fp32")
    print(json.dumps({"speedup_vs_reference": {k: round(v / ref, 2) for k, v in results.items()}}), flush=True)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory():
        main()
