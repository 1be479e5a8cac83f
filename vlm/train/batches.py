"""This rank's training batches: the shard stream -> examples -> collated batches, with data positions and counts."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

from vlm.train import dist
from vlm.train.config import TrainConfig
from vlm.train.data import ExampleBuilder, ExampleStream, SampleStream
from vlm.train.labels import ExpertAttacher

MODEL_KEYS = ("image", "instruction", "answer", "prompt", "experts", "task", "caption")  # what collate reads


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

    def __iter__(self) -> Iterator[tuple[Any, int, int, dict[str, int]]]:
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


def loader(ds: BatchDataset, num_workers: int) -> torch.utils.data.DataLoader:
    kw: dict[str, Any] = {}
    if num_workers > 0:
        kw = {"num_workers": num_workers, "multiprocessing_context": "fork", "prefetch_factor": 2,
              "persistent_workers": False}
    return torch.utils.data.DataLoader(ds, batch_size=None, **kw)


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def count_tokens(batch: dict[str, Any]) -> int:
    for key in ("attention_mask", "input_ids", "labels"):
        value = batch.get(key) if isinstance(batch, dict) else None
        if isinstance(value, torch.Tensor):
            return int(value.sum()) if key == "attention_mask" else int(value.numel())
    return 0
