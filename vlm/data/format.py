"""The one owner of the on-disk dataset format (``docs/formats.md``): shards, manifest, samples, QA.

Every stage reads and writes datasets through this module: sharding (data shards), experts (reads data
shards, writes label shards), training, curation (the curated set), evaluation, probes and benchmarks.

- **Naming**: ``{split}-{index:06d}.tar`` (:func:`shard_name`); a member ``dir/abc.edges.png`` belongs to
  sample ``dir/abc`` with extension ``edges.png`` (:func:`split_key`, WebDataset's own rule).
- **Manifest** (:class:`Manifest`, :func:`read_manifest`, :func:`write_manifest`): ``manifest.json`` next to
  the shards; per shard its split, sample count, size and sha256.
- **Samples**: a raw sample is WebDataset's dict ``{"__key__", "__shard__", ext: bytes}``; :func:`decode`
  turns it into the reader contract ``{"__key__", "__shard__", "image": PIL RGB, "meta": dict}``.
  :class:`QA` is the one rule for question-answer records (``answers`` list, or a single ``answer``).
- **Writing**: :class:`ShardWriter` / :func:`write_shard` (atomic, deterministic bytes, sha256 while writing).
- **Reading**: :func:`iter_shard` (one shard, local / S3 / any webdataset URL, ``verify`` against the
  manifest's sha256 and size, ``on_error`` raise or counted skip), :class:`ShardStream` (rank x dataloader
  worker partition without duplicates, shuffled shard order, shuffle buffer, resampling, epochs) and
  :func:`iter_samples` (decoded samples of a dataset split). Exact resume is by position: a stream is a pure
  function of ``(shards, seed, consumer, consumers)``, so a consumer skips ``n`` samples to resume.
- **Expert labels**: ``{labels}/{expert}/{data shard name}`` with ``{key}.{expert}.png`` (+ ``.json``) written
  by the same :class:`ShardWriter`, and the ``labels.json`` index (:func:`read_labels_index`).
- **Foreign tars** (input to the sharding stage): :func:`scan_tar` groups members by sample without reading
  their bytes and reports hostile members (links, special files, names escaping the root) per sample.

Built on the ``webdataset`` library where it fits: shards are written with ``webdataset.TarWriter`` (fixed
mtime/owner/mode, so identical input gives identical bytes), sample keys follow its ``base_plus_ext`` rule,
and ``s3://`` is registered as a ``webdataset.gopen`` scheme on top of :mod:`vlm.storage`, so
``webdataset.WebDataset("s3://b/d/train-{000000..000009}.tar")`` reads our shards too and :func:`iter_shard`
opens ``pipe:``/``http(s)://``/``gs://`` URLs through webdataset's openers. Where it does not fit, this module
iterates members itself (about 40 lines): webdataset's tar iterators skip link members silently (the
sharding stage must count them as ``unsafe_path`` per sample), report a truncated tar only through an
exception handler that loses which shard and how many samples came before (we raise :class:`ShardError`
naming the shard, or count a skip), cannot check a shard against its manifest sha256 before yielding any
of its samples, and partition shards with ``split_by_node`` / ``split_by_worker`` only (a rank with no
shard reads nothing when there are fewer shards than ranks x workers; :func:`partition` then stripes
samples). ``import webdataset`` imports torch, so it is imported lazily (the sharding CLI starts faster).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import random
import re
import tarfile
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from vlm import storage

log = logging.getLogger(__name__)

FORMAT = "vlm-shards/1"
MANIFEST = "manifest.json"
SPLITS = ("train", "val", "test")
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
SHARD_RE = re.compile(r"^(train|val|test)-\d{6}\.tar$")
# why a sample read from a shard is skipped (SampleError.reason / ShardStream.rejected keys)
SAMPLE_REASONS = {
    "no_image": "no image member (jpg/jpeg/png/webp)",
    "undecodable": "the image member cannot be decoded",
    "bad_json": "the json member is missing, not JSON or not an object",
    "bad_qa": "a qa item without a question or without a non-empty answer",
    "corrupt_shard": "the shard is truncated or corrupt; its samples after the damage are lost",
    "checksum_mismatch": "the shard's size or sha256 differs from the manifest; none of its samples is read",
}
SHARD_REASONS = ("corrupt_shard", "checksum_mismatch")  # counted per shard read, not per sample
OnError = Literal["raise", "skip"]

__all__ = [
    "FORMAT", "MANIFEST", "SPLITS", "IMAGE_EXTS", "SHARD_RE", "SAMPLE_REASONS", "SHARD_REASONS",
    "FormatError", "ShardError", "SampleError",
    "ShardInfo", "SplitInfo", "Manifest", "read_manifest", "write_manifest", "manifest_sha256", "dataset_root",
    "is_dataset",
    "ShardRef", "find_shards", "shard_name", "split_key",
    "QA", "parse_qa", "sample_meta", "image_member", "decode_image", "decode",
    "ShardWriter", "write_shard", "write_split",
    "iter_shard", "shard_keys", "partition", "consumer_of", "ShardStream", "iter_samples",
    "LABELS_INDEX", "label_shard_uri", "label_members", "read_labels_index", "write_labels_index",
    "TarMember", "TarSample", "scan_tar", "read_member", "webdataset",
]


# ------------------------------------------------------------------------------------------ errors
class FormatError(ValueError):
    """A dataset, manifest or shard is unusable; the message names the file."""


class ShardError(FormatError):
    """A shard is missing, truncated, corrupt or fails its manifest checksum (``reason`` in SAMPLE_REASONS)."""

    def __init__(self, shard: str, reason: str, detail: str):
        super().__init__(f"shard {shard}: {detail}")
        self.shard, self.reason, self.detail = shard, reason, detail

    def __reduce__(self):  # picklable, so that a worker process can hand it to its parent
        return type(self), (self.shard, self.reason, self.detail)


class SampleError(ValueError):
    """One sample cannot be used (``reason`` in SAMPLE_REASONS); callers count it and go on."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


