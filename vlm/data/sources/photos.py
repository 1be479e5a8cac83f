"""``builtin:photos``: real photos shipped inside scikit-image, scikit-learn and matplotlib, with captions
and QA written by us (``vlm/data/builtin/photos.json``)."""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Iterator
from pathlib import Path

from vlm.data.sources.base import InputError, Record, Source, register

CATALOG = Path(__file__).resolve().parent.parent / "builtin" / "photos.json"
# package -> folder (relative to the package) holding its sample images
FOLDERS = {"skimage": "data", "sklearn": "datasets/images", "matplotlib": "mpl-data/sample_data"}


def photo_path(package: str, file: str) -> str:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.origin:
        raise InputError(f"builtin:photos needs the {package} package installed")
    return os.path.join(os.path.dirname(spec.origin), FOLDERS[package], file)


@register
class PhotosSource(Source):
    name = "photos"
    builtin = True

    def records(self) -> Iterator[Record]:
        for item in json.loads(CATALOG.read_text())["photos"]:
            yield Record(ref=f"{item['package']}/{item['file']}", locator=photo_path(item["package"], item["file"]),
                         caption=item["captions"], extra={"qa": item.get("qa", [])})

    def read_image(self, record: Record) -> bytes:
        with open(record.locator, "rb") as fh:
            return fh.read()
