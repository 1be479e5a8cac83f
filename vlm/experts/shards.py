"""Reading data shards and reading/writing label shards (WebDataset tar files, local or S3).

Data shards: ``{split}-{index:06d}.tar`` with ``{key}.jpg|png|webp`` + ``{key}.json``, listed in
``manifest.json`` (``shards: [{name, num_samples, sha256}]``). Label shards: ``{expert}/{same name}.tar`` with
``{key}.{expert}.png`` (uint8 map) and, for experts with metadata, ``{key}.{expert}.json``.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from vlm import storage

log = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class DataShard:
    name: str  # e.g. "train-000000.tar"
    uri: str
    num_samples: int | None = None
    sha256: str | None = None

    @property
    def stem(self) -> str:
        return self.name[: -len(".tar")] if self.name.endswith(".tar") else self.name


def read_manifest(data_uri: str) -> dict[str, Any] | None:
    uri = storage.join(data_uri, MANIFEST)
    try:
        return json.loads(storage.read_text(uri))
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{uri}: not valid JSON: {exc}") from None


def list_data_shards(data_uri: str) -> list[DataShard]:
    """The dataset's shards in manifest order (or sorted ``*.tar`` names when there is no manifest)."""
    manifest = read_manifest(data_uri)
    if manifest is not None:
        entries = manifest.get("shards")
        if not isinstance(entries, list):
            raise ValueError(f"{storage.join(data_uri, MANIFEST)}: 'shards' must be a list of {{name, num_samples, sha256}}")
        shards = []
        for e in entries:
            if not isinstance(e, dict) or "name" not in e:
                raise ValueError(f"{storage.join(data_uri, MANIFEST)}: bad shard entry {e!r}")
            shards.append(DataShard(e["name"], storage.join(data_uri, e["name"]), e.get("num_samples"), e.get("sha256")))
        return shards
    uris = [u for u in storage.list_uris(data_uri, recursive=False) if u.endswith(".tar")]
    if not uris:
        raise FileNotFoundError(f"no data shards under {data_uri!r} (no manifest.json and no *.tar)")
    log.warning("%s has no manifest.json; using the %d *.tar files in name order", data_uri, len(uris))
    return [DataShard(u.replace("\\", "/").rsplit("/", 1)[-1], u) for u in uris]


def split_name(member: str) -> tuple[str, str]:
    """WebDataset convention: ``dir/abc.edges.png`` -> ``("dir/abc", "edges.png")``."""
    slash = member.rfind("/")
    dot = member.find(".", slash + 1)
    return (member, "") if dot < 0 else (member[:dot], member[dot + 1 :])


def iter_tar(uri: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """``(key, {ext: bytes})`` for each sample of a tar (streamed; members of a key must be adjacent)."""
    with storage.open_read(uri) as fh, tarfile.open(fileobj=fh, mode="r|*") as tar:
        key: str | None = None
        group: dict[str, bytes] = {}
        for info in tar:
            if not info.isfile():
                continue
            k, ext = split_name(info.name)
            if not ext:  # not a sample member (WebDataset members are always key.ext)
                continue
            data = tar.extractfile(info).read()  # type: ignore[union-attr]
            if k != key:
                if key is not None:
                    yield key, group
                key, group = k, {}
            group[ext] = data
        if key is not None:
            yield key, group


def decode_image(group: dict[str, bytes], max_side: int | None = None) -> np.ndarray:
    """The sample's image as RGB uint8 HxWx3, shrunk so its long side is at most ``max_side``."""
    from PIL import Image

    ext = next((e for e in IMAGE_EXTS if e in group), None)
    if ext is None:
        raise ValueError(f"no image member (expected one of {', '.join(IMAGE_EXTS)}; got {', '.join(sorted(group))})")
    with Image.open(io.BytesIO(group[ext])) as im:
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
    """Writes one expert's label shard to a local temporary tar, uploaded atomically on :meth:`commit`."""

    def __init__(self, uri: str, expert: str):
        self.uri, self.expert = uri, expert
        fd, self._path = tempfile.mkstemp(prefix="vlm-labels-", suffix=".tar", dir=os.environ.get("VLM_SPOOL_DIR"))
        os.close(fd)
        self._tar = tarfile.open(self._path, "w", format=tarfile.PAX_FORMAT)
        self.count = 0

    def _add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        self._tar.addfile(info, io.BytesIO(data))

    def add(self, key: str, arr: np.ndarray, meta: dict[str, Any] | None = None) -> None:
        self._add(f"{key}.{self.expert}.png", encode_png(arr))
        if meta is not None:
            self._add(f"{key}.{self.expert}.json", json.dumps(meta, separators=(",", ":")).encode())
        self.count += 1

    def commit(self) -> None:
        self._tar.close()
        try:
            storage.upload_file(self._path, self.uri)
        finally:
            self.abort()

    def abort(self) -> None:
        if not self._tar.closed:
            self._tar.close()
        if os.path.exists(self._path):
            os.unlink(self._path)


def read_label_shard(uri: str, expert: str, with_meta: bool = False) -> dict[str, Any]:
    """``key -> map`` (or ``key -> (map, meta)`` with ``with_meta``) for one label shard."""
    out: dict[str, Any] = {}
    for key, group in iter_tar(uri):
        png = group.get(f"{expert}.png")
        if png is None:
            continue
        arr = decode_png(png)
        if with_meta:
            meta = group.get(f"{expert}.json")
            out[key] = (arr, json.loads(meta) if meta else None)
        else:
            out[key] = arr
    return out