# ------------------------------------------------------------------------------------------ naming
def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


def split_key(member: str) -> tuple[str, str]:
    """WebDataset's rule: ``dir/abc.edges.png`` -> ``("dir/abc", "edges.png")``; no dot -> ``(member, "")``."""
    slash = member.rfind("/")
    dot = member.find(".", slash + 1)
    return (member, "") if dot < 0 else (member[:dot], member[dot + 1 :])


def dataset_root(uri: str) -> str:
    """The dataset folder for a dataset URI or a path to its ``manifest.json``."""
    uri = str(uri).rstrip("/")
    return uri[: -len("/" + MANIFEST)] if uri.endswith("/" + MANIFEST) else uri


# ------------------------------------------------------------------------------------------ manifest
class ShardInfo(BaseModel):
    """One shard of a dataset, as listed in the manifest."""

    model_config = ConfigDict(extra="allow")

    name: str
    split: str = ""
    num_samples: int = Field(0, ge=0)
    sha256: str | None = None
    size: int | None = None

    def model_post_init(self, _context: Any) -> None:
        if not self.split:
            self.split = self.name.rsplit("/", 1)[-1].split("-", 1)[0]


class SplitInfo(BaseModel):
    num_samples: int = 0
    num_shards: int = 0


class Manifest(BaseModel):
    """``manifest.json``: what a dataset holds (data shards, or a curated set with ``kind="curated"``).

    Stage-specific fields (the sharding config, rejection examples, caption counts...) are kept as extra
    fields, so a manifest round-trips unchanged through :func:`read_manifest` / :func:`write_manifest`.
    """

    model_config = ConfigDict(extra="allow")

    format: str = FORMAT
    kind: Literal["data", "curated"] = "data"
    name: str = "dataset"
    created_at: str = ""
    num_samples: int = 0
    splits: dict[str, SplitInfo] = Field(default_factory=dict)
    shards: list[ShardInfo] = Field(default_factory=list)
    rejected: dict[str, int] = Field(default_factory=dict)
    rejected_total: int = 0
    config: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def build(cls, shards: list[ShardInfo], **fields: Any) -> Manifest:
        """A manifest whose totals (``num_samples``, ``splits``, ``rejected_total``) follow from ``shards``."""
        splits = {s: SplitInfo(num_samples=sum(x.num_samples for x in shards if x.split == s),
                               num_shards=sum(1 for x in shards if x.split == s))
                  for s in dict.fromkeys([*SPLITS, *(x.split for x in shards)])}
        rejected = fields.pop("rejected", {}) or {}
        return cls(shards=shards, num_samples=sum(s.num_samples for s in shards), splits=splits,
                   rejected=rejected, rejected_total=sum(rejected.values()), **fields)

    def shards_of(self, split: str = "all") -> list[ShardInfo]:
        return [s for s in self.shards if split == "all" or s.split == split]

    def to_dict(self) -> dict[str, Any]:
        """The JSON of ``manifest.json`` (extra fields included)."""
        return self.model_dump(mode="json")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)


def _read_json(uri: str, missing: str) -> Any:
    """A JSON file; ``FileNotFoundError(missing)`` when absent, :class:`FormatError` when not JSON."""
    try:
        return json.loads(storage.read_bytes(uri))
    except FileNotFoundError:
        raise FileNotFoundError(missing) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise FormatError(f"{uri} is not valid JSON: {exc}") from None


