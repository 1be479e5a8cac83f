"""The training loop: ``train(cfg, stage, data_uri, output_uri)`` on 1..N processes.

Builds the model (frozen towers + trainable adapter), wraps it with the configured strategy, streams
examples from the shards, and runs step-based training with accumulation, clipping, AdamW + warmup-cosine,
periodic fixed-set evaluation, checkpoints (automatic resume), rank-0 MLflow tracking and a progress bar.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import resource
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from vlm import storage
from vlm.align.config import stage_two_train_config
from vlm.data.format import SAMPLE_REASONS, SHARD_REASONS
from vlm.train import dist
from vlm.train.checkpoint import CheckpointManager
from vlm.train.config import TrainConfig
from vlm.train.data import DataError, ExampleBuilder, ExampleStream, SampleStream, eval_examples, list_shards
from vlm.train.labels import ExpertAttacher, expert_labels

log = logging.getLogger(__name__)

MODEL_FACTORY_ENV = "VLM_TRAIN_MODEL_FACTORY"  # "module:function" taking a ModelConfig (tests, benchmarks)
STAGES = ("pretrain", "finetune")
MODEL_KEYS = ("image", "instruction", "answer", "prompt", "experts")


# ----------------------------------------------------------------------------------- resolution
def stage_config(cfg, stage: str) -> TrainConfig:
    """The TrainConfig of ``stage``: ``train`` for pretrain; for finetune ``align.finetune`` as stage two uses it
    (MiniGPT-4's tasks and instructions, :func:`vlm.align.config.stage_two_train_config`), whichever entry point
    runs it."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
    if stage == "pretrain":
        return cfg.train
    return stage_two_train_config(cfg.align)


def _parent(uri: str) -> str:
    uri = uri.rstrip("/")
    if storage.is_s3(uri):
        return uri.rsplit("/", 1)[0]
    return str(Path(storage._local(uri)).resolve().parent)


def resolve_uris(cfg, stage: str, data_uri: str | None, output_uri: str | None) -> tuple[str, str, str]:
    tcfg = stage_config(cfg, stage)
    data = data_uri or cfg.data.output or storage.join(cfg.root, "data")
    output = output_uri or tcfg.output or storage.join(cfg.root, stage, "model")
    ckpt = tcfg.checkpoint_dir or storage.join(_parent(output), "checkpoints", stage)
    return data, output, ckpt


def model_factory(factory: Callable | str | None = None) -> Callable:
    """The model builder: an explicit callable, ``module:function``, ``$VLM_TRAIN_MODEL_FACTORY`` or build_model."""
    factory = factory or os.environ.get(MODEL_FACTORY_ENV)
    if callable(factory):
        return factory
    if factory:
        module, _, name = str(factory).partition(":")
        return getattr(importlib.import_module(module), name or "build_model")
    try:
        from vlm.models import build_model
    except ImportError:  # the package export may lag behind the module
        from vlm.models.model import build_model
    return build_model


def _load_artefact(uri: str):
    from vlm.models import load

    return load(uri)  # the artefact carries its own ModelConfig


# ----------------------------------------------------------------------------------- data
class BatchDataset(torch.utils.data.IterableDataset):
    """Collated batches of this rank: ``(batch, worker_id, position, data counters)``, forever.

    The counters are ``rejected_<reason>`` (samples dropped) and ``missing_label_<expert>`` (examples that
    trained without that expert's map), cumulative for this worker.
    """

    def __init__(self, shards: list[str], cfg: TrainConfig, info: dist.DistInfo, collate: Callable,
                 positions: list[int], labels: ExpertAttacher | None = None):
        super().__init__()
        self.shards, self.cfg, self.info, self.collate, self.positions = shards, cfg, info, collate, positions
        self.labels = labels

    def __iter__(self) -> Iterator[tuple[Any, int, int, int]]:
        wi = torch.utils.data.get_worker_info()
        worker, workers = (wi.id, wi.num_workers) if wi else (0, 1)
        samples = SampleStream(self.shards, self.info.rank, self.info.world_size, self.cfg.seed,
                               self.cfg.shuffle_buffer, infinite=True, worker=worker, num_workers=workers)
        stream = ExampleStream(samples, ExampleBuilder(self.cfg.tasks, self.cfg.caption_instructions, self.cfg.seed,
                                                      self.cfg.task_weights, self.cfg.balance_answers),
                               self.labels)
        batch: list[dict] = []
        skip = self.positions[worker] if worker < len(self.positions) else 0
        for pos, ex in stream.examples(skip=skip):
            batch.append({k: v for k, v in ex.items() if k in MODEL_KEYS})
            if len(batch) == self.cfg.batch_size:
                counts = {f"rejected_{k}": v for k, v in stream.rejected.items()}
                if self.labels is not None:
                    counts.update({f"missing_label_{k}": v for k, v in self.labels.missing.items()})
                yield self.collate(batch), worker, pos, counts
                batch = []


def _loader(ds: BatchDataset, num_workers: int) -> torch.utils.data.DataLoader:
    kw: dict[str, Any] = {}
    if num_workers > 0:
        kw = {"num_workers": num_workers, "multiprocessing_context": "fork", "prefetch_factor": 2,
              "persistent_workers": False}
    return torch.utils.data.DataLoader(ds, batch_size=None, **kw)


def _to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to(v, device) for v in batch)
    return batch


