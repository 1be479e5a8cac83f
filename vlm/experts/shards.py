"""Expert images in, label maps out: decoding data samples and encoding/decoding label shards.

The formats are :mod:`vlm.data.format`'s (``docs/formats.md``): data shards are read with its reader, and
label shards ``{expert}/{data shard name}`` with ``{key}.{expert}.png`` (uint8 map) and, for experts with
metadata, ``{key}.{expert}.json`` are written with its :class:`~vlm.data.format.ShardWriter`.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from vlm.data import format as fmt


def decode_image(sample: dict[str, Any], max_side: int | None = None) -> np.ndarray:
    """A raw data sample's image as RGB uint8 HxWx3, shrunk so its long side is at most ``max_side``."""
    from PIL import Image

    _, data = fmt.image_member(sample)
    with Image.open(io.BytesIO(data)) as im:
        im = im.convert("RGB")
        if max_side and max(im.size) > max_side:
            scale = max_side / max(im.size)
            im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.BICUBIC)
        return np.asarray(im, dtype=np.uint8).copy()


def encode_png(arr: np.ndarray) -> bytes:
    import cv2

    if arr.ndim == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", arr, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise ValueError(f"cannot PNG-encode an array of shape {arr.shape}")
    return buf.tobytes()


def decode_png(data: bytes) -> np.ndarray:
    import cv2

    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ValueError("undecodable PNG label")
    if arr.ndim == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
    return arr


class LabelShardWriter:
    """One expert's label shard; it appears at ``uri`` only on :meth:`commit` (nothing on :meth:`abort`)."""

    def __init__(self, uri: str, expert: str):
        self.uri, self.expert = uri, expert
        self._writer = fmt.ShardWriter(uri)

    @property
    def count(self) -> int:
        return self._writer.count

    def add(self, key: str, arr: np.ndarray, meta: dict[str, Any] | None = None) -> None:
        self._writer.write(key, fmt.label_members(self.expert, encode_png(arr), meta))

    def commit(self) -> None:
        self._writer.commit()

    def abort(self) -> None:
        self._writer.abort()


def read_label_shard(uri: str, expert: str, with_meta: bool = False) -> dict[str, Any]:
    """``key -> map`` (or ``key -> (map, meta)`` with ``with_meta``) for one label shard."""
    import json

    out: dict[str, Any] = {}
    for sample in fmt.iter_shard(uri):
        png = sample.get(f"{expert}.png")
        if png is None:
            continue
        arr = decode_png(png)
        if with_meta:
            meta = sample.get(f"{expert}.json")
            out[sample["__key__"]] = (arr, json.loads(meta) if meta else None)
        else:
            out[sample["__key__"]] = arr
    return out