def read_manifest(uri: str) -> Manifest:
    """The manifest of a dataset (``uri`` = dataset folder/prefix or its manifest.json)."""
    path = storage.join(dataset_root(uri), MANIFEST)
    data = _read_json(path, f"no manifest at {path}: not a sharded dataset (run `vlm shard` first)")
    if not isinstance(data, dict) or not isinstance(data.get("shards", []), list):
        raise FormatError(f"{path}: not a dataset manifest (needs 'shards': [{{name, num_samples, sha256}}])")
    if "num_samples" not in data:
        data["num_samples"] = sum(int(s.get("num_samples") or 0) for s in data["shards"] if isinstance(s, dict))
    try:
        return Manifest.model_validate(data)
    except ValueError as exc:
        raise FormatError(f"{path}: not a dataset manifest: {exc}") from None


def write_manifest(uri: str, manifest: Manifest) -> str:
    """Write ``manifest.json`` under the dataset ``uri`` (atomically); returns its URI."""
    path = storage.join(dataset_root(uri), MANIFEST)
    storage.write_text(path, manifest.to_json())
    return path


def is_dataset(uri: str) -> bool:
    """Whether ``uri`` is a dataset folder (or its manifest.json): it has a manifest."""
    return str(uri).rstrip("/").endswith("/" + MANIFEST) or storage.exists(storage.join(dataset_root(uri), MANIFEST))


def manifest_sha256(uri: str) -> str | None:
    """sha256 of a dataset's manifest file (its identity for lineage), or None when it has none."""
    try:
        return storage.sha256_bytes(storage.read_bytes(storage.join(dataset_root(uri), MANIFEST)))
    except FileNotFoundError:
        return None


@dataclass(frozen=True)
class ShardRef:
    """Where one shard is, with what the manifest says about it (None fields: unknown)."""

    uri: str
    name: str
    split: str
    num_samples: int | None = None
    sha256: str | None = None
    size: int | None = None

    @property
    def stem(self) -> str:
        return self.name[: -len(".tar")] if self.name.endswith(".tar") else self.name


def find_shards(data_uri: str, split: str = "all") -> list[ShardRef]:
    """The shards of ``split`` (``"all"``: every split) in manifest order.

    Without a manifest (a folder of bare ``{split}-NNNNNN.tar`` files) the tars are listed in name order,
    with a warning: nothing can be checked then. An unknown split gives ``[]``.
    """
    root = dataset_root(data_uri)
    try:
        manifest = read_manifest(root)
    except FileNotFoundError:
        uris = sorted(u for u in storage.list_uris(root, recursive=False) if u.endswith(".tar"))
        if not uris:
            raise FileNotFoundError(f"no shards under {root!r} (no manifest.json and no *.tar)") from None
        log.warning("%s has no manifest.json; using its %d *.tar files in name order", root, len(uris))
        refs = [ShardRef(u, n, n.split("-", 1)[0]) for u in uris for n in [u.replace("\\", "/").rsplit("/", 1)[-1]]]
        return [r for r in refs if split == "all" or r.split == split]
    return [ShardRef(storage.join(root, s.name), s.name, s.split, s.num_samples, s.sha256, s.size)
            for s in manifest.shards_of(split)]


# ------------------------------------------------------------------------------------------ samples
@dataclass(frozen=True)
class QA:
    """A question with its reference answers (non-empty, stripped); ``answer`` is the majority one."""

    question: str
    answers: tuple[str, ...]
    answer_type: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def answer(self) -> str:
        return Counter(self.answers).most_common(1)[0][0]

    @classmethod
    def parse(cls, item: Any) -> QA:
        """The one rule: ``{"question": str, "answers": [str, ...]}`` or a single ``"answer"``; answers are
        stripped strings (numbers are written out), empty ones dropped; at least one must remain.
        Raises :class:`SampleError` (``bad_qa``)."""
        if not isinstance(item, dict):
            raise SampleError("bad_qa", f"a {type(item).__name__}, not an object")
        question = item.get("question")
        if not isinstance(question, str) or not question.strip():
            raise SampleError("bad_qa", "no question")
        raw = item.get("answers", item.get("answer"))
        raw = [raw] if isinstance(raw, (str, int, float)) and not isinstance(raw, bool) else raw
        if not isinstance(raw, (list, tuple)):
            raise SampleError("bad_qa", f"no answers for {question!r}")
        answers = tuple(a for a in (_answer_text(x) for x in raw) if a)
        if not answers:
            raise SampleError("bad_qa", f"no non-empty answer for {question!r}")
        kind = item.get("answer_type") or item.get("type")
        extra = {k: v for k, v in item.items() if k not in ("question", "answers", "answer", "answer_type", "type")}
        return cls(question.strip(), answers, str(kind) if kind else None, extra)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"question": self.question, "answers": list(self.answers)}
        if self.answer_type:
            out["answer_type"] = self.answer_type
        return {**out, **self.extra}