def _tokens(batch: dict[str, Any]) -> int:
    for key in ("attention_mask", "input_ids", "labels"):
        value = batch.get(key) if isinstance(batch, dict) else None
        if isinstance(value, torch.Tensor):
            return int(value.sum()) if key == "attention_mask" else int(value.numel())
    return 0


# ----------------------------------------------------------------------------------- metrics
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "L4": 121e12}


def peak_flops(device: torch.device) -> float | None:
    if os.environ.get("VLM_PEAK_FLOPS"):
        return float(os.environ["VLM_PEAK_FLOPS"])
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def flops_per_token(counts: dict[str, int]) -> float:
    """Frozen weights: forward + activation-gradient backward (4N); trainable: forward + full backward (6N)."""
    return 6.0 * counts.get("trainable", 0) + 4.0 * counts.get("frozen", 0)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@torch.no_grad()
def evaluate(strategy, examples: list[dict[str, Any]], batch_size: int, info: dist.DistInfo) -> dict[str, float]:
    """Mean loss per task on a fixed example list, split across ranks (every rank runs as many batches)."""
    if not examples:
        return {}
    strategy.train(False)
    collate = strategy.model.collate
    out: dict[str, float] = {}
    for task in sorted({e["task"] for e in examples}):
        items = [e for e in examples if e["task"] == task]
        mine = items[info.rank :: info.world_size]
        n_batches = math.ceil(math.ceil(len(items) / info.world_size) / batch_size)
        total = count = 0.0
        for b in range(n_batches):
            chunk = mine[b * batch_size : (b + 1) * batch_size]
            real = len(chunk)
            if not chunk:  # keep collectives aligned (FSDP/ZeRO-3): run a dummy batch with weight 0
                chunk = items[:1]
            batch = _to(collate([{k: v for k, v in e.items() if k in MODEL_KEYS} for e in chunk]), info.device)
            loss = strategy.forward(batch).loss
            total += float(loss) * real
            count += real
        total, count = dist.all_reduce_sum([total, count], info.device)
        out[f"eval/{task}_loss"] = total / max(count, 1)
    strategy.train(True)
    return out


