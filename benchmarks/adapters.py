"""Adapters side by side: the stage-one recipe trained with each adapter on the same data and wall-clock budget.

    python benchmarks/adapters.py                                   # configs/stage1.yaml, 120 s per adapter
    python benchmarks/adapters.py --budget-s 90 --probe-images 30 --output adapters.md --output adapters.json

Each adapter trains in a fresh ``python -m vlm.train`` process (the real entry point) from ``--config`` with
``model.adapter.type`` set, ``train.max_seconds`` = the budget (the step loop stops after the first step past
it; ``train.steps`` is raised so that the budget, not the step count, ends the run: the learning rate stays at
its peak after warm-up), no checkpoints or fixed-set eval inside the budget, MLflow to a temporary sqlite store.
``tinylm`` (PaLM2-VAdapter) spends ``--tinylm-decoder-share`` of its budget on stage 1 (``adapter.stage:
decoder``, the tiny LM trained as a captioner on the caption task) and the rest on stage 2 (``adapter.stage:
adapter``, starting from stage 1's weights, on the recipe's tasks). After training every run answers every
question of the same ``--probe-images`` held-out test images (``vlm.train.recipe.probe``).

Prints one row per adapter: steps, held-out exact match (overall, and on the questions a text-only lookup gets
wrong), training samples/s (from the run's per-step ``perf/step_time_s``) and trainable parameters.
Without ``--data`` the data is sharded into the work folder first (``vlm shard builtin:easy-vqa``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
ADAPTERS = ("linear", "mlp", "perceiver", "qformer", "tinylm")
WARM_START_ENV = "VLM_BENCH_WARM_START"  # model artefact whose trainable weights warm_start loads
COLUMNS = ("adapter", "steps", "overall", "image_needed", "samples_per_s", "trainable_params", "train_s")


def warm_start(model_cfg):
    """Model factory of tinylm's stage 2: the model of ``model_cfg`` with stage 1's trainable weights."""
    from safetensors.torch import load

    from vlm import storage
    from vlm.models.artifact import WEIGHTS_FILE
    from vlm.models.model import build_model

    model = build_model(model_cfg)
    model.load_trainable_state_dict(load(storage.read_bytes(storage.join(os.environ[WARM_START_ENV], WEIGHTS_FILE))))
    return model


def _shard(config: Path, data: Path) -> None:
    cmd = [sys.executable, "-m", "vlm.cli", "shard", "builtin:easy-vqa", str(data), "--config", str(config)]
    print(f"sharding easy-vqa -> {data}", file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=_env())


def _env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # it would win over our own store
    return {**env, "PYTHONPATH": path, **extra}


def _train(name: str, base: dict, work: Path, data: Path, seconds: float, sets: dict, env: dict[str, str]) -> dict:
    """One ``python -m vlm.train`` run; returns its summary plus the MLflow run's trainable params and step times."""
    from mlflow import MlflowClient

    cfg = json.loads(json.dumps(base))  # deep copy
    cfg["root"] = str(work / name)
    cfg["tracking"] = {**cfg.get("tracking", {}), "uri": f"sqlite:///{work / 'mlflow.db'}"}
    train = cfg.setdefault("train", {})
    train.update({"steps": max(int(train.get("steps", 1)), 10**7), "max_seconds": seconds, "resume": False,
                  "checkpoint_every": 10**7, "eval_samples": 0, "log_every": 1})
    for key, value in sets.items():
        node = cfg
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    summary, log = work / f"{name}.summary.json", work / f"{name}.log"
    cmd = [sys.executable, "-m", "vlm.train", "--config", str(path), "--data", str(data), "--summary", str(summary)]
    print(f"{name}: training for {seconds:.0f} s (log {log})", file=sys.stderr, flush=True)
    with open(log, "wb") as out:
        rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
    if rc != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise SystemExit(f"{name}: training failed (exit {rc}); last lines of {log}:\n{tail}")
    result = json.loads(summary.read_text())
    client = MlflowClient(cfg["tracking"]["uri"])
    result["trainable_params"] = int(client.get_run(result["run_id"]).data.params["params_trainable"])
    result["train_s"] = sum(m.value for m in client.get_metric_history(result["run_id"], "perf/step_time_s"))
    result["samples"] = result["steps"] * int(train.get("batch_size", 8)) * int(train.get("grad_accum", 1))
    return result


