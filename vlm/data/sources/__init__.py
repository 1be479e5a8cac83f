"""Data sources: everything that can be turned into shards. ``open_source(input, cfg)`` picks one."""

from __future__ import annotations

import importlib
import pkgutil

from vlm.data.config import ShardConfig
from vlm.data.sources.base import SOURCES, InputError, Record, Source, register

__all__ = ["SOURCES", "InputError", "Record", "Source", "register", "open_source", "load_all"]

# Detection order for non-builtin inputs: explicit globs/tars first, then tables, then folders.
_ORDER = ["webdataset", "table", "folder"]


def load_all() -> None:
    """Import every module in this package so its sources register themselves."""
    for mod in pkgutil.iter_modules(__path__):
        if mod.name != "base":
            importlib.import_module(f"{__name__}.{mod.name}")


def open_source(uri: str, cfg: ShardConfig) -> Source:
    """The source for ``uri``: ``builtin:<name>``, a table file, a folder of images, or WebDataset tars."""
    load_all()
    uri = str(uri).strip()
    if not uri:
        raise InputError("no input given")
    if uri.startswith("builtin:"):
        name = uri.split(":", 1)[1]
        cls = SOURCES.get(name)
        if cls is None or not cls.builtin:
            known = sorted(n for n, c in SOURCES.items() if c.builtin)
            raise InputError(f"unknown builtin source {uri!r}; known: {', '.join('builtin:' + k for k in known)}")
        return cls(uri, cfg)
    names = _ORDER + sorted(set(SOURCES) - set(_ORDER))
    for name in names:
        cls = SOURCES.get(name)
        if cls is not None and not cls.builtin and cls.accepts(uri):
            return cls(uri, cfg)
    raise InputError(f"cannot read input {uri!r}: not found, or not a .jsonl/.csv/.parquet/.arrow file, a folder of "
                     "images with .txt captions, WebDataset .tar files (folder or glob), or builtin:<name>")