# ----------------------------------------------------------------------------------- train
def train(cfg, stage: str = "pretrain", data_uri: str | None = None, output_uri: str | None = None,
          init_from: str | None = None, model_factory_: Callable | str | None = None,
          labels_uri: str | None = None) -> dict[str, Any]:
    """Run one training stage; every process of a torchrun/PyTorchJob calls this. Returns a JSON-able summary.

    Resumes automatically from the latest checkpoint under the checkpoint URI (``train.resume``). When the
    model has expert inputs (``model.experts``), ``labels_uri`` (else ``train.labels``) gives their labels.
    """
    from vlm import tracking
    from vlm.train.strategies import get_strategy

    tcfg = stage_config(cfg, stage)
    data_uri, output_uri, ckpt_uri = resolve_uris(cfg, stage, data_uri, output_uri)
    init_from = init_from or tcfg.init_from or None
    labels_uri = labels_uri or tcfg.labels or None
    info = dist.init()
    try:
        shards = list_shards(data_uri, tcfg.split)
        if not shards:
            raise DataError(f"no {tcfg.split!r} shards ({tcfg.split}-NNNNNN.tar) under {data_uri}")

        # --- model (identical init on every rank), then per-rank seeds
        dist.seed_everything(tcfg.seed)
        model_cfg = cfg.model
        if tcfg.gradient_checkpointing and "gradient_checkpointing" in type(model_cfg).model_fields:
            model_cfg = model_cfg.model_copy(update={"gradient_checkpointing": True})
        # fail on unusable expert labels before the (possibly slow) model build; an artefact names its own experts
        labels = None if init_from else expert_labels(list(model_cfg.experts), labels_uri, data_uri)
        t0 = time.perf_counter()
        model = _load_artefact(init_from) if init_from else model_factory(model_factory_)(model_cfg)
        if init_from:
            labels = expert_labels(list(model.config.experts), labels_uri, data_uri, trained_from=init_from)
        if tcfg.gradient_checkpointing and hasattr(model, "gradient_checkpointing_enable"):
            model.gradient_checkpointing_enable()
        counts = model.parameter_counts()
        log.info("model built in %.1fs: %s trainable, %s frozen parameters", time.perf_counter() - t0,
                 f"{counts['trainable']:,}", f"{counts['frozen']:,}")
        dist.seed_everything(tcfg.seed + 1000 * info.rank)

        # --- resume?
        ckpt = CheckpointManager(ckpt_uri, info, tcfg.keep_checkpoints)
        tag = ckpt.latest() if tcfg.resume else None
        state: dict[str, Any] = {}
        rank_state: dict[str, Any] | None = None
        folder = None
        if tag:
            folder = ckpt.fetch(tag)
            state = ckpt.read_state(folder)
            if state.get("stage", stage) != stage:
                raise RuntimeError(f"{storage.join(ckpt_uri, tag)} is a {state['stage']!r} checkpoint, not {stage!r}: "
                                   "give this stage its own train.checkpoint_dir")
            model.load_trainable_state_dict(ckpt.read_weights(folder))
            if state.get("world_size") == info.world_size:
                rank_state = ckpt.read_rank_state(folder)
            else:
                log.warning("checkpoint %s was written by %s processes, now %d: data positions restart",
                            tag, state.get("world_size"), info.world_size)
            log.info("resuming from %s (step %d)", storage.join(ckpt_uri, tag), state["step"])

        strategy = get_strategy(tcfg, info)
        strategy.setup(model)
        if folder is not None:
            strategy.load_state(folder)
            if rank_state is not None:
                dist.set_rng_state(rank_state["rng"])
            dist.barrier()
            ckpt.cleanup(tag)
        start = int(state.get("step", 0))
        positions = list((rank_state or {}).get("positions", [0] * max(1, tcfg.num_workers)))
        positions += [0] * (max(1, tcfg.num_workers) - len(positions))

        eval_set = eval_examples(data_uri, tcfg.eval_split, tcfg.eval_samples, tcfg.tasks,
                                 tcfg.caption_instructions[0], tcfg.seed, labels) if tcfg.eval_samples else []
        if tcfg.eval_samples and not eval_set and tcfg.eval_split != "test":
            eval_set = eval_examples(data_uri, "test", tcfg.eval_samples, tcfg.tasks,
                                     tcfg.caption_instructions[0], tcfg.seed, labels)
        if labels is not None:
            labels.missing.clear()  # the eval set's misses are not training data

        # --- tracking (rank 0 only; other ranks get a NullRun)
        experiment = cfg.experiment_name() if hasattr(cfg, "experiment_name") else cfg.name
        if info.is_main:
            tracking.configure(cfg.tracking.uri)
        with tracking.stage_run(stage, experiment, run_id=state.get("run_id"), run_name=stage, resume=True,
                                buffered=True, system_metrics=True) as run:
            summary = _run(cfg, tcfg, stage, info, strategy, ckpt, shards, eval_set, start, positions, state,
                           run, counts, data_uri, output_uri, ckpt_uri, model_factory_, model_cfg, init_from, labels)
        strategy.close()
        return summary
    finally:
        dist.shutdown()


