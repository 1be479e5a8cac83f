"""Checkpoints to a local folder or an S3 prefix: complete and verified, or not used.

Layout under the checkpoint URI::

    step-000050/trainable.safetensors   full trainable weights (rank 0)
    step-000050/trainer.pt | deepspeed/ optimizer + scheduler state (the strategy decides the format)
    step-000050/rank-00000.safetensors  per-rank tensors (RNG states)
    step-000050/rank-00000.json         per-rank plain values (data positions, Python/NumPy RNG state)
    step-000050/state.json              the record: step, world size, strategy, tracking run id, metrics and
                                        ``files``: {relative path: {size, sha256}} of every file above (last)
    latest                              the tag of the newest published checkpoint (atomic write)

``state.json`` is written (on S3: uploaded) after every other file, then ``latest`` moves. On resume rank 0
checks the record of the newest checkpoint (every listed file present with its size and sha256; every rank's
state of the recorded world size listed); a bad one is skipped with a warning naming each bad file, the
previous one is tried, and when checkpoints exist but none is complete :class:`CheckpointError` names them.
Nothing is unpickled freely: rank state is safetensors + JSON, ``trainer.pt`` is read with
``torch.load(weights_only=True)`` (:func:`safe_torch_load`). Only the newest ``keep`` checkpoints are kept.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from vlm import storage
from vlm.run_context import CHECKPOINT_DIR_RE
from vlm.train import dist
from vlm.train.dist import DistInfo

log = logging.getLogger(__name__)
LATEST = "latest"
STATE = "state.json"
WEIGHTS = "trainable.safetensors"
TENSOR = "__tensor__"  # JSON placeholder of a tensor stored in the rank's safetensors file


class CheckpointError(RuntimeError):
    """Checkpoints exist but none is complete, or a verified file does not load. Names the URI and files."""


def tag_for(step: int) -> str:
    return f"step-{step:06d}"


def rank_files(rank: int) -> tuple[str, str]:
    return f"rank-{rank:05d}.json", f"rank-{rank:05d}.safetensors"


def safe_torch_load(path: Path, allowed: Iterable[type] = (), map_location: Any = "cpu") -> Any:
    """``torch.load`` without arbitrary unpickling (``weights_only=True``; ``allowed``: extra classes the
    caller's format needs). A file that needs anything else is refused with a :class:`CheckpointError`."""
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        raise CheckpointError(f"{path}: refused to load (not a plain tensor file: {str(exc).splitlines()[0]})") from exc


def file_record(folder: Path) -> dict[str, dict[str, Any]]:
    """``{relative path: {size, sha256}}`` of every file under ``folder`` (temporary files excluded)."""
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.endswith(".tmp")):
        out[path.relative_to(folder).as_posix()] = {"size": path.stat().st_size, "sha256": storage.sha256_file(path)}
    return out


def verify(folder: Path) -> tuple[dict[str, Any], list[str]]:
    """``(state, problems)`` of the checkpoint in local ``folder``; no problem = complete and intact."""
    path = folder / STATE
    if not path.is_file():
        return {}, [f"{STATE}: missing (the record is written last: the save did not finish)"]
    try:
        state = json.loads(path.read_text())
        files = state["files"]
        world = int(state["world_size"])
    except (ValueError, KeyError, TypeError) as exc:
        return {}, [f"{STATE}: not a checkpoint record ({type(exc).__name__}: {exc})"]
    if not isinstance(files, dict):
        return state, [f"{STATE}: 'files' is not a file record"]
    need = [WEIGHTS] + [name for r in range(world) for name in rank_files(r)]
    problems = [f"{name}: not in the file record of {world} rank(s)" for name in need if name not in files]
    for rel, rec in sorted(files.items()):
        p = folder / rel
        if not isinstance(rec, dict) or not {"size", "sha256"} <= set(rec):
            problems.append(f"{rel}: no size and sha256 in the record")
        elif rel.startswith("/") or ".." in Path(rel).parts:
            problems.append(f"{rel}: not a path inside the checkpoint")
        elif not p.is_file():
            problems.append(f"{rel}: missing")
        elif p.stat().st_size != rec["size"]:
            problems.append(f"{rel}: size mismatch ({p.stat().st_size} bytes, recorded {rec['size']})")
        elif storage.sha256_file(p) != rec["sha256"]:
            problems.append(f"{rel}: sha256 mismatch (same size, different content)")
    return state, problems


