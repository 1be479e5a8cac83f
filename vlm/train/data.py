"""Training data: dataset shards -> samples -> task examples, as a deterministic, resumable stream.

The stream is infinite (epoch after epoch, each reshuffled with ``seed + epoch``), split across ranks and
dataloader workers without duplicates, and addressed by position: the n-th example a rank's worker sees
depends only on ``(seed, rank, world_size, worker, num_workers, n)``. A checkpoint stores ``n``; resuming
rebuilds the stream and skips ``n`` examples (only the json is read for skipped samples; images are decoded
for this worker's samples only). Reading, partitioning and shuffling are :class:`vlm.data.format.ShardStream`
(the one shard reader). Bad input (``docs/formats.md``, "Damaged input"): every shard is checked against
the manifest's size and sha256 before any of its samples is read; a mismatching or truncated shard is
skipped and undecodable samples are dropped, each counted in ``rejected`` by reason and logged as a warning
naming the shard. A rank left with no sample at all stops with :class:`DataError`.

For a model with expert inputs, an :class:`vlm.train.labels.ExpertAttacher` adds each sample's expert maps by
key after decoding (skipped samples never touch the labels, so positions are unchanged).
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from vlm.data import format as fmt
from vlm.data.format import decode

if TYPE_CHECKING:
    from vlm.train.labels import ExpertAttacher

log = logging.getLogger(__name__)

__all__ = ["DataError", "list_shards", "decode", "SampleStream", "ExampleBuilder", "ExampleStream", "eval_examples"]


class DataError(fmt.FormatError):
    """The dataset URI holds no usable shards."""


def list_shards(data_uri: str, split: str) -> list[fmt.ShardRef]:
    """The shards of ``split`` under ``data_uri`` (``{split}-{index:06d}.tar``) in index order, with what the
    manifest says of each (for the checksum check)."""
    try:
        return fmt.find_shards(data_uri, split)
    except FileNotFoundError:
        return []


class SampleStream:
    """Infinite, deterministic stream of raw samples for one rank (and one dataloader worker).

    Epoch ``e`` visits the shards in an order shuffled by ``(seed, e)``. Shards are dealt to the
    ``world_size x num_workers`` consumers round-robin when there are enough, else samples are
    (:func:`vlm.data.format.partition`). A shuffle buffer (seeded per epoch and consumer) mixes samples.
    """

    def __init__(self, shards: list[str | fmt.ShardRef], rank: int = 0, world_size: int = 1, seed: int = 0,
                 shuffle_buffer: int = 0, infinite: bool = True, worker: int = 0, num_workers: int = 1):
        if not shards:
            raise DataError("no shards to read")
        self.shards, self.rank, self.world_size = list(shards), rank, world_size
        self.seed, self.shuffle_buffer, self.infinite = seed, shuffle_buffer, infinite
        self.worker, self.num_workers = worker, num_workers
        self._stream = fmt.ShardStream(self.shards, rank * num_workers + worker, world_size * num_workers, seed,
                                       shuffle_shards=infinite, shuffle_buffer=shuffle_buffer, resample=infinite,
                                       verify=True, on_error="skip")
        self.rejected: Counter[str] = self._stream.rejected

    def iter_raw(self) -> Iterator[tuple[int, dict[str, Any]]]:
        """``(epoch, raw sample)`` pairs of this rank (and worker), forever when ``infinite``."""
        try:
            yield from self._stream
        except fmt.FormatError as exc:
            raise DataError(f"rank {self.rank} worker {self.worker}: {exc}") from None


class ExampleBuilder:
    """Sample -> training example ``dict(image, instruction, answer)`` for one of the configured tasks.

    Caption: a random instruction from ``caption_instructions``, answer = the caption. VQA: a random QA
    pair (with ``balance_answers``: one of the sample's distinct answers at random, then one of its questions,
    so that a common answer such as "no" does not drown the rest). A sample that fits several tasks picks one
    with the odds in ``task_weights`` (1 each unless given). The choice is seeded by ``(seed, epoch, key)`` so it is reproducible and needs no saved state.
    Samples that fit no task are rejected and counted by reason.
    """

    def __init__(self, tasks: list[str], caption_instructions: list[str], seed: int = 0,
                 task_weights: dict[str, float] | None = None, balance_answers: bool = False):
        self.tasks, self.instructions, self.seed = list(tasks), list(caption_instructions), seed
        self.balance_answers = balance_answers
        self.weights = {t: float((task_weights or {}).get(t, 1.0)) for t in self.tasks}
        self.rejected: Counter[str] = Counter()

    def candidates(self, meta: dict[str, Any]) -> list[str]:
        out = []
        if "caption" in self.tasks and isinstance(meta.get("caption"), str) and meta["caption"].strip():
            out.append("caption")
        if "vqa" in self.tasks and _qa_pairs(meta):
            out.append("vqa")
        return [t for t in out if self.weights[t] > 0]

    def build(self, sample: dict[str, Any], epoch: int = 0, task: str | None = None) -> dict[str, Any] | None:
        meta = sample["meta"]
        tasks = [task] if task else self.candidates(meta)
        if task and task not in self.candidates(meta):
            tasks = []
        if not tasks:
            self.rejected[f"no_{task or 'task'}_annotation"] += 1
            return None
        rng = random.Random(f"{self.seed}-{epoch}-{sample['__key__']}")
        weights = [self.weights[t] for t in tasks]
        chosen = rng.choice(tasks) if len(set(weights)) == 1 else rng.choices(tasks, weights)[0]
        extra = {"experts": sample["experts"]} if "experts" in sample else {}
        if chosen == "caption":
            return {"image": sample["image"], "instruction": rng.choice(self.instructions),
                    "answer": meta["caption"].strip(), "task": "caption", "key": sample["__key__"], **extra}
        pairs = _qa_pairs(meta)
        if self.balance_answers:
            answer = rng.choice(sorted({a for _, a in pairs}))
            pairs = [p for p in pairs if p[1] == answer]
        question, answer = rng.choice(pairs)
        caption = meta.get("caption") if isinstance(meta.get("caption"), str) else None  # for model.describe_first
        return {"image": sample["image"], "instruction": question, "answer": answer, "task": "vqa",
                "caption": caption, "key": sample["__key__"], **extra}


def _qa_pairs(meta: dict[str, Any]) -> list[tuple[str, str]]:
    return [(qa.question, qa.answer) for qa in fmt.parse_qa(meta.get("qa"))[0]]


class ExampleStream:
    """Position-addressed examples for one rank (or worker): ``examples(skip)`` -> ``(position, example)``.

    The position counts the samples consumed that fit a task, decodable or not, so skipping needs no
    image decode. Undecodable samples and samples without a usable annotation are rejected and counted.
    With ``labels``, each example carries its expert maps (``experts``).
    """

    def __init__(self, samples: SampleStream, builder: ExampleBuilder, labels: ExpertAttacher | None = None):
        self.samples, self.builder, self.labels = samples, builder, labels

    @property
    def rejected(self) -> Counter[str]:
        return self.samples.rejected + self.builder.rejected

    def examples(self, skip: int = 0) -> Iterator[tuple[int, dict[str, Any]]]:
        n = 0
        for epoch, raw in self.samples.iter_raw():
            try:  # cheap pre-check on the json so that skipped samples need no image decode
                meta = fmt.sample_meta(raw)
            except fmt.SampleError:
                meta = None
            if meta is None or not self.builder.candidates(meta):
                if n >= skip:  # count once, not again while skipping after a resume
                    self.samples.rejected["bad_json" if meta is None else "no_task_annotation"] += 1
                continue
            n += 1
            if n <= skip:
                continue
            try:
                sample = decode(raw)
            except fmt.SampleError as exc:
                self.samples.rejected[exc.reason] += 1
                log.warning("rejected sample %s of %s: %s", raw["__key__"], raw["__shard__"], exc)
                continue
            if self.labels is not None:
                sample = self.labels.attach(sample, raw.get("__shard__"))
            ex = self.builder.build(sample, epoch)
            if ex is not None:
                yield n, ex


def eval_examples(data_uri: str, split: str, n: int, tasks: list[str], instruction: str,
                  seed: int = 0, labels: ExpertAttacher | None = None) -> list[dict[str, Any]]:
    """A fixed, ordered eval set: the first ``n`` usable samples of ``split`` (one example per task each),
    with their expert maps when ``labels`` is given."""
    shards = list_shards(data_uri, split)
    if not shards:
        return []
    out: list[dict[str, Any]] = []
    builder = ExampleBuilder(tasks, [instruction], seed)
    for _, raw in fmt.ShardStream(shards, verify=True, on_error="skip"):
        if len(out) >= n:
            break
        try:
            sample = decode(raw)
        except fmt.SampleError as exc:
            log.warning("eval set: skipping sample %s of %s: %s", raw["__key__"], raw["__shard__"], exc)
            continue
        if labels is not None:
            sample = labels.attach(sample, raw.get("__shard__"))
        for task in tasks:
            ex = builder.build(sample, 0, task=task)
            if ex is not None and len(out) < n:
                out.append(ex)
    return out