def _run(cfg, tcfg: TrainConfig, stage, info, strategy, ckpt: CheckpointManager, shards, eval_set, start,
         positions, state, run, counts, data_uri, output_uri, ckpt_uri, factory, model_cfg, init_from,
         labels: ExpertAttacher | None = None) -> dict:
    from tqdm.auto import tqdm

    if start == 0:
        run.log_params({"stage": stage, "train": tcfg.model_dump(mode="json"), "model": model_cfg.model_dump(mode="json"),
                        "world_size": info.world_size, "data_uri": data_uri, "output_uri": output_uri,
                        "checkpoint_uri": ckpt_uri, "params_trainable": counts["trainable"],
                        "params_frozen": counts["frozen"], "init_from": init_from or "",
                        "labels_uri": labels.labels_uri if labels else ""})
        run.set_tags({"vlm.strategy": tcfg.strategy, "vlm.device": info.device.type})
    metrics_before = state.get("eval_before") or evaluate(strategy, eval_set, tcfg.batch_size, info)
    if start == 0 and metrics_before:
        run.log_metrics(metrics_before, step=0)
        log.info("eval before training: %s", _fmt(metrics_before))

    ds = BatchDataset(shards, tcfg, info, strategy.model.collate, positions, labels)
    batches = iter(_loader(ds, tcfg.num_workers))
    pflops = peak_flops(info.device)
    fpt = flops_per_token(counts)
    per_step_samples = tcfg.batch_size * tcfg.grad_accum * info.world_size
    worker_counts: dict[int, dict[str, int]] = {}  # cumulative data counters per dataloader worker
    last_loss = float("nan")
    throughput: dict[str, float] = {}
    bar = tqdm(total=tcfg.steps, initial=start, disable=not info.is_main, desc=stage, dynamic_ncols=True)
    strategy.train(True)
    t_window, n_window, tok_window = time.perf_counter(), 0, 0
    step = start
    while step < tcfg.steps:
        loss_sum, tokens = 0.0, 0
        for micro in range(tcfg.grad_accum):
            batch, worker, pos, worker_counts[worker] = next(batches)
            positions[worker] = pos
            tokens += _tokens(batch)
            out = strategy.micro_step(_to(batch, info.device), last=micro == tcfg.grad_accum - 1)
            loss_sum += float(out.loss.detach())
        grad_norm = strategy.step()
        step += 1
        n_window += 1
        tok_window += tokens
        bar.update(1)
        if step % tcfg.log_every == 0 or step == tcfg.steps:
            loss, tok = dist.all_reduce_sum([loss_sum / tcfg.grad_accum, tok_window], info.device)
            last_loss = loss / info.world_size
            elapsed = time.perf_counter() - t_window
            throughput = {"samples_per_s": n_window * per_step_samples / elapsed, "tokens_per_s": tok / elapsed}
            m = {"train/loss": last_loss, "train/lr": strategy.lr, "train/grad_norm": grad_norm,
                 "perf/samples_per_s": throughput["samples_per_s"], "perf/tokens_per_s": throughput["tokens_per_s"],
                 "perf/step_time_s": elapsed / n_window, "perf/peak_mem_mb": peak_memory_mb(info.device)}
            if pflops:
                m["perf/mfu"] = throughput["tokens_per_s"] * fpt / (pflops * info.world_size)
            m.update({f"data/{k}": v for k, v in _sum_counts(worker_counts).items()})
            run.log_metrics(m, step=step)
            bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{strategy.lr:.2e}", sps=f"{throughput['samples_per_s']:.1f}")
            t_window, n_window, tok_window = time.perf_counter(), 0, 0
        if tcfg.eval_every and step % tcfg.eval_every == 0 and step < tcfg.steps:
            run.log_metrics(evaluate(strategy, eval_set, tcfg.batch_size, info), step=step)
            t_window = time.perf_counter()
        if step % tcfg.checkpoint_every == 0 or step == tcfg.steps:
            _save(ckpt, stage, strategy, step, info, positions, run, tcfg, metrics_before, last_loss)
            t_window = time.perf_counter()
    bar.close()

    metrics_after = evaluate(strategy, eval_set, tcfg.batch_size, info)
    if metrics_after:
        run.log_metrics({k.replace("eval/", "eval/final_"): v for k, v in metrics_after.items()}, step=step)
        log.info("eval after training: %s", _fmt(metrics_after))
    _save_model(strategy, output_uri, info, tcfg, factory, model_cfg)
    probe = _probe(strategy.model, data_uri, tcfg, run) if tcfg.probe_images and info.is_main else {}
    if run.active:
        run.set_tags({"vlm.model_uri": output_uri, "vlm.checkpoint_uri": ckpt_uri})
        run.log_artifact(str(storage.local_copy(output_uri)), "model")
    data_counts = _sum_counts(worker_counts)
    rejected = sum(v for k, v in data_counts.items() if k.startswith("rejected_")
                   and k.removeprefix("rejected_") not in SHARD_REASONS)
    names = list(labels.sources) if labels else []
    reasons = sorted(SAMPLE_REASONS)  # the same list on every rank
    totals = dist.all_reduce_sum([float(rejected)] + [float(data_counts.get(f"missing_label_{n}", 0)) for n in names]
                                 + [float(data_counts.get(f"rejected_{r}", 0)) for r in reasons], info.device)
    total_rejected, missing = totals[0], dict(zip(names, (int(v) for v in totals[1:1 + len(names)])))
    by_reason = {r: int(v) for r, v in zip(reasons, totals[1 + len(names):]) if v}
    return {"stage": stage, "strategy": tcfg.strategy, "world_size": info.world_size, "steps": step,
            "resumed_from_step": start, "final_loss": last_loss, "eval_before": metrics_before,
            "eval_after": metrics_after, "model_uri": output_uri, "checkpoint_uri": ckpt_uri,
            "run_id": run.run_id, "rejected_samples": int(total_rejected), "rejected": by_reason,
            "labels_uri": labels.labels_uri if labels else "", "missing_labels": missing, "probe": probe, **throughput}


