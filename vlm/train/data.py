"""Training data: WebDataset shards -> samples -> task examples, as a deterministic, resumable stream.

The stream is infinite (epoch after epoch, each reshuffled with ``seed + epoch``), split across ranks and
dataloader workers without duplicates, and addressed by position: the n-th example a rank sees depends only
on ``(seed, rank, world_size, n)``. A checkpoint stores ``n``; resuming rebuilds the stream and skips ``n``
examples (only keys are read for skipped samples; images are decoded for this rank's samples only).

Samples follow ../shared/DESIGN.md: ``{key}.jpg|png|webp`` + ``{key}.json`` (caption, captions, qa, ...).
For a model with expert inputs, an :class:`vlm.train.labels.ExpertAttacher` adds each sample's expert maps by
key after decoding (skipped samples never touch the labels, so positions are unchanged).
"""

from __future__ import annotations

import io
import json
import logging
import random
import tarfile
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from vlm import storage

if TYPE_CHECKING:
    from vlm.train.labels import ExpertAttacher

log = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


class DataError(RuntimeError):
    """The dataset URI holds no usable shards."""


def list_shards(data_uri: str, split: str) -> list[str]:
    """Shard URIs of ``split`` under ``data_uri`` (``{split}-{index:06d}.tar``), in index order."""
    manifest_uri = storage.join(data_uri, "manifest.json")
    names: list[str] = []
    if storage.exists(manifest_uri):
        try:
            manifest = json.loads(storage.read_text(manifest_uri))
            shards = manifest.get("shards", [])
            items = shards.items() if isinstance(shards, dict) else [(s.get("name") or s.get("path") or s.get("file"), s)
                                                                        for s in shards if isinstance(s, dict)]
            names = [str(n) for n, _ in items if n and str(n).rsplit("/", 1)[-1].startswith(f"{split}-")]
        except (ValueError, AttributeError) as exc:
            log.warning("%s is not a readable manifest (%s); listing shards instead", manifest_uri, exc)
    if names:
        return sorted(n if "://" in n or n.startswith("/") else storage.join(data_uri, n) for n in names)
    return sorted(u for u in storage.list_uris(data_uri) if u.rsplit("/", 1)[-1].startswith(f"{split}-")
                  and u.endswith(".tar"))


def _split_key(name: str) -> tuple[str, str]:
    base = name.rsplit("/", 1)[-1]
    key, _, ext = base.partition(".")
    prefix = name[: len(name) - len(base)]
    return prefix + key, ext.lower()


def iter_raw(shard_uri: str) -> Iterator[dict[str, bytes | str]]:
    """Raw samples of one shard: ``{"__key__": key, ext: bytes, ...}``, members grouped by key."""
    with storage.open_read(shard_uri) as fh, tarfile.open(fileobj=fh, mode="r|*") as tar:
        current: dict[str, Any] | None = None
        for member in tar:
            if not member.isfile():
                continue
            key, ext = _split_key(member.name)
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
            if current is not None and current["__key__"] != key:
                yield current
                current = None
            if current is None:
                current = {"__key__": key, "__shard__": shard_uri}
            current[ext] = data
        if current is not None:
            yield current


def decode(raw: dict[str, Any]) -> dict[str, Any]:
    """Raw members -> ``{"__key__", "image": PIL RGB, "meta": dict}`` (the reader's sample contract)."""
    from PIL import Image

    ext = next((e for e in IMAGE_EXTS if e in raw), None)
    if ext is None:
        raise ValueError("no image member")
    if "json" not in raw:
        raise ValueError("no json member")
    image = Image.open(io.BytesIO(raw[ext]))
    image.load()
    meta = json.loads(raw["json"])
    if not isinstance(meta, dict):
        raise ValueError("json member is not an object")
    return {"__key__": raw["__key__"], "image": image.convert("RGB"), "meta": meta}


