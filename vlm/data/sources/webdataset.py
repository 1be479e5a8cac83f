"""Existing WebDataset tars: a ``.tar`` file, a folder/prefix of them, or a glob / brace pattern
(``data/train-*.tar``, ``s3://b/p/shard-{000000..000009}.tar``). Members are grouped into samples by
key (path up to the first dot of the file name); the caption comes from ``.txt`` or the ``.json``'s
``caption``/``captions``; other json fields pass through. Link members and member names that escape
the archive root are rejected as ``unsafe_path``."""

from __future__ import annotations

import fnmatch
import glob
import json
import os
import tarfile
from collections.abc import Iterator
from typing import Any

from vlm import storage
from vlm.data.sources.base import InputError, Record, Source, register
from vlm.data.validate import Rejected, safe_relpath

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
GLOB_CHARS = "*?[{"
RESERVED = ("caption", "captions", "width", "height", "orig_width", "orig_height", "source", "ref")


def expand(uri: str) -> list[str]:
    """Tar URIs for a file, folder/prefix, glob or brace pattern (sorted, de-duplicated)."""
    from braceexpand import braceexpand

    out: list[str] = []
    for pattern in braceexpand(uri):
        if any(c in pattern for c in "*?["):
            if storage.is_s3(pattern):
                head = pattern[: min(pattern.find(c) for c in "*?[" if c in pattern)]
                prefix = head.rsplit("/", 1)[0]
                out += [u for u in storage.list_uris(prefix) if fnmatch.fnmatchcase(u, pattern)]
            else:
                out += glob.glob(pattern, recursive=True)
        elif pattern.lower().endswith(".tar"):
            if not storage.exists(pattern):
                raise InputError(f"tar not found: {pattern}")
            out.append(pattern)
        else:
            out += storage.list_uris(pattern)
    return sorted({u for u in out if u.lower().endswith(".tar")})


@register
class WebDatasetSource(Source):
    name = "webdataset"

    @classmethod
    def accepts(cls, uri: str) -> bool:
        if uri.lower().endswith(".tar") or any(c in uri for c in GLOB_CHARS):
            return True
        if storage.is_s3(uri) or os.path.isdir(uri):
            return any(u.lower().endswith(".tar") for u in storage.list_uris(uri))
        return False

    def __init__(self, uri: str, cfg):
        super().__init__(uri, cfg)
        self.tars = expand(uri)
        if not self.tars:
            raise InputError(f"no .tar files match {uri}")

    def records(self) -> Iterator[Record]:
        for uri in self.tars:
            path = str(storage.local_copy(uri))
            name = uri.rstrip("/").rsplit("/", 1)[-1]
            try:
                tf = tarfile.open(path, "r:*")
            except (tarfile.TarError, OSError) as exc:
                raise InputError(f"cannot read tar {uri}: {exc}") from None
            with tf:
                yield from self._samples(tf, path, name)

    def _samples(self, tf: tarfile.TarFile, path: str, name: str) -> Iterator[Record]:
        groups: dict[str, dict[str, tarfile.TarInfo]] = {}
        order: list[str] = []
        try:
            members = tf.getmembers()
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise InputError(f"tar {name} is corrupt: {exc}") from None
        for m in members:
            if m.isdir():
                continue
            ref = f"{name}:{m.name}"
            try:
                rel = safe_relpath(m.name)
                if not m.isfile():
                    raise Rejected("unsafe_path", f"{m.name!r} is a link or special file")
            except Rejected as exc:
                yield Record(ref=ref, error=(exc.reason, exc.detail))
                continue
            base = rel.rsplit("/", 1)[-1]
            if "." not in base:
                continue
            key = rel[: len(rel) - len(base)] + base.split(".", 1)[0]
            ext = base.split(".", 1)[1].lower()
            if key not in groups:
                groups[key] = {}
                order.append(key)
            groups[key][ext] = m
        for key in order:
            files = groups[key]
            ref = f"{name}:{key}"
            ext = next((e for e in IMAGE_EXTS if e in files), None)
            if ext is None:
                yield Record(ref=ref, error=("missing_file", f"no image member ({'/'.join(IMAGE_EXTS)})"))
                continue
            caption: Any = None
            extra: dict[str, Any] = {}
            error = None
            if "json" in files:
                try:
                    meta = json.loads(tf.extractfile(files["json"]).read())
                    if not isinstance(meta, dict):
                        raise ValueError("not a JSON object")
                    caption = meta.get("captions") or meta.get("caption")
                    extra = {k: v for k, v in meta.items() if k not in RESERVED}
                except (ValueError, UnicodeDecodeError) as exc:
                    error = ("bad_record", f"{key}.json: {exc}")
            if "txt" in files:
                caption = tf.extractfile(files["txt"]).read()
            img = files[ext]
            yield Record(ref=ref, locator=(path, img.offset_data, img.size), caption=caption, extra=extra,
                         error=error)

    def read_image(self, record: Record) -> bytes:
        path, offset, size = record.locator
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read(size)
        if len(data) != size:
            raise Rejected("undecodable", f"member truncated ({len(data)} of {size} bytes)")
        return data
