"""JSONL, CSV and Parquet tables with an image column (path relative to the file, or s3:// URI) and a
caption column (str or list); every other column passes into the sample json."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from typing import Any

from vlm import storage
from vlm.data.sources.base import InputError, Record, Source, register
from vlm.data.validate import Rejected, resolve_under

SUFFIXES = (".jsonl", ".ndjson", ".csv", ".tsv", ".parquet", ".pq")


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

    def _rows(self) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
        lower = self.uri.lower()
        try:
            data = storage.read_bytes(self.uri)
        except OSError as exc:
            raise InputError(f"cannot read {self.uri}: {exc}") from None
        if lower.endswith((".jsonl", ".ndjson")):
            for n, line in enumerate(data.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                    yield n, None, f"line {n} is not valid JSON: {exc}"
                    continue
                yield (n, row, "") if isinstance(row, dict) else (n, None, f"line {n} is not a JSON object")
            return
        if lower.endswith((".csv", ".tsv")):
            import csv

            # invalid UTF-8 becomes lone surrogates, rejected per caption as bad_caption
            text = data.decode("utf-8", "surrogateescape").lstrip("\ufeff")
            try:
                reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if lower.endswith(".tsv") else ",")
                columns = reader.fieldnames or []
                self._check_columns(columns)
                for n, row in enumerate(reader, 2):
                    if None in row or any(v is None for v in row.values()):
                        yield n, None, f"row {n} has {len(columns)} columns expected, got a different count"
                        continue
                    yield n, row, ""
            except csv.Error as exc:
                raise InputError(f"cannot parse {self.uri}: {exc}") from None
            return
        import pandas as pd

        try:
            df = pd.read_parquet(io.BytesIO(data))
        except Exception as exc:  # noqa: BLE001 - any parser error means the file is unusable
            raise InputError(f"cannot parse {self.uri}: {type(exc).__name__}: {exc}") from None
        self._check_columns(list(df.columns))
        for n, row in enumerate(df.to_dict(orient="records")):
            yield n, row, ""

    def _check_columns(self, columns: list[str]) -> None:
        missing = [c for c in (self.cfg.image_column, self.cfg.caption_column) if c not in columns]
        if missing:
            raise InputError(f"{self.uri}: missing column(s) {missing}; columns are {list(columns)} "
                             "(set image_column / caption_column)")

    def records(self) -> Iterator[Record]:
        base = os.path.basename(self.uri.rstrip("/"))
        img_col, cap_col = self.cfg.image_column, self.cfg.caption_column
        checked_columns = False
        for n, row, error in self._rows():
            ref = f"{base}:{n}"
            if row is None:
                yield Record(ref=ref, error=("bad_record", error))
                continue
            if not checked_columns and self.uri.lower().endswith((".jsonl", ".ndjson")):
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
            image = row.get(img_col)
            if not isinstance(image, str) or not image.strip():
                yield Record(ref=ref, caption=row.get(cap_col), extra=extra,
                             error=("missing_file", f"no {img_col!r} value"))
                continue
            try:
                path = resolve_under(self.root, image)
            except Rejected as exc:
                yield Record(ref=f"{ref}:{image}", error=(exc.reason, exc.detail))
                continue
            yield Record(ref=f"{ref}:{image}", locator=path, caption=row.get(cap_col), extra=extra)

    def read_image(self, record: Record) -> bytes:
        return storage.read_bytes(record.locator)