class CheckpointManager:
    def __init__(self, uri: str, info: DistInfo, keep: int = 2):
        uri = uri.rstrip("/")
        self.uri = uri if storage.is_s3(uri) else os.path.abspath(storage._local(uri))
        self.info, self.keep = info, keep
        digest = hashlib.sha256(self.uri.encode()).hexdigest()[:12]
        cache = Path(os.environ.get("VLM_CACHE_DIR", Path.home() / ".cache" / "vlm"))
        self.staging = cache / "train-staging" / digest
        self._fetched: set[str] = set()

    def folder(self, tag: str) -> Path:
        """Where a checkpoint's files are written/read locally (the checkpoint itself when local)."""
        if storage.is_s3(self.uri):
            return self.staging / tag
        return Path(storage.join(self.uri, tag))

    # ------------------------------------------------------------------ find (collective)
    def latest(self) -> str | None:
        """The newest complete, verified checkpoint's tag (rank 0 decides, every rank gets its answer), or None
        when there is none. Raises :class:`CheckpointError` when checkpoints exist but none is complete."""
        answer: tuple[str | None, str | None] = (None, None)
        if self.info.is_main:
            try:
                answer = (self._choose(), None)
            except CheckpointError as exc:
                answer = (None, str(exc))
        tag, error = dist.broadcast_object(answer)
        if error:
            raise CheckpointError(error)
        return tag

    def _candidates(self) -> list[str]:
        """Tags to try, newest first: the one ``latest`` names, then the older ones that hold a record."""
        parts = [_rel(u, self.uri).split("/") for u in storage.list_uris(self.uri)]
        present = {int(m.group(1)) for p in parts if (m := CHECKPOINT_DIR_RE.match(p[0]))}
        recorded = {int(m.group(1)) for p in parts if (m := CHECKPOINT_DIR_RE.match(p[0])) and p[1:] == [STATE]}
        named = None
        pointer = storage.join(self.uri, LATEST)
        if storage.exists(pointer):
            text = storage.read_text(pointer).strip()
            m = CHECKPOINT_DIR_RE.match(text)
            named = int(m.group(1)) if m and int(m.group(1)) in present else None
            if named is None:
                log.warning("%s names %r, which is not there; ignoring it", pointer, text)
        steps = ({named} if named is not None else set()) | {s for s in recorded if named is None or s < named}
        for s in sorted(present - steps):
            log.info("%s was never published (a save that did not finish); skipping it",
                     storage.join(self.uri, tag_for(s)))
        return [tag_for(s) for s in sorted(steps, reverse=True)]

    def _choose(self) -> str | None:
        bad: list[str] = []
        for tag in self._candidates():
            folder = self._download(tag)
            _, problems = verify(folder)
            if not problems:
                if bad:
                    log.warning("resuming from the older complete checkpoint %s", storage.join(self.uri, tag))
                return tag
            where = storage.join(self.uri, tag)
            log.warning("checkpoint %s is incomplete or corrupt, skipping it: %s", where, "; ".join(problems))
            bad.append(f"{where}: " + "; ".join(problems))
            self.cleanup(tag)
        if bad:
            raise CheckpointError(f"no complete checkpoint under {self.uri} (refusing to start from scratch over "
                                  "them; delete them to start anew):\n  " + "\n  ".join(bad))
        return None

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
            _atomic(folder / WEIGHTS, lambda p: save_file(weights, str(p)))
        strategy.save_state(folder)
        tensors: dict[str, torch.Tensor] = {}
        values = _split(rank_state, tensors, "")
        meta, data = rank_files(self.info.rank)
        _atomic(folder / data, lambda p: save_file(tensors, str(p)))
        _atomic(folder / meta, lambda p: p.write_text(json.dumps(values)))
        dist.barrier()
        s3 = storage.is_s3(self.uri)
        # each node's local rank 0 records (and on S3 uploads) what its node wrote; local folders are shared
        mine = file_record(folder) if self.info.local_rank == 0 and (s3 or self.info.is_main) else {}
        if s3 and self.info.local_rank == 0:
            if self.info.is_main and storage.list_uris(storage.join(self.uri, tag)):
                storage.delete(storage.join(self.uri, tag), recursive=True)  # leftovers of a crashed attempt
            dist.barrier()
            storage.upload_tree(folder, storage.join(self.uri, tag))
        elif s3:
            dist.barrier()
        files: dict[str, dict[str, Any]] = {}
        for record in dist.gather_objects(mine):
            files.update(record)
        if self.info.is_main:
            text = json.dumps({**state, "step": step, "tag": tag, "files": files}, indent=2)
            if s3:
                storage.write_text(storage.join(self.uri, tag, STATE), text)  # the record goes up last
            else:
                _atomic(folder / STATE, lambda p: p.write_text(text))
            storage.write_text(storage.join(self.uri, LATEST), tag)
            self._prune(step)
            log.info("checkpoint %s -> %s (%d files)", tag, storage.join(self.uri, tag), len(files))
        dist.barrier()
        if s3 and self.info.local_rank == 0:
            shutil.rmtree(folder, ignore_errors=True)
        return tag

    def _prune(self, step: int) -> None:
        steps = sorted({int(m.group(1)) for u in storage.list_uris(self.uri)
                        if (m := CHECKPOINT_DIR_RE.match(_rel(u, self.uri).split("/")[0]))})
        done = [s for s in steps if s <= step]
        for old in done[: max(0, len(done) - self.keep)]:
            storage.delete(storage.join(self.uri, tag_for(old)), recursive=True)

    # ------------------------------------------------------------------ load (collective)
    def _download(self, tag: str) -> Path:
        """Checkpoint ``tag`` in a local folder: its record, then the files it lists (S3); as is when local."""
        folder = self.folder(tag)
        if not storage.is_s3(self.uri) or tag in self._fetched:
            return folder
        shutil.rmtree(folder, ignore_errors=True)
        remote = storage.join(self.uri, tag)
        present = {_rel(u, remote) for u in storage.list_uris(remote)}
        if STATE in present:
            storage.download_file(storage.join(remote, STATE), folder / STATE)
            try:
                listed = list(json.loads((folder / STATE).read_text()).get("files", {}))
            except (ValueError, AttributeError):
                listed = []
            for rel in listed:
                if rel in present and ".." not in Path(rel).parts:
                    storage.download_file(storage.join(remote, rel), folder / rel)
        self._fetched.add(tag)
        return folder

    def fetch(self, tag: str) -> Path:
        """A local folder holding checkpoint ``tag`` (chosen by :meth:`latest`) on every node."""
        if self.info.local_rank == 0:
            self._download(tag)
        dist.barrier()
        return self.folder(tag)

    @staticmethod
    def read_state(folder: Path) -> dict[str, Any]:
        return json.loads((folder / STATE).read_text())

    @staticmethod
    def read_weights(folder: Path) -> dict[str, torch.Tensor]:
        try:
            return load_file(str(folder / WEIGHTS))
        except SafetensorError as exc:
            raise CheckpointError(f"{folder / WEIGHTS}: not a safetensors file ({exc})") from exc

    def read_rank_state(self, folder: Path) -> dict[str, Any]:
        """This rank's state as saved (tensors back in place of their JSON placeholders)."""
        meta, data = (folder / name for name in rank_files(self.info.rank))
        try:
            tensors = load_file(str(data))
        except (SafetensorError, FileNotFoundError) as exc:
            raise CheckpointError(f"{data}: not a safetensors file ({exc})") from exc
        try:
            return _join(json.loads(meta.read_text()), tensors)
        except (ValueError, KeyError, FileNotFoundError) as exc:
            raise CheckpointError(f"{meta}: not this rank's state ({type(exc).__name__}: {exc})") from exc

    def cleanup(self, tag: str) -> None:
        if storage.is_s3(self.uri) and self.info.local_rank == 0:
            shutil.rmtree(self.folder(tag), ignore_errors=True)
            self._fetched.discard(tag)


def _split(obj: Any, tensors: dict[str, torch.Tensor], key: str) -> Any:
    """``obj`` as JSON-able values, each tensor moved to ``tensors`` and replaced by ``{TENSOR: key}``."""
    if isinstance(obj, torch.Tensor):
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {TENSOR: key}
    if isinstance(obj, dict):
        return {str(k): _split(v, tensors, f"{key}.{k}" if key else str(k)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_split(v, tensors, f"{key}.{i}") for i, v in enumerate(obj)]
    return obj


def _join(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {TENSOR}:
            return tensors[obj[TENSOR]]
        return {k: _join(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_join(v, tensors) for v in obj]
    return obj


def _rel(uri: str, base: str) -> str:
    return uri[len(base.rstrip("/")) + 1 :].replace(os.sep, "/")


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)
