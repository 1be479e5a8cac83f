"""What a data source is: a cheap listing of records plus a way to read each record's image bytes.

A source is built in the main process (listing) and pickled into worker processes (reading), so keep
its state small and plain. Add a source by writing one module in this package with a ``@register``
class; ``open_source`` finds it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from vlm.data.config import ShardConfig


class InputError(ValueError):
    """The input as a whole is unusable (missing, unreadable, wrong columns): the run stops at once."""


@dataclass(frozen=True)
class Record:
    """One raw input sample, before validation.

    ref: human-readable reference (path, URI, tar member) used in rejection examples.
    locator: source-specific, picklable; tells ``Source.read_image`` where the bytes are.
    caption: raw caption (str, bytes, list of those, or None); sources may defer it to ``read_meta``.
    extra: extra JSON-able fields kept in the sample json (e.g. ``qa``).
    error: a rejection found while listing, as ``(reason, detail)``.
    """

    ref: str
    locator: Any = None
    caption: Any = None
    extra: dict[str, Any] = field(default_factory=dict)
    error: tuple[str, str] | None = None


class Source:
    """Base class. Subclasses set ``name`` and implement ``records`` and ``read_image``."""

    name: ClassVar[str] = ""
    builtin: ClassVar[bool] = False  # reachable as builtin:<name>
    io_threads: int = 1  # concurrent read_image calls per worker process (URL downloads: many)

    def __init__(self, uri: str, cfg: ShardConfig):
        self.uri = uri
        self.cfg = cfg

    @classmethod
    def accepts(cls, uri: str) -> bool:
        """Whether this (non-builtin) source reads ``uri``. Checked in registration order."""
        return False

    def records(self) -> Iterator[Record]:
        raise NotImplementedError

    def count(self) -> int:
        """Number of records (partition planning). Override where it can be had without listing them."""
        return sum(1 for _ in self.records())

    def iter_range(self, start: int, stop: int | None) -> Iterator[Record]:
        """Records ``start`` (inclusive) to ``stop`` (exclusive) of :meth:`records`, in order."""
        return itertools.islice(self.records(), start, stop)

    def read_image(self, record: Record) -> bytes:
        raise NotImplementedError

    def read_meta(self, record: Record) -> tuple[Any, dict[str, Any]]:
        """(raw caption, extra fields) of a record; runs in a worker, may read files or raise Rejected."""
        return record.caption, record.extra

    def describe(self) -> str:
        return f"{self.name}:{self.uri}"


SOURCES: dict[str, type[Source]] = {}


def register(cls: type[Source]) -> type[Source]:
    """Class decorator adding a source to the registry under ``cls.name``."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} needs a name")
    SOURCES[cls.name] = cls
    return cls
