"""JSONL, CSV, Parquet and Arrow tables: an image column and a caption column (str or list); every other
column passes into the sample json.

The image column holds a path (relative to the table's folder), an ``s3://`` URI, an ``http(s)://`` URL
(URL lists as LAION / CC / SBU ship them; downloaded by :mod:`vlm.data.fetch`), or, in Parquet/Arrow, the
image bytes themselves (a binary column, or the Hugging Face ``datasets`` Image layout: a ``{bytes, path}``
struct). Files are streamed: JSONL/CSV line by line, Parquet one row group at a time (a partition starting
at row ``n`` skips the row groups before it from the file's metadata), Arrow IPC one record batch at a time
from a memory map. S3 tables are cached locally first (``storage.local_copy``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

from vlm import storage
from vlm.data.sources.base import InputError, Record, Source, register
from vlm.data.validate import Rejected, is_url, resolve_under

SUFFIXES = (".jsonl", ".ndjson", ".csv", ".tsv", ".parquet", ".pq", ".arrow")
JSONL, CSV, PARQUET, ARROW = (".jsonl", ".ndjson"), (".csv", ".tsv"), (".parquet", ".pq"), (".arrow",)
COLUMNAR = (PARQUET, ARROW)


def _parent(uri: str) -> str:
    return uri.rsplit("/", 1)[0] if storage.is_s3(uri) else os.path.dirname(os.path.abspath(uri))


@register
class TableSource(Source):
    name = "table"

    @classmethod
    def accepts(cls, uri: str) -> bool:
        return uri.lower().endswith(SUFFIXES)

    def __init__(self, uri: str, cfg):
        super().__init__(uri, cfg)
        if not storage.exists(uri):
            raise InputError(f"input file not found: {uri}")
        self.root = _parent(uri)
        self.kind = next(k for k in (JSONL, CSV, PARQUET, ARROW) if uri.lower().endswith(k))
        self.io_threads = cfg.download.threads

    def _path(self) -> str:
        try:
            return str(storage.local_copy(self.uri)) if storage.is_s3(self.uri) else self.uri
        except OSError as exc:
            raise InputError(f"cannot read {self.uri}: {exc}") from None

    # ---- rows: (row number for refs, row dict or None, error)
    def _rows(self, start: int = 0) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
        """Rows from record index ``start`` on (tables with metadata skip what comes before)."""
        if self.kind == JSONL:
            yield from self._jsonl()
        elif self.kind == CSV:
            yield from self._csv()
        else:
            yield from self._columnar(start)

    def _jsonl(self) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
        try:
            fh = open(self._path(), "rb")
        except OSError as exc:
            raise InputError(f"cannot read {self.uri}: {exc}") from None
        with fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                    yield n, None, f"line {n} is not valid JSON: {exc}"
                    continue
                yield (n, row, "") if isinstance(row, dict) else (n, None, f"line {n} is not a JSON object")

    def _csv(self) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
        import csv

        # invalid UTF-8 becomes lone surrogates, rejected per caption as bad_caption
        with open(self._path(), encoding="utf-8-sig", errors="surrogateescape", newline="") as fh:
            try:
                reader = csv.DictReader(fh, delimiter="\t" if self.uri.lower().endswith(".tsv") else ",")
                columns = reader.fieldnames or []
                self._check_columns(columns)
                for n, row in enumerate(reader, 2):
                    if None in row or any(v is None for v in row.values()):
                        yield n, None, f"row {n} has {len(columns)} columns expected, got a different count"
                        continue
                    yield n, row, ""
            except csv.Error as exc:
                raise InputError(f"cannot parse {self.uri}: {exc}") from None

    def _batches(self, start: int = 0) -> Iterator[tuple[int, Any]]:
        """``(first row index, pyarrow table/batch)``: Parquet row groups or Arrow IPC record batches."""
        import pyarrow as pa

        try:
            if self.kind == PARQUET:
                import pyarrow.parquet as pq

                pf = pq.ParquetFile(self._path())
                self._check_columns(pf.schema_arrow.names)
                first = 0
                for g in range(pf.num_row_groups):
                    rows = pf.metadata.row_group(g).num_rows
                    if first + rows > start:
                        yield first, pf.read_row_group(g)
                    first += rows
                return
            source = pa.memory_map(self._path())
            try:
                reader = pa.ipc.open_file(source)
                batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
            except pa.ArrowInvalid:
                source.seek(0)
                reader = pa.ipc.open_stream(source)
                batches = iter(reader)
            self._check_columns(reader.schema.names)
            first = 0
            for batch in batches:
                if first + batch.num_rows > start:
                    yield first, batch
                first += batch.num_rows
        except InputError:
            raise
        except (pa.ArrowException, OSError) as exc:
            raise InputError(f"cannot parse {self.uri}: {type(exc).__name__}: {exc}") from None

    def _columnar(self, start: int) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
        for first, batch in self._batches(start):
            for i, row in enumerate(batch.to_pylist()):
                yield first + i, row, ""

    def count(self) -> int:
        if self.kind == PARQUET:
            import pyarrow.parquet as pq

            try:
                return pq.ParquetFile(self._path()).metadata.num_rows
            except Exception as exc:  # noqa: BLE001 - any parser error means the file is unusable
                raise InputError(f"cannot parse {self.uri}: {type(exc).__name__}: {exc}") from None
        if self.kind == ARROW:
            return sum(batch.num_rows for _, batch in self._batches())
        return super().count()

    def iter_range(self, start: int, stop: int | None) -> Iterator[Record]:
        if self.kind not in COLUMNAR:
            return super().iter_range(start, stop)
        return self._records(start, stop)

    def _check_columns(self, columns: list[str]) -> None:
        missing = [c for c in (self.cfg.image_column, self.cfg.caption_column) if c not in columns]
        if missing:
            raise InputError(f"{self.uri}: missing column(s) {missing}; columns are {list(columns)} "
                             "(set image_column / caption_column)")

    def records(self) -> Iterator[Record]:
        return self._records(0, None)

    def _records(self, start: int, stop: int | None) -> Iterator[Record]:
        base = os.path.basename(self.uri.rstrip("/"))
        img_col, cap_col = self.cfg.image_column, self.cfg.caption_column
        checked_columns = False
        for n, row, error in self._rows(start):
            if self.kind in COLUMNAR and stop is not None and n >= stop:
                return
            if self.kind in COLUMNAR and n < start:
                continue
            ref = f"{base}:{n}"
            if row is None:
                yield Record(ref=ref, error=("bad_record", error))
                continue
            if not checked_columns and self.kind == JSONL:
                checked_columns = True
                if img_col not in row:
                    raise InputError(f"{self.uri}: first record has no {img_col!r} field; fields are "
                                     f"{sorted(row)} (set image_column)")
            extra = {k: v for k, v in row.items() if k not in (img_col, cap_col)}
            if isinstance(extra.get("qa"), str):  # CSV cells hold JSON text
                try:
                    extra["qa"] = json.loads(extra["qa"])
                except json.JSONDecodeError:
                    pass
            caption, image = row.get(cap_col), row.get(img_col)
            where = image.get("path") if isinstance(image, dict) else image
            ref = f"{ref}:{where.strip()}" if isinstance(where, str) and where.strip() else ref
            try:
                locator = self._locate(image)
            except Rejected as exc:
                yield Record(ref=ref, caption=caption, extra=extra, error=(exc.reason, exc.detail))
                continue
            yield Record(ref=ref, locator=locator, caption=caption, extra=extra)

    def _locate(self, image: Any) -> tuple[str, Any]:
        """``(kind, value)`` for an image cell: ``bytes``, ``url`` or ``path``; raises Rejected."""
        col = self.cfg.image_column
        if isinstance(image, dict) and ("bytes" in image or "path" in image):  # Hugging Face datasets Image
            if image.get("bytes"):
                return "bytes", bytes(image["bytes"])
            image = image.get("path")
        if isinstance(image, (bytes, bytearray, memoryview)):
            if not image:
                raise Rejected("missing_file", f"empty {col!r} bytes")
            return "bytes", bytes(image)
        if not isinstance(image, str) or not image.strip():
            if image is None or isinstance(image, str):
                raise Rejected("missing_file", f"no {col!r} value")
            raise Rejected("bad_record", f"{col!r} holds a {type(image).__name__}, not a path, URL or bytes")
        path = resolve_under(self.root, image.strip())
        return ("url" if is_url(path) else "path"), path

    def read_image(self, record: Record) -> bytes:
        kind, value = record.locator
        if kind == "bytes":
            return value
        if kind == "url":
            from vlm.data.fetch import fetch

            return fetch(value, self.cfg.download)
        return storage.read_bytes(value)