def _answer_text(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return ""
    return str(value).strip()


def parse_qa(items: Any) -> tuple[list[QA], int]:
    """``(valid QA records, number of invalid items)`` from a sample's ``qa`` field (None/missing -> none)."""
    if items is None:
        return [], 0
    if not isinstance(items, (list, tuple)):
        return [], 1
    out, bad = [], 0
    for item in items:
        try:
            out.append(QA.parse(item))
        except SampleError:
            bad += 1
    return out, bad


def sample_meta(raw: dict[str, Any]) -> dict[str, Any]:
    """The sample's json member as a dict. Raises :class:`SampleError` (``bad_json``)."""
    data = raw.get("json")
    if data is None:
        raise SampleError("bad_json", "no json member")
    try:
        meta = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SampleError("bad_json", f"not JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise SampleError("bad_json", "not a JSON object")
    return meta


def image_member(raw: dict[str, Any]) -> tuple[str, bytes]:
    """``(extension, bytes)`` of the sample's image member. Raises :class:`SampleError` (``no_image``)."""
    for ext in IMAGE_EXTS:
        if ext in raw:
            return ext, raw[ext]
    raise SampleError("no_image", f"no {'/'.join(IMAGE_EXTS)} member (has {', '.join(sorted(_members(raw)))})")


def _members(raw: dict[str, Any]) -> list[str]:
    return [k for k in raw if not k.startswith("__")]


def decode_image(data: bytes):
    """Image member bytes -> PIL RGB. Raises :class:`SampleError` (``undecodable``)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.convert("RGB")
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a property of the sample
        raise SampleError("undecodable", f"{type(exc).__name__}: {exc}") from None


def decode(raw: dict[str, Any]) -> dict[str, Any]:
    """Raw sample -> ``{"__key__", "__shard__", "image": PIL RGB, "meta": dict}``. Raises :class:`SampleError`."""
    meta = sample_meta(raw)
    _, data = image_member(raw)
    return {"__key__": raw["__key__"], "__shard__": raw.get("__shard__"), "image": decode_image(data), "meta": meta}


# ------------------------------------------------------------------------------------------ writing
def webdataset():
    """The ``webdataset`` module, with ``s3://`` registered as a gopen scheme (through :mod:`vlm.storage`)."""
    import importlib

    import webdataset as wds

    importlib.import_module("webdataset.gopen").gopen_schemes.setdefault("s3", _gopen_s3)
    return wds


class _Handle(io.RawIOBase):
    """A file object over a :mod:`vlm.storage` context manager: closing it leaves the context."""

    def __init__(self, cm: contextlib.AbstractContextManager, mode: str):
        super().__init__()
        self._cm, self._fh, self._mode = cm, cm.__enter__(), mode

    def readable(self) -> bool:
        return self._mode.startswith("r")

    def writable(self) -> bool:
        return self._mode.startswith("w")

    def read(self, size: int = -1) -> bytes:
        return self._fh.read(size)

    def readinto(self, buf) -> int:
        data = self._fh.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    def write(self, data) -> int:
        self._fh.write(data)
        return len(data)

    def close(self) -> None:
        if not self.closed:
            super().close()
            self._cm.__exit__(None, None, None)


def _gopen_s3(url: str, mode: str = "rb", bufsize: int = 8192, **_kw: Any) -> IO[bytes]:
    if mode.startswith("r"):
        return _Handle(storage.open_read(url), mode)
    return _Handle(storage.open_write(url), mode)


class _Abort(Exception):
    """Thrown into ``storage.open_write`` so that nothing is published."""


class _Digest:
    """Counts and hashes the bytes written through it."""

    def __init__(self, fh: IO[bytes]):
        self.fh, self.size, self.sha = fh, 0, hashlib.sha256()

    def write(self, data) -> int:
        self.fh.write(data)
        self.sha.update(data)
        self.size += len(data)
        return len(data)


class ShardWriter:
    """Writes one tar shard with ``webdataset.TarWriter``; it appears at ``uri`` only on :meth:`commit`.

    Deterministic bytes: members in ``(sample order, sorted extension)`` with mtime 0, mode 0644 and no
    owner names. ``with ShardWriter(uri) as w: w.write(key, {"jpg": ..., "json": ...})`` commits on a clean
    exit and aborts on an exception.
    """

    def __init__(self, uri: str):
        self.uri = str(uri)
        self.count = 0
        self.size: int | None = None
        self.sha256: str | None = None
        self._cm = storage.open_write(self.uri)
        self._digest = _Digest(self._cm.__enter__())
        self._tar = webdataset().TarWriter(self._digest, encoder=False, mtime=0, user="", group="", mode=0o644,
                                           format="GNU_FORMAT")
        self._open = True

    def write(self, key: str, members: dict[str, bytes]) -> None:
        if not members:
            raise ValueError(f"sample {key!r} has no members")
        self._tar.write({"__key__": key, **members})
        self.count += 1

    def commit(self) -> ShardWriter:
        if self._open:
            self._open = False
            self._tar.close()
            self.size, self.sha256 = self._digest.size, self._digest.sha.hexdigest()
            self._cm.__exit__(None, None, None)
        return self

    def abort(self) -> None:
        if self._open:
            self._open = False
            with contextlib.suppress(Exception):
                self._tar.close()
            self._cm.__exit__(_Abort, _Abort(), None)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def write_shard(uri: str, samples: Iterable[tuple[str, dict[str, bytes]]], split: str = "") -> ShardInfo:
    """Write ``(key, members)`` samples as one shard; returns its manifest entry."""
    with ShardWriter(uri) as writer:
        for key, members in samples:
            writer.write(key, members)
    name = str(uri).replace("\\", "/").rsplit("/", 1)[-1]
    return ShardInfo(name=name, split=split, num_samples=writer.count, sha256=writer.sha256, size=writer.size)


def write_split(output_uri: str, split: str, samples: Iterable[tuple[str, dict[str, bytes]]],
                samples_per_shard: int) -> list[ShardInfo]:
    """Cut a stream of samples into ``{split}-NNNNNN.tar`` shards of ``samples_per_shard``."""
    shards: list[ShardInfo] = []
    batch: list[tuple[str, dict[str, bytes]]] = []

    def flush() -> None:
        uri = storage.join(output_uri, shard_name(split, len(shards)))
        shards.append(write_shard(uri, batch, split))
        batch.clear()

    for sample in samples:
        batch.append(sample)
        if len(batch) >= samples_per_shard:
            flush()
    if batch:
        flush()
    return shards


# ------------------------------------------------------------------------------------------ reading
_READ_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error)


@contextlib.contextmanager
def _open(uri: str) -> Iterator[IO[bytes]]:
    """A local path or s3:// URI through vlm.storage; anything else (pipe:, http(s)://...) through gopen."""
    if storage.is_s3(uri) or "://" not in uri and not uri.startswith("pipe:"):
        with storage.open_read(uri) as fh:
            yield fh
        return
    fh = webdataset().gopen(uri, "rb")
    try:
        yield fh
    finally:
        fh.close()


def _verified(ref: ShardRef) -> IO[bytes]:
    """The whole shard in memory after checking its size and sha256 against the manifest."""
    try:
        data = storage.read_bytes(ref.uri)
    except FileNotFoundError:
        raise ShardError(ref.uri, "corrupt_shard", "missing") from None
    if ref.size is not None and len(data) != ref.size:
        raise ShardError(ref.uri, "checksum_mismatch", f"{len(data)} bytes, the manifest says {ref.size}")
    if ref.sha256 and storage.sha256_bytes(data) != ref.sha256:
        raise ShardError(ref.uri, "checksum_mismatch", "sha256 differs from the manifest")
    return io.BytesIO(data)


def iter_shard(shard: str | ShardRef, *, verify: bool = False, on_error: OnError = "raise",
               rejected: Counter | None = None, keys: set[str] | None = None) -> Iterator[dict[str, Any]]:
    """The raw samples of one shard, streamed: ``{"__key__", "__shard__", ext: bytes, ...}``.

    ``verify``: check the shard's size and sha256 against its manifest entry first (``shard`` must be a
    :class:`ShardRef`; the shard is then read into memory). ``on_error="skip"``: a missing, truncated,
    corrupt or mismatching shard is counted in ``rejected`` (``corrupt_shard`` / ``checksum_mismatch``) and
    logged with its name, keeping the complete samples before the damage; ``"raise"``: :class:`ShardError`.
    ``keys``: yield only these samples (the others' bytes are still read: tars are sequential).
    """
    ref = shard if isinstance(shard, ShardRef) else None
    uri = ref.uri if ref else str(shard)
    n = 0
    try:
        with contextlib.ExitStack() as stack:
            fh = _verified(ref) if verify and ref else stack.enter_context(_open(uri))
            for sample in _group(_tar_members(fh), uri):
                n += 1
                if keys is None or sample["__key__"] in keys:
                    yield sample
    except ShardError as exc:
        _shard_failed(exc, on_error, rejected)
    except FileNotFoundError:
        _shard_failed(ShardError(uri, "corrupt_shard", "missing"), on_error, rejected)
    except _READ_ERRORS as exc:
        err = ShardError(uri, "corrupt_shard", f"truncated or corrupt after {n} sample(s): {type(exc).__name__}: {exc}")
        _shard_failed(err, on_error, rejected)


def _shard_failed(exc: ShardError, on_error: OnError, rejected: Counter | None) -> None:
    if on_error == "raise":
        raise exc
    if rejected is not None:
        rejected[exc.reason] += 1
    what = "all samples of" if exc.reason == "checksum_mismatch" else "the rest of"
    log.warning("skipping %s %s [%s]", what, exc, exc.reason)


class _Tail:
    """A read-through file object that remembers how many bytes passed and the last 1 KiB of them."""

    def __init__(self, fh: IO[bytes]):
        self.fh, self.size, self.tail = fh, 0, b""

    def read(self, n: int = -1) -> bytes:
        data = self.fh.read(n)
        self.size += len(data)
        self.tail = (self.tail + data)[-1024:]
        return data


def _tar_members(fh: IO[bytes]) -> Iterator[tuple[str, bytes]]:
    """Regular members in order. A tar that stops at a header boundary reads like a short one to ``tarfile``;
    only its missing end-of-archive marker (two zero blocks) tells, so that is checked at the end."""
    tail = _Tail(fh)
    with tarfile.open(fileobj=tail, mode="r|*") as tar:
        for info in tar:
            if info.isreg():
                try:
                    data = tar.extractfile(info).read()  # type: ignore[union-attr]
                except _READ_ERRORS as exc:
                    raise _Truncated(info.name) from exc
                yield info.name, data
        while tail.read(1 << 16):
            pass
    if tail.size % 512 or tail.tail != bytes(1024):
        raise tarfile.ReadError("no end-of-archive marker (the file ends early)")


class _Truncated(Exception):
    """Reading member ``name`` failed (its cause is the tarfile/zlib error)."""

    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


def _group(members: Iterable[tuple[str, bytes]], uri: str) -> Iterator[dict[str, Any]]:
    """Consecutive members of one key -> one sample (members of a sample must be adjacent, as WebDataset)."""
    current: dict[str, Any] | None = None
    try:
        for name, data in members:
            key, ext = split_key(name)
            if not ext:
                continue
            if current is not None and current["__key__"] != key:
                yield current
                current = None
            if current is None:
                current = {"__key__": key, "__shard__": uri}
            ext = ext.lower()
            if ext in current:
                raise ShardError(uri, "corrupt_shard", f"member {name!r} appears twice")
            current[ext] = data
    except _Truncated as exc:
        if current is not None and split_key(exc.name)[0] != current["__key__"]:
            yield current  # the damage starts in the next sample: this one is complete
        raise exc.__cause__ from None
    if current is not None:
        yield current


def shard_keys(uri: str) -> list[str]:
    """Sample keys of a shard in order: from the tar headers only for local files, streamed from S3."""
    if storage.is_s3(uri):
        return [s["__key__"] for s in iter_shard(uri)]
    try:
        with tarfile.open(uri) as tar:
            names = [m.name for m in tar.getmembers() if m.isreg()]
    except FileNotFoundError:
        raise ShardError(uri, "corrupt_shard", "missing") from None
    except _READ_ERRORS as exc:
        raise ShardError(uri, "corrupt_shard", f"cannot list members: {exc}") from None
    return list(dict.fromkeys(k for k, ext in map(split_key, names) if ext))


def partition(num_shards: int, consumer: int, consumers: int) -> tuple[list[int], int, int]:
    """Which shards a consumer reads and which of their samples it keeps: ``(shard indices, stride, offset)``.

    With at least as many shards as consumers, consumers read whole shards round robin; with fewer, every
    consumer reads every shard and keeps the j-th sample (counted over them) when ``j % stride == offset``.
    Either way each sample goes to exactly one consumer.
    """
    if not 0 <= consumer < consumers:
        raise ValueError(f"consumer {consumer} out of range for {consumers} consumers")
    if num_shards >= consumers:
        return list(range(consumer, num_shards, consumers)), 1, 0
    return list(range(num_shards)), consumers, consumer


def consumer_of(rank: int | None = None, world_size: int | None = None, worker: int | None = None,
                num_workers: int | None = None) -> tuple[int, int]:
    """``(consumer, consumers)`` for a rank x dataloader worker; unset values come from torch.distributed /
    ``RANK``+``WORLD_SIZE`` and the current DataLoader worker."""
    if rank is None or world_size is None:
        r, w = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        torch_dist = _torch("torch.distributed")
        if torch_dist is not None and torch_dist.is_available() and torch_dist.is_initialized():
            r, w = torch_dist.get_rank(), torch_dist.get_world_size()
        rank, world_size = (r if rank is None else rank), (w if world_size is None else world_size)
    if worker is None or num_workers is None:
        data = _torch("torch.utils.data")
        info = data.get_worker_info() if data is not None else None
        wid, wn = (info.id, info.num_workers) if info is not None else (0, 1)
        worker, num_workers = (wid if worker is None else worker), (wn if num_workers is None else num_workers)
    return rank * num_workers + worker, world_size * num_workers


def _torch(module: str):
    import sys

    if "torch" not in sys.modules:  # never import torch just to learn that nothing is distributed
        return None
    import importlib

    return importlib.import_module(module)


class ShardStream:
    """A deterministic stream of raw samples for one consumer (rank x dataloader worker), by epoch.

    Epoch ``e`` visits the shards in an order shuffled with ``(seed, e)`` (when ``shuffle_shards``; the same
    order on every consumer, so the :func:`partition` stays disjoint), keeps this consumer's part and mixes
    it through a ``shuffle_buffer`` seeded with ``(seed, e, consumer)``. ``resample`` goes on epoch after
    epoch. The stream is a pure function of its arguments: resuming at position ``n`` = skipping ``n``
    samples. Damaged shards are skipped, counted in :attr:`rejected` and listed in :attr:`damaged` (shard URI
    -> ``"reason: detail"``) with ``on_error="skip"``, or raise.
    """

    def __init__(self, shards: Sequence[str | ShardRef], consumer: int = 0, consumers: int = 1, seed: int = 0,
                 shuffle_shards: bool = False, shuffle_buffer: int = 0, resample: bool = False,
                 verify: bool = False, on_error: OnError = "skip"):
        self.shards = list(shards)
        self.consumer, self.consumers = consumer, consumers
        self.seed, self.shuffle_shards, self.shuffle_buffer = seed, shuffle_shards, shuffle_buffer
        self.resample, self.verify, self.on_error = resample, verify, on_error
        self.rejected: Counter[str] = Counter()
        self.damaged: dict[str, str] = {}
        partition(max(1, len(self.shards)), consumer, consumers)  # fail early on a bad consumer

    def epoch(self, epoch: int) -> Iterator[dict[str, Any]]:
        order = list(range(len(self.shards)))
        if self.shuffle_shards:
            random.Random(f"{self.seed}:{epoch}:shards").shuffle(order)
        picked, stride, offset = partition(len(order), self.consumer, self.consumers)
        samples = (s for i in picked for s in self._read(self.shards[order[i]]))
        mine = (s for j, s in enumerate(samples) if j % stride == offset)
        if self.shuffle_buffer > 1:
            return _buffer_shuffle(mine, self.shuffle_buffer, random.Random(f"{self.seed}:{epoch}:{self.consumer}"))
        return mine

    def _read(self, shard: str | ShardRef) -> Iterator[dict[str, Any]]:
        try:
            yield from iter_shard(shard, verify=self.verify)
        except ShardError as exc:
            if self.on_error == "skip":
                self.damaged[exc.shard] = f"{exc.reason}: {exc.detail}"
            _shard_failed(exc, self.on_error, self.rejected)

    def __iter__(self) -> Iterator[tuple[int, dict[str, Any]]]:
        """``(epoch, raw sample)`` pairs; forever with ``resample`` (an epoch without samples raises)."""
        epoch = 0
        while True:
            produced = False
            for sample in self.epoch(epoch):
                produced = True
                yield epoch, sample
            if not self.resample:
                return
            if not produced:
                raise FormatError(f"consumer {self.consumer} of {self.consumers} got no samples from "
                                  f"{len(self.shards)} shard(s) (rejected: {dict(self.rejected) or 'none'})"
                                  + "".join(f"; {uri}: {why}" for uri, why in self.damaged.items()))
            epoch += 1


def _buffer_shuffle(it: Iterator, size: int, rng: random.Random) -> Iterator:
    buf: list = []
    for item in it:
        buf.append(item)
        if len(buf) >= size:
            j = rng.randrange(len(buf))
            buf[j], buf[-1] = buf[-1], buf[j]
            yield buf.pop()
    rng.shuffle(buf)
    yield from buf


def iter_samples(data_uri: str, split: str = "train", *, decoded: bool = True, shuffle_buffer: int = 0,
                 resample: bool = False, seed: int = 0, rank: int | None = None, world_size: int | None = None,
                 worker: int | None = None, num_workers: int | None = None, verify: bool = False,
                 on_error: OnError = "skip", rejected: Counter | None = None,
                 damaged: dict[str, str] | None = None) -> Iterator[dict[str, Any]]:
    """Samples of a dataset split for this consumer (rank x worker; defaults from the environment).

    ``decoded``: the reader contract ``{"__key__", "__shard__", "image", "meta"}``, samples that fail to
    decode counted in ``rejected`` by reason; else raw samples. ``damaged`` collects the skipped shards
    (URI -> ``"reason: detail"``). ``split="all"`` reads every split. An unknown split raises
    :class:`FormatError` naming the available ones.
    """
    shards = find_shards(data_uri, split)
    if not shards:
        available = sorted({s.split for s in find_shards(data_uri)})
        raise FormatError(f"split {split!r} has no shards in {data_uri}; available: {', '.join(available) or 'none'}")
    consumer, consumers = consumer_of(rank, world_size, worker, num_workers)
    stream = ShardStream(shards, consumer, consumers, seed, shuffle_shards=shuffle_buffer > 0 or resample,
                         shuffle_buffer=shuffle_buffer, resample=resample, verify=verify, on_error=on_error)
    if rejected is not None:
        stream.rejected = rejected
    if damaged is not None:
        stream.damaged = damaged
    for _, raw in stream:
        if not decoded:
            yield raw
            continue
        try:
            yield decode(raw)
        except SampleError as exc:
            stream.rejected[exc.reason] += 1
            log.warning("skipping sample %s of %s: %s", raw["__key__"], raw["__shard__"], exc)


# ------------------------------------------------------------------------------------------ expert labels
LABELS_INDEX = "labels.json"


def label_shard_uri(labels_uri: str, expert: str, shard: str) -> str:
    """``{labels}/{expert}/{data shard name}``: label shards align 1:1 with the data shards."""
    return storage.join(labels_uri, expert, shard)


def label_members(expert: str, png: bytes, meta: dict[str, Any] | None = None) -> dict[str, bytes]:
    """A label sample's members: ``{key}.{expert}.png`` (uint8 map) and optionally ``{key}.{expert}.json``."""
    out = {f"{expert}.png": png}
    if meta is not None:
        out[f"{expert}.json"] = json.dumps(meta, separators=(",", ":")).encode()
    return out


def read_labels_index(labels_uri: str) -> dict[str, Any]:
    """``labels.json`` of a labels URI: ``{"format", "data": {...}, "experts": {name: {...}}}``."""
    uri = storage.join(labels_uri, LABELS_INDEX)
    index = _read_json(uri, f"{labels_uri}: no {LABELS_INDEX} (compute the labels with `vlm experts` first)")
    if not isinstance(index, dict) or not isinstance(index.get("experts"), dict):
        raise FormatError(f"{uri} has no 'experts' mapping; it is not a labels index")
    return index


def write_labels_index(labels_uri: str, index: dict[str, Any]) -> None:
    storage.write_text(storage.join(labels_uri, LABELS_INDEX), json.dumps(index, indent=1))


# ------------------------------------------------------------------------------------------ foreign tars
@dataclass(frozen=True)
class TarMember:
    name: str
    offset: int  # of the data in the tar file
    size: int


@dataclass
class TarSample:
    """A sample of a foreign tar: its members by extension, and the members that make it unsafe."""

    key: str
    members: dict[str, TarMember] = field(default_factory=dict)
    unsafe: list[str] = field(default_factory=list)  # why each unsafe member is (naming it)
    incomplete: str = ""  # why this sample may be missing members


def scan_tar(path: str) -> Iterator[TarSample | ShardError]:
    """Group a (local, seekable) tar's members into samples, reading headers only.

    A sample is unsafe when any of its members is a link or special file or has a name that escapes the
    archive root (absolute, ``..``, drive letters, NUL). A tar that ends early (no end-of-archive marker)
    marks its last sample ``incomplete``; a corrupt header yields the samples before it and then a
    :class:`ShardError` (the caller counts it and goes on).
    """
    from vlm.data.validate import Rejected, safe_relpath

    groups: dict[str, TarSample] = {}
    name = os.path.basename(path)
    error: ShardError | None = None
    try:
        with tarfile.open(path, "r:") as tar:
            while True:
                try:
                    info = tar.next()
                except _READ_ERRORS as exc:
                    error = ShardError(name, "corrupt_shard", f"truncated or corrupt after {len(groups)} "
                                       f"sample(s): {type(exc).__name__}: {exc}")
                    break
                if info is None:
                    break
                if info.isdir():
                    continue
                key, ext = split_key(info.name)
                sample = groups.setdefault(key, TarSample(key))
                try:
                    safe_relpath(info.name)
                    if not info.isreg():
                        raise Rejected("unsafe_path", f"{info.name!r} is a link or special file")
                except Rejected as exc:
                    sample.unsafe.append(exc.detail or f"{info.name!r}: {exc.reason}")
                    continue
                if ext:
                    sample.members[ext.lower()] = TarMember(info.name, info.offset_data, info.size)
    except _READ_ERRORS as exc:
        error = ShardError(name, "corrupt_shard", f"not a readable tar: {type(exc).__name__}: {exc}")
    if error is None and groups and not _has_end_marker(path):
        next(reversed(groups.values())).incomplete = "the tar ends early (no end-of-archive marker)"
    yield from groups.values()
    if error is not None:
        yield error


def _has_end_marker(path: str) -> bool:
    size = os.path.getsize(path)
    if size % 512 or size < 1024:
        return False
    with open(path, "rb") as fh:
        fh.seek(size - 1024)
        return fh.read() == bytes(1024)


def read_member(path: str, member: TarMember) -> bytes:
    """The bytes of one member found by :func:`scan_tar`. Raises :class:`ShardError` when truncated."""
    with open(path, "rb") as fh:
        fh.seek(member.offset)
        data = fh.read(member.size)
    if len(data) != member.size:
        raise ShardError(os.path.basename(path), "corrupt_shard",
                         f"member {member.name} truncated ({len(data)} of {member.size} bytes)")
    return data
