"""Existing WebDataset tars: a ``.tar`` file, a folder/prefix of them, or a glob / brace pattern
(``data/train-*.tar``, ``s3://b/p/shard-{000000..000009}.tar``). Members are grouped into samples by
key (path up to the first dot of the file name, :func:`vlm.data.format.scan_tar`); the caption comes from
``.txt`` or the ``.json``'s ``caption``/``captions``; other json fields pass through. A sample with any
link member or member name that escapes the archive root is one ``unsafe_path`` rejection (however many
of its members are unsafe); in a truncated or corrupt tar the samples before the damage are kept and the
damaged one is a ``bad_record``."""

from __future__ import annotations

import fnmatch
import glob
import json
import os
from collections.abc import Iterator
from typing import Any

from vlm import storage
from vlm.data.format import IMAGE_EXTS, ShardError, TarSample, read_member, scan_tar
from vlm.data.sources.base import InputError, Record, Source, register
from vlm.data.validate import Rejected

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
            for item in scan_tar(path):
                if isinstance(item, ShardError):
                    yield Record(ref=name, error=("bad_record", f"tar {name}: {item.detail}"))
                else:
                    yield self._record(item, path, name)

    def _record(self, sample: TarSample, path: str, name: str) -> Record:
        ref, files = f"{name}:{sample.key}", sample.members
        if sample.unsafe:
            return Record(ref=ref, error=("unsafe_path", "; ".join(sample.unsafe)))
        if sample.incomplete:
            return Record(ref=ref, error=("bad_record", f"{sample.incomplete}: this last sample may be incomplete"))
        ext = next((e for e in IMAGE_EXTS if e in files), None)
        if ext is None:
            return Record(ref=ref, error=("missing_file", f"no image member ({'/'.join(IMAGE_EXTS)})"))
        caption: Any = None
        extra: dict[str, Any] = {}
        try:
            if "json" in files:
                try:
                    meta = json.loads(read_member(path, files["json"]))
                    if not isinstance(meta, dict):
                        raise ValueError("not a JSON object")
                except (ValueError, UnicodeDecodeError) as exc:
                    return Record(ref=ref, error=("bad_record", f"{sample.key}.json: {exc}"))
                caption = meta.get("captions") or meta.get("caption")
                extra = {k: v for k, v in meta.items() if k not in RESERVED}
            if "txt" in files:
                caption = read_member(path, files["txt"])
        except ShardError as exc:
            return Record(ref=ref, error=("bad_record", exc.detail))
        return Record(ref=ref, locator=(path, files[ext]), caption=caption, extra=extra)

    def read_image(self, record: Record) -> bytes:
        path, member = record.locator
        try:
            return read_member(path, member)
        except ShardError as exc:
            raise Rejected("undecodable", exc.detail) from None