def _probe(model, data_uri: str, tcfg: TrainConfig, run) -> dict[str, float]:
    """Held-out exact match per question type vs the text-only lookup (`vlm.train.recipe`), as probe/* metrics."""
    from vlm.train.recipe import probe, table

    metrics = probe(model, data_uri, tcfg.probe_split, tcfg.probe_images)["metrics"]
    run.log_metrics(metrics, step=tcfg.steps)
    log.info("held-out probe:\n%s", table(metrics))
    return metrics


def _sum_counts(per_worker: dict[int, dict[str, int]]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for counts in per_worker.values():
        total.update(counts)
    return dict(total)


def _save(ckpt, stage, strategy, step, info, positions, run, tcfg, metrics_before, last_loss) -> None:
    state = {"stage": stage, "world_size": info.world_size, "strategy": tcfg.strategy, "zero_stage": tcfg.zero_stage,
             "run_id": run.run_id if run.active else None, "eval_before": metrics_before,
             "train_loss": last_loss, "time": time.time()}
    ckpt.save(step, strategy, state, {"rng": dist.rng_state(), "positions": list(positions)})


def _save_model(strategy, output_uri: str, info, tcfg: TrainConfig, factory, model_cfg) -> None:
    """Write the model artefact (rank 0). Sharded strategies gather the trainable weights first."""
    sharded = tcfg.strategy == "fsdp2" and info.distributed or tcfg.strategy == "deepspeed" and tcfg.zero_stage == 3
    weights = strategy.trainable_state_dict() if sharded else None
    if info.is_main:
        model = strategy.model
        if sharded:
            model = model_factory(factory)(strategy.model.config)
            model.load_trainable_state_dict(weights)
        model.save(output_uri)
        log.info("model artefact -> %s", output_uri)
    dist.barrier()


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())