def run(config: Path, data: Path | None, budget: float, probe_images: int, adapters: list[str], share: float,
        work: Path, sets: dict) -> list[dict]:
    base = yaml.safe_load(config.read_text()) or {}
    if data is None:
        data = work / "data"
        _shard(config, data)
    probe = {"train.probe_images": probe_images, "train.probe_split": "test"}
    rows = []
    for name in adapters:
        if name == "tinylm":
            first = _train("tinylm-decoder", base, work, data, budget * share,
                           {"model.adapter.type": "tinylm", "model.adapter.stage": "decoder", "train.tasks": ["caption"],
                            "train.task_weights": {}, "train.probe_images": 0, **sets}, _env())
            runs = [first, _train("tinylm-adapter", base, work, data, budget * (1 - share),
                                  {"model.adapter.type": "tinylm", "model.adapter.stage": "adapter", **probe, **sets},
                                  _env(**{WARM_START_ENV: first["model_uri"],
                                          "VLM_TRAIN_MODEL_FACTORY": "benchmarks.adapters:warm_start"}))]
        else:
            runs = [_train(name, base, work, data, budget, {"model.adapter.type": name, **probe, **sets}, _env())]
        last = runs[-1]
        train_s = sum(r["train_s"] for r in runs)
        rows.append({"adapter": name, "steps": sum(r["steps"] for r in runs),
                     "stage_steps": [r["steps"] for r in runs],
                     "overall": last["probe"]["probe/overall"], "image_needed": last["probe"]["probe/image_needed"],
                     "samples_per_s": sum(r["samples"] for r in runs) / train_s if train_s else float("nan"),
                     "trainable_params": last["trainable_params"], "train_s": train_s,
                     "probe": last["probe"]})
        print(_row(rows[-1]), file=sys.stderr, flush=True)
    return rows


def _row(r: dict) -> str:
    steps = "+".join(str(s) for s in r["stage_steps"])
    return (f"{r['adapter']:<10}{steps:>10}{r['overall']:>9.3f}{r['image_needed']:>14.3f}"
            f"{r['samples_per_s']:>11.2f}{r['trainable_params']:>14,}{r['train_s']:>9.1f}")


def text_table(rows: list[dict]) -> str:
    head = (f"{'adapter':<10}{'steps':>10}{'overall':>9}{'image-needed':>14}{'samples/s':>11}{'trainable':>14}"
            f"{'train s':>9}")
    return "\n".join([head] + [_row(r) for r in rows])


def markdown(rows: list[dict]) -> str:
    lines = ["| adapter | steps | held-out overall | image-needed | samples/s | trainable params | train s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['adapter']} | {'+'.join(str(s) for s in r['stage_steps'])} | {r['overall']:.3f} | "
                     f"{r['image_needed']:.3f} | {r['samples_per_s']:.2f} | {r['trainable_params']:,} | "
                     f"{r['train_s']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "stage1.yaml", help="base pipeline YAML")
    ap.add_argument("--data", type=Path, default=None, help="shards (default: shard easy-vqa into the work folder)")
    ap.add_argument("--budget-s", type=float, default=120.0, help="wall-clock seconds of training per adapter")
    ap.add_argument("--probe-images", type=int, default=150, help="held-out test images asked every question")
    ap.add_argument("--adapters", default=",".join(ADAPTERS), help="comma-separated subset of " + ", ".join(ADAPTERS))
    ap.add_argument("--tinylm-decoder-share", type=float, default=1 / 3,
                    help="share of tinylm's budget spent on its stage 1 (decoder); the rest on stage 2")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for every run, e.g. --set model.adapter.hidden_size=128")
    ap.add_argument("--workdir", type=Path, default=None, help="keep runs, logs and MLflow here (default: temporary)")
    ap.add_argument("--output", action="append", default=[], type=Path,
                    help="write the table: .md as Markdown, anything else as JSON (repeatable)")
    args = ap.parse_args(argv)
    adapters = [a.strip() for a in args.adapters.split(",") if a.strip()]
    unknown = sorted(set(adapters) - set(ADAPTERS))
    if unknown or not adapters:
        ap.error(f"unknown adapter(s) {unknown}; choose from {', '.join(ADAPTERS)}")
    if not 0 < args.tinylm_decoder_share < 1:
        ap.error("--tinylm-decoder-share must be between 0 and 1")
    if args.budget_s <= 0 or args.probe_images < 1:
        ap.error("--budget-s must be > 0 and --probe-images >= 1")
    sets = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            ap.error(f"--set expects KEY=VALUE, got {item!r}")
        sets[key] = yaml.safe_load(value)

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vlm-adapters-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        rows = run(args.config, args.data, args.budget_s, args.probe_images, adapters, args.tinylm_decoder_share,
                   work.resolve(), sets)
    print(text_table(rows))
    n_q = {int(r["probe"]["probe/n_questions"]) for r in rows}
    print(f"{args.budget_s:.0f} s budget per adapter, {args.probe_images} held-out images ({', '.join(map(str, n_q))} "
          f"questions), text-only lookup {rows[0]['probe']['probe/lookup_overall']:.3f}; "
          f"{time.perf_counter() - t0:.0f} s in all")
    for out in args.output:
        doc = {"budget_s": args.budget_s, "probe_images": args.probe_images, "config": str(args.config),
               "tinylm_decoder_share": args.tinylm_decoder_share, "columns": list(COLUMNS), "rows": rows}
        out.write_text(markdown(rows) if out.suffix == ".md" else json.dumps(doc, indent=2, default=float))
    return 0 if all(math.isfinite(r["overall"]) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
