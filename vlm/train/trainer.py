"""The training engine: a :class:`Trainer` runs one :class:`~vlm.train.job.TrainJob` in every process of a launch.

``setup`` builds the model (frozen towers + trainable adapter, identical on every rank) and wraps it with the
configured strategy; ``resume`` restores the newest complete checkpoint; ``step`` is one optimizer step
(accumulation, clipping, AdamW + warmup-cosine); ``evaluate`` the fixed held-out loss; ``save`` a checkpoint.
``fit`` runs them to ``train.steps`` with rank-0 MLflow tracking and a progress bar.
"""

from __future__ import annotations

import importlib
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from vlm import storage
from vlm.data.format import SAMPLE_REASONS, SHARD_REASONS
from vlm.train import dist
from vlm.train.batches import BatchDataset, count_tokens, loader, to_device
from vlm.train.checkpoint import CheckpointManager
from vlm.train.data import DataError, eval_examples, list_shards
from vlm.train.job import TrainJob, TrainResult
from vlm.train.labels import ExpertAttacher, expert_labels
from vlm.train.metrics import evaluate, flops_per_token, fmt, peak_flops, peak_memory_mb

log = logging.getLogger(__name__)

MODEL_FACTORY_ENV = "VLM_TRAIN_MODEL_FACTORY"  # "module:function" taking a ModelConfig (tests, benchmarks)


def model_factory(factory: Callable | str | None = None) -> Callable:
    """The model builder: an explicit callable, ``module:function``, ``$VLM_TRAIN_MODEL_FACTORY`` or build_model."""
    factory = factory or os.environ.get(MODEL_FACTORY_ENV)
    if callable(factory):
        return factory
    if factory:
        module, _, name = str(factory).partition(":")
        return getattr(importlib.import_module(module), name or "build_model")
    from vlm.models import build_model

    return build_model


def _load_artefact(uri: str):
    from vlm.models import load

    return load(uri)  # the artefact carries its own ModelConfig


@dataclass
class _Window:
    """Optimizer steps and tokens since the last logged step, and the training time they took."""

    t0: float = field(default_factory=time.perf_counter)
    steps: int = 0
    tokens: int = 0

    def skip(self) -> None:
        """Leave out the time since ``t0`` (evaluation, checkpointing) from the throughput."""
        self.t0 = time.perf_counter()


