"""Checkpoints to a local folder or an S3 prefix, published atomically through a ``latest`` pointer.

Layout under the checkpoint URI::

    step-000050/trainable.safetensors   full trainable weights (rank 0)
    step-000050/trainer.pt | deepspeed/ optimizer + scheduler state (the strategy decides the format)
    step-000050/rank-00000.pt           per-rank RNG states and data positions
    step-000050/state.json              step, world size, strategy, tracking run id, metrics (written last)
    latest                              the tag of the newest complete checkpoint (atomic write)

A checkpoint is complete once ``latest`` names it; a crash mid-save leaves ``latest`` on the previous one.
For S3 the files are staged in a local folder and uploaded by each node's local rank 0 before ``latest``
moves. Only the newest ``keep`` checkpoints are kept.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from vlm import storage
from vlm.train import dist
from vlm.train.dist import DistInfo

log = logging.getLogger(__name__)
LATEST = "latest"
STEP_RE = re.compile(r"^step-(\d+)$")


def tag_for(step: int) -> str:
    return f"step-{step:06d}"


class CheckpointManager:
    def __init__(self, uri: str, info: DistInfo, keep: int = 2):
        uri = uri.rstrip("/")
        self.uri = uri if storage.is_s3(uri) else os.path.abspath(storage._local(uri))
        self.info, self.keep = info, keep
        digest = hashlib.sha256(self.uri.encode()).hexdigest()[:12]
        cache = Path(os.environ.get("VLM_CACHE_DIR", Path.home() / ".cache" / "vlm"))
        self.staging = cache / "train-staging" / digest

    def folder(self, tag: str) -> Path:
        """Where a checkpoint's files are written/read locally (the checkpoint itself when local)."""
        if storage.is_s3(self.uri):
            return self.staging / tag
        return Path(storage.join(self.uri, tag))

    # ------------------------------------------------------------------ find
    def latest(self) -> str | None:
        """The newest complete checkpoint's tag (same answer on every rank), or None."""
        tag = None
        if self.info.is_main:
            pointer = storage.join(self.uri, LATEST)
            if storage.exists(pointer):
                tag = storage.read_text(pointer).strip() or None
                if tag and not storage.exists(storage.join(self.uri, tag, "state.json")):
                    log.warning("%s names %s, which has no state.json; ignoring it", pointer, tag)
                    tag = None
        return dist.broadcast_object(tag)

    # ------------------------------------------------------------------ save (collective)
    def save(self, step: int, strategy, state: dict[str, Any], rank_state: dict[str, Any]) -> str:
        tag = tag_for(step)
        folder = self.folder(tag)
        if self.info.local_rank == 0 and folder.exists():
            shutil.rmtree(folder)  # a partial save of the same step from a crashed attempt
        dist.barrier()
        folder.mkdir(parents=True, exist_ok=True)
        weights = strategy.trainable_state_dict()
        if self.info.is_main:
            _atomic(folder / "trainable.safetensors", lambda p: save_file(weights, str(p)))
        strategy.save_state(folder)
        _atomic(folder / f"rank-{self.info.rank:05d}.pt", lambda p: torch.save(rank_state, p))
        if self.info.is_main:
            (folder / "state.json").write_text(json.dumps({**state, "step": step, "tag": tag}, indent=2))
        dist.barrier()
        if storage.is_s3(self.uri):
            if self.info.local_rank == 0:
                storage.upload_tree(folder, storage.join(self.uri, tag))
            dist.barrier()
        if self.info.is_main:
            storage.write_text(storage.join(self.uri, LATEST), tag)
            self._prune(step)
            log.info("checkpoint %s -> %s", tag, storage.join(self.uri, tag))
        dist.barrier()
        if storage.is_s3(self.uri) and self.info.local_rank == 0:
            shutil.rmtree(folder, ignore_errors=True)
        return tag

    def _prune(self, step: int) -> None:
        steps = sorted({int(m.group(1)) for u in storage.list_uris(self.uri)
                        if (m := STEP_RE.match(_rel(u, self.uri).split("/")[0]))})
        done = [s for s in steps if s <= step]
        for old in done[: max(0, len(done) - self.keep)]:
            storage.delete(storage.join(self.uri, tag_for(old)), recursive=True)

    # ------------------------------------------------------------------ load (collective)
    def fetch(self, tag: str) -> Path:
        """A local folder holding checkpoint ``tag`` on every node."""
        folder = self.folder(tag)
        if storage.is_s3(self.uri):
            if self.info.local_rank == 0:
                shutil.rmtree(folder, ignore_errors=True)
                for uri in storage.list_uris(storage.join(self.uri, tag)):
                    storage.download_file(uri, folder / _rel(uri, storage.join(self.uri, tag)))
            dist.barrier()
        return folder

    @staticmethod
    def read_state(folder: Path) -> dict[str, Any]:
        return json.loads((folder / "state.json").read_text())

    @staticmethod
    def read_weights(folder: Path) -> dict[str, torch.Tensor]:
        return load_file(str(folder / "trainable.safetensors"))

    def read_rank_state(self, folder: Path) -> dict[str, Any] | None:
        path = folder / f"rank-{self.info.rank:05d}.pt"
        return torch.load(path, map_location="cpu", weights_only=False) if path.exists() else None

    def cleanup(self, tag: str) -> None:
        if storage.is_s3(self.uri) and self.info.local_rank == 0:
            shutil.rmtree(self.folder(tag), ignore_errors=True)


def _rel(uri: str, base: str) -> str:
    return uri[len(base.rstrip("/")) + 1 :].replace(os.sep, "/")


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)