class SampleStream:
    """Infinite, deterministic stream of decoded samples for one rank (and one dataloader worker).

    Epoch ``e`` visits the shards in an order shuffled by ``seed + e``. With at least ``world_size``
    shards, shards are dealt to ranks round-robin; otherwise samples are. A shuffle buffer (seeded per
    epoch and rank) mixes samples. ``skip`` examples are passed over without decoding images.
    """

    def __init__(self, shards: list[str], rank: int = 0, world_size: int = 1, seed: int = 0,
                 shuffle_buffer: int = 0, infinite: bool = True, worker: int = 0, num_workers: int = 1):
        if not shards:
            raise DataError("no shards to read")
        self.shards, self.rank, self.world_size = list(shards), rank, world_size
        self.seed, self.shuffle_buffer, self.infinite = seed, shuffle_buffer, infinite
        self.worker, self.num_workers = worker, num_workers
        self.rejected: Counter[str] = Counter()

    def _epoch_raw(self, epoch: int) -> Iterator[dict[str, Any]]:
        order = list(self.shards)
        if self.infinite:
            random.Random(self.seed + epoch).shuffle(order)
        by_shard = len(order) >= self.world_size
        if by_shard:
            order = order[self.rank :: self.world_size]
        i = 0
        for shard in order:
            for raw in iter_raw(shard):
                if by_shard or i % self.world_size == self.rank:
                    yield raw
                i += 1

    def _shuffled(self, epoch: int) -> Iterator[dict[str, Any]]:
        it = self._epoch_raw(epoch)
        if self.shuffle_buffer <= 1:
            yield from it
            return
        rng = random.Random(f"{self.seed}-{epoch}-{self.rank}")
        buf: list[dict[str, Any]] = []
        for raw in it:
            buf.append(raw)
            if len(buf) >= self.shuffle_buffer:
                j = rng.randrange(len(buf))
                buf[j], buf[-1] = buf[-1], buf[j]
                yield buf.pop()
        rng.shuffle(buf)
        yield from buf

    def iter_raw(self) -> Iterator[tuple[int, dict[str, Any]]]:
        """``(epoch, raw sample)`` pairs of this rank (and worker), forever when ``infinite``."""
        epoch = 0
        n = 0
        while True:
            produced = False
            for raw in self._shuffled(epoch):
                produced = True
                if n % self.num_workers == self.worker:
                    yield epoch, raw
                n += 1
            if not produced:
                raise DataError(f"rank {self.rank} got no samples from {len(self.shards)} shard(s)")
            if not self.infinite:
                return
            epoch += 1


class ExampleBuilder:
    """Sample -> training example ``dict(image, instruction, answer)`` for one of the configured tasks.

    Caption: a random instruction from ``caption_instructions``, answer = the caption. VQA: a random QA
    pair. A sample that fits several tasks picks one with the odds in ``task_weights`` (1 each unless
    given). The choice is seeded by ``(seed, epoch, key)`` so it is reproducible and needs no saved state.
    Samples that fit no task are rejected and counted by reason.
    """

    def __init__(self, tasks: list[str], caption_instructions: list[str], seed: int = 0,
                 task_weights: dict[str, float] | None = None):
        self.tasks, self.instructions, self.seed = list(tasks), list(caption_instructions), seed
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
        question, answer = rng.choice(_qa_pairs(meta))
        return {"image": sample["image"], "instruction": question, "answer": answer, "task": "vqa",
                "key": sample["__key__"], **extra}


def _qa_pairs(meta: dict[str, Any]) -> list[tuple[str, str]]:
    pairs = []
    for qa in meta.get("qa") or []:
        if not isinstance(qa, dict):
            continue
        q = qa.get("question")
        answers = qa.get("answers") or ([qa["answer"]] if qa.get("answer") else [])
        if isinstance(q, str) and q.strip() and answers and isinstance(answers[0], str) and answers[0].strip():
            pairs.append((q.strip(), Counter(answers).most_common(1)[0][0].strip()))
    return pairs


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
                meta = json.loads(raw["json"]) if "json" in raw else None
            except ValueError:
                meta = None
            if not isinstance(meta, dict) or not self.builder.candidates(meta):
                if n >= skip:  # count once, not again while skipping after a resume
                    self.samples.rejected["bad_json" if not isinstance(meta, dict) else "no_task_annotation"] += 1
                continue
            n += 1
            if n <= skip:
                continue
            try:
                sample = decode(raw)
            except Exception as exc:  # noqa: BLE001 - any decode failure is a counted rejection
                self.samples.rejected["undecodable"] += 1
                log.warning("rejected sample %s: %s", raw.get("__key__"), exc)
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
    for raw in (r for s in shards for r in iter_raw(s)):
        if len(out) >= n:
            break
        try:
            sample = decode(raw)
        except Exception:  # noqa: BLE001
            continue
        if labels is not None:
            sample = labels.attach(sample, raw.get("__shard__"))
        for task in tasks:
            ex = builder.build(sample, 0, task=task)
            if ex is not None and len(out) < n:
                out.append(ex)
    return out