class Trainer:
    """One stage on this process: ``setup()``, ``resume()``, then ``fit()`` (which calls ``step``, ``evaluate``
    and ``save``). Every rank runs the same calls; only rank 0 talks to MLflow and draws the progress bar."""

    def __init__(self, job: TrainJob, info: dist.DistInfo, factory: Callable | str | None = None):
        from vlm.tracking import NullRun

        self.job, self.cfg, self.info, self.factory = job, job.train, info, factory
        self.ckpt = CheckpointManager(job.checkpoint_uri, info, self.cfg.keep_checkpoints)
        self.tracker = NullRun()  # the stage's MLflow run while fit() runs (rank 0)
        self.shards: list[str] = []
        self.labels: ExpertAttacher | None = None
        self.strategy: Any = None
        self.counts: dict[str, int] = {}  # trainable / frozen parameters
        self.state: dict[str, Any] = {}  # the resumed checkpoint's record
        self.global_step = self.start = 0
        self.positions = [0] * max(1, self.cfg.num_workers)  # data position of each dataloader worker
        self.eval_set: list[dict[str, Any]] = []
        self.eval_before: dict[str, float] = {}
        # cumulative rejected_<reason> / missing_label_<expert> of each dataloader worker of this rank
        self.worker_counts: dict[int, dict[str, int]] = {}
        self.last_loss = float("nan")
        self.throughput: dict[str, float] = {}
        self._resume_from: tuple[str, Any, dict[str, Any] | None] | None = None  # (tag, folder, rank state)
        self._window = _Window()
        self._bar: Any = None

    # ------------------------------------------------------------------------------ setup / resume
    def setup(self) -> None:
        """Shards and expert labels, the model, the newest checkpoint's trainable weights, the strategy, the
        fixed eval set."""
        from vlm.train.strategies import get_strategy

        job, tcfg = self.job, self.cfg
        self.shards = list_shards(job.data_uri, tcfg.split)
        if not self.shards:
            raise DataError(f"no {tcfg.split!r} shards ({tcfg.split}-NNNNNN.tar) under {job.data_uri}")
        dist.seed_everything(tcfg.seed)  # identical init on every rank
        # fail on unusable expert labels before the (possibly slow) model build; an artefact names its own experts
        labels_uri = job.labels_uri or None
        self.labels = None if job.init_from else expert_labels(list(job.model.experts), labels_uri, job.data_uri)
        t0 = time.perf_counter()
        model = _load_artefact(job.init_from) if job.init_from else model_factory(self.factory)(job.model)
        if job.init_from:
            self.labels = expert_labels(list(model.config.experts), labels_uri, job.data_uri,
                                        trained_from=job.init_from)
        if tcfg.gradient_checkpointing and hasattr(model, "gradient_checkpointing_enable"):
            model.gradient_checkpointing_enable()
        self.counts = model.parameter_counts()
        log.info("model built in %.1fs: %s trainable, %s frozen parameters", time.perf_counter() - t0,
                 f"{self.counts['trainable']:,}", f"{self.counts['frozen']:,}")
        dist.seed_everything(tcfg.seed + 1000 * self.info.rank)
        self._load_checkpoint_weights(model)  # before the strategy wraps (and may shard) the model
        self.strategy = get_strategy(tcfg, self.info)
        self.strategy.setup(model)
        if self.info.is_main:
            log.info("strategy %s, %s on %s (precision: %s)", tcfg.strategy, self.strategy.precision,
                     self.info.device.type, tcfg.precision)
        self.eval_set = self._eval_examples()

    def _load_checkpoint_weights(self, model) -> None:
        tag = self.ckpt.latest() if self.cfg.resume else None
        if not tag:
            return
        folder = self.ckpt.fetch(tag)
        self.state = self.ckpt.read_state(folder)
        where = storage.join(self.job.checkpoint_uri, tag)
        if self.state.get("stage", self.job.stage) != self.job.stage:
            raise RuntimeError(f"{where} is a {self.state['stage']!r} checkpoint, not {self.job.stage!r}: "
                               "give this stage its own train.checkpoint_dir")
        model.load_trainable_state_dict(self.ckpt.read_weights(folder))
        rank_state = None
        if self.state.get("world_size") == self.info.world_size:
            rank_state = self.ckpt.read_rank_state(folder)
        else:
            log.warning("checkpoint %s was written by %s processes, now %d: data positions restart",
                        tag, self.state.get("world_size"), self.info.world_size)
        log.info("resuming from %s (step %d)", where, self.state["step"])
        self._resume_from = (tag, folder, rank_state)

    def resume(self) -> int:
        """Optimizer, scheduler, RNG and data positions of the checkpoint ``setup`` found; the step to start at."""
        rank_state = None
        if self._resume_from is not None:
            tag, folder, rank_state = self._resume_from
            self.strategy.load_state(folder)
            if rank_state is not None:
                dist.set_rng_state(rank_state["rng"])
            dist.barrier()
            self.ckpt.cleanup(tag)
        self.start = self.global_step = int(self.state.get("step", 0))
        n = max(1, self.cfg.num_workers)
        positions = list((rank_state or {}).get("positions", [0] * n))
        self.positions = positions + [0] * (n - len(positions))
        return self.start

    def _eval_examples(self) -> list[dict[str, Any]]:
        tcfg, data = self.cfg, self.job.data_uri
        if not tcfg.eval_samples:
            return []
        args = (tcfg.eval_samples, tcfg.tasks, tcfg.caption_instructions[0], tcfg.seed, self.labels)
        examples = eval_examples(data, tcfg.eval_split, *args)
        if not examples and tcfg.eval_split != "test":
            examples = eval_examples(data, "test", *args)
        if self.labels is not None:
            self.labels.missing.clear()  # the eval set's misses are not training data
        return examples

    # ------------------------------------------------------------------------------ step / evaluate / save
    def step(self, batches: Iterator) -> tuple[float, float]:
        """One optimizer step over ``grad_accum`` micro-batches: (mean micro-batch loss, gradient norm)."""
        tcfg, info = self.cfg, self.info
        loss_sum = 0.0
        for micro in range(tcfg.grad_accum):
            batch, worker, pos, self.worker_counts[worker] = next(batches)
            self.positions[worker] = pos
            self._window.tokens += count_tokens(batch)
            out = self.strategy.micro_step(to_device(batch, info.device), last=micro == tcfg.grad_accum - 1)
            loss_sum += float(out.loss.detach())
        grad_norm = self.strategy.step()
        self.global_step += 1
        self._window.steps += 1
        return loss_sum / tcfg.grad_accum, grad_norm

    def evaluate(self) -> dict[str, float]:
        """Mean held-out loss per task on the fixed eval set (``eval/<task>_loss``), all ranks together."""
        return evaluate(self.strategy, self.eval_set, self.cfg.batch_size, self.info)

    def save(self) -> None:
        """A checkpoint of this step: weights, strategy state, each rank's RNG and data positions, the record."""
        tcfg, info = self.cfg, self.info
        state = {"stage": self.job.stage, "world_size": info.world_size, "strategy": tcfg.strategy,
                 "zero_stage": tcfg.zero_stage, "run_id": self.tracker.run_id if self.tracker.active else None,
                 "eval_before": self.eval_before, "train_loss": self.last_loss, "time": time.time()}
        rank_state = {"rng": dist.rng_state(), "positions": list(self.positions)}
        self.ckpt.save(self.global_step, self.strategy, state, rank_state)

    # ------------------------------------------------------------------------------ fit
    def fit(self) -> TrainResult:
        """Train from the resumed step to ``train.steps``; the result on every rank.

        Rank 0 logs into the job's MLflow run (``job.run_id``, opened by the caller's
        :class:`vlm.run_context.RunContext`; buffered, with system metrics), sets it RUNNING and closes it:
        FINISHED, or FAILED on an exception. Without a run id nothing is tracked."""
        from vlm import tracking

        if not self.job.run_id:
            return self._train()
        if self.info.is_main:
            tracking.configure(self.job.tracking_uri)
            log.info("logging to MLflow run %s%s", self.job.run_id,
                     f" (continued from step {self.start})" if self.start else "")
        with tracking.stage_run(self.job.stage, self.job.experiment, run_id=self.job.run_id, resume=True,
                                buffered=True, system_metrics=True) as run:
            self.tracker = run
            return self._train()

    def _train(self) -> TrainResult:
        tcfg = self.cfg
        if self.start == 0:
            self._log_params()
        self.eval_before = self.state.get("eval_before") or self.evaluate()
        if self.start == 0 and self.eval_before:
            self.tracker.log_metrics(self.eval_before, step=0)
            log.info("eval before training: %s", fmt(self.eval_before))
        ds = BatchDataset(self.shards, tcfg, self.info, self.strategy.model.collate, self.positions, self.labels)
        batches = iter(loader(ds, tcfg.num_workers))
        self._bar = self._progress()
        self.strategy.train(True)
        self._window = _Window()
        t_begin = time.perf_counter()
        while self.global_step < tcfg.steps:
            loss, grad_norm = self.step(batches)
            self._bar.update(1)
            step = self.global_step
            if tcfg.max_seconds and self._budget_spent(t_begin, tcfg.max_seconds):
                self.cfg = tcfg = tcfg.model_copy(update={"steps": step})  # time budget spent: the last step
            if step % tcfg.log_every == 0 or step == tcfg.steps:
                self._log_step(loss, grad_norm)
            if tcfg.eval_every and step % tcfg.eval_every == 0 and step < tcfg.steps:
                self.tracker.log_metrics(self.evaluate(), step=step)
                self._window.skip()
            if step % tcfg.checkpoint_every == 0 or step == tcfg.steps:
                self.save()
                self._window.skip()
        self._bar.close()
        return self.final_eval()

    def _budget_spent(self, t_begin: float, max_seconds: float) -> bool:
        """Rank 0's clock decides for every rank, so all stop on the same step (no rank left in a collective)."""
        spent = time.perf_counter() - t_begin >= max_seconds
        return bool(dist.broadcast_object(spent)) if self.info.distributed else spent

    def _progress(self):
        from vlm.progress import Progress

        return Progress(total=self.cfg.steps, initial=self.start, disable=not self.info.is_main, desc=self.job.stage,
                        unit="step")

    def _log_params(self) -> None:
        job, tcfg, info = self.job, self.cfg, self.info
        self.tracker.log_params({
            "stage": job.stage, "train": tcfg.model_dump(mode="json"), "model": job.model.model_dump(mode="json"),
            "world_size": info.world_size, "data_uri": job.data_uri, "output_uri": job.output_uri,
            "checkpoint_uri": job.checkpoint_uri, "params_trainable": self.counts["trainable"],
            "params_frozen": self.counts["frozen"], "init_from": job.init_from,
            "labels_uri": self.labels.labels_uri if self.labels else ""})
        self.tracker.set_tags({"vlm.strategy": tcfg.strategy, "vlm.device": info.device.type,
                               "vlm.precision": self.strategy.precision})

    def _log_step(self, loss: float, grad_norm: float) -> None:
        """Loss, lr, grad norm, throughput, memory and data counts of the window since the last logged step."""
        tcfg, info, w = self.cfg, self.info, self._window
        loss_sum, tokens = dist.all_reduce_sum([loss, w.tokens], info.device)
        self.last_loss = loss_sum / info.world_size
        elapsed = time.perf_counter() - w.t0
        samples = w.steps * tcfg.batch_size * tcfg.grad_accum * info.world_size
        self.throughput = {"samples_per_s": samples / elapsed, "tokens_per_s": tokens / elapsed}
        m = {"train/loss": self.last_loss, "train/lr": self.strategy.lr, "train/grad_norm": grad_norm,
             "perf/samples_per_s": self.throughput["samples_per_s"],
             "perf/tokens_per_s": self.throughput["tokens_per_s"],
             "perf/step_time_s": elapsed / w.steps, "perf/peak_mem_mb": peak_memory_mb(info.device)}
        if pflops := peak_flops(info.device):
            m["perf/mfu"] = self.throughput["tokens_per_s"] * flops_per_token(self.counts) / (pflops * info.world_size)
        m.update({f"data/{k}": v for k, v in self.data_counts().items()})
        self.tracker.log_metrics(m, step=self.global_step)
        self._bar.set_postfix_str(f"loss {self.last_loss:.4f} lr {self.strategy.lr:.2e} "
                                  f"{self.throughput['samples_per_s']:.1f} samples/s")
        self._window = _Window()

    def final_eval(self) -> TrainResult:
        """After the last step: the held-out eval, the model artefact (logged to the run), the held-out probe
        (``train.probe_images``, rank 0), the data counts."""
        metrics_after = self.evaluate()
        if metrics_after:
            self.tracker.log_metrics({k.replace("eval/", "eval/final_"): v for k, v in metrics_after.items()},
                                     step=self.global_step)
            log.info("eval after training: %s", fmt(metrics_after))
        self._save_model()
        probe = self._probe() if self.cfg.probe_images and self.info.is_main else {}
        if self.tracker.active:
            self.tracker.set_tags({"vlm.model_uri": self.job.output_uri, "vlm.checkpoint_uri": self.job.checkpoint_uri})
            self.tracker.log_artifact(str(storage.local_copy(self.job.output_uri)), "model")
        return self._result(metrics_after, probe)

    def _probe(self) -> dict[str, float]:
        """Held-out exact match per question type vs the text-only lookup (`vlm.train.recipe`), as probe/* metrics."""
        from vlm.train.recipe import probe, table

        tcfg = self.cfg
        metrics = probe(self.strategy.model, self.job.data_uri, tcfg.probe_split, tcfg.probe_images)["metrics"]
        self.tracker.log_metrics(metrics, step=tcfg.steps)
        log.info("held-out probe:\n%s", table(metrics))
        return metrics

    def data_counts(self) -> dict[str, int]:
        """This rank's data counters, all its dataloader workers together."""
        total: Counter[str] = Counter()
        for counts in self.worker_counts.values():
            total.update(counts)
        return dict(total)

    def _result(self, metrics_after: dict[str, float], probe: dict[str, float]) -> TrainResult:
        counts = self.data_counts()
        rejected = sum(v for k, v in counts.items() if k.startswith("rejected_")
                       and k.removeprefix("rejected_") not in SHARD_REASONS)
        names = list(self.labels.sources) if self.labels else []
        reasons = sorted(SAMPLE_REASONS)  # the same list on every rank
        totals = dist.all_reduce_sum([float(rejected)] + [float(counts.get(f"missing_label_{n}", 0)) for n in names]
                                     + [float(counts.get(f"rejected_{r}", 0)) for r in reasons], self.info.device)
        missing = dict(zip(names, (int(v) for v in totals[1:1 + len(names)])))
        by_reason = {r: int(v) for r, v in zip(reasons, totals[1 + len(names):]) if v}
        job, tcfg = self.job, self.cfg
        return TrainResult(
            stage=job.stage, strategy=tcfg.strategy, world_size=self.info.world_size, steps=self.global_step,
            resumed_from_step=self.start, final_loss=self.last_loss, eval_before=self.eval_before,
            eval_after=metrics_after, model_uri=job.output_uri, checkpoint_uri=job.checkpoint_uri,
            run_id=self.tracker.run_id or None, rejected_samples=int(totals[0]), rejected=by_reason,
            labels_uri=self.labels.labels_uri if self.labels else "", missing_labels=missing, probe=probe,
            throughput=self.throughput)

    def _save_model(self) -> None:
        """Write the model artefact (rank 0). Sharded strategies gather the trainable weights first."""
        tcfg, info = self.cfg, self.info
        sharded = (tcfg.strategy == "fsdp2" and info.distributed
                   or tcfg.strategy == "deepspeed" and tcfg.zero_stage == 3)
        weights = self.strategy.trainable_state_dict() if sharded else None
        if info.is_main:
            model = self.strategy.model
            if sharded:
                model = model_factory(self.factory)(self.strategy.model.config)
                model.load_trainable_state_dict(weights)
            model.save(self.job.output_uri)
            log.info("model artefact -> %s", self.job.output_uri)
        dist.barrier()


def run(job: TrainJob, factory: Callable | str | None = None) -> TrainResult:
    """Run ``job`` in this process (every process of a torchrun / PyTorchJob launch calls this)."""
    info = dist.init()
    try:
        trainer = Trainer(job, info, factory)
        trainer.setup()
        trainer.resume()
        result = trainer.fit()
        trainer.strategy.close()
        return result
    finally:
        dist.shutdown()
