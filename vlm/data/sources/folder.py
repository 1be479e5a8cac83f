"""A folder (or S3 prefix) of images with sidecar captions: ``a/b.jpg`` + ``a/b.txt`` (and optionally
``a/b.json`` with extra fields such as ``qa``, or a ``caption`` there instead of the .txt)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

from vlm import storage
from vlm.data.sources.base import InputError, Record, Source, register
from vlm.data.validate import Rejected, resolve_under

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@register
class FolderSource(Source):
    name = "folder"

    @classmethod
    def accepts(cls, uri: str) -> bool:
        if storage.is_s3(uri):
            return bool(storage.list_uris(uri))
        return os.path.isdir(uri)

    def __init__(self, uri: str, cfg):
        super().__init__(uri.rstrip("/"), cfg)
        files = storage.list_uris(self.uri)
        if not any(f.lower().endswith(IMAGE_SUFFIXES) for f in files):
            raise InputError(f"{uri}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
        self._files = files

    def records(self) -> Iterator[Record]:
        present = set(self._files)
        for f in self._files:
            stem, ext = os.path.splitext(f)
            if ext.lower() not in IMAGE_SUFFIXES:
                continue
            rel = f[len(self.uri) + 1 :]
            try:
                if not storage.is_s3(f):
                    resolve_under(self.uri, rel)  # symlinks pointing outside the root
            except Rejected as exc:
                yield Record(ref=rel, error=(exc.reason, exc.detail))
                continue
            txt, meta = stem + ".txt", stem + ".json"
            locator = (f, txt if txt in present else None, meta if meta in present else None)
            yield Record(ref=rel, locator=locator)

    def _extra(self, record: Record) -> dict[str, Any]:
        meta_uri = record.locator[2]
        if not meta_uri:
            return {}
        try:
            value = json.loads(storage.read_bytes(meta_uri))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise Rejected("bad_record", f"sidecar {os.path.basename(meta_uri)} is not JSON: {exc}") from None
        if not isinstance(value, dict):
            raise Rejected("bad_record", f"sidecar {os.path.basename(meta_uri)} is not a JSON object")
        return value

    def read_meta(self, record: Record) -> tuple[Any, dict[str, Any]]:
        _, txt, _ = record.locator
        extra = self._extra(record)
        caption = storage.read_bytes(txt) if txt else extra.pop("caption", None)
        if caption is None:
            raise Rejected("missing_file", "no sidecar .txt caption")
        return caption, extra

    def read_image(self, record: Record) -> bytes:
        return storage.read_bytes(record.locator[0])
