"""Small data shards (docs/formats.md), written with the format's own writer (vlm.data.format)."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from vlm.data import format as fmt


def text_image(text: str = "HELLO", size: tuple[int, int] = (224, 160)) -> np.ndarray:
    img = Image.new("RGB", size, "white")
    ImageDraw.Draw(img).text((12, size[1] // 2 - 16), text, fill="black", font=ImageFont.load_default(size=32))
    return np.asarray(img)


def rect_image(box: tuple[int, int, int, int] = (60, 50, 160, 130), size: tuple[int, int] = (224, 180)) -> np.ndarray:
    img = Image.new("RGB", size, (30, 30, 30))
    ImageDraw.Draw(img).rectangle(box, fill=(230, 230, 230))
    return np.asarray(img)


def face_image(size: int = 224) -> np.ndarray:
    from skimage import data

    return np.asarray(Image.fromarray(data.astronaut()).resize((size, size), Image.BICUBIC))


def noise_image(seed: int, size: tuple[int, int] = (96, 64)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


def key_of(arr: np.ndarray) -> str:
    return hashlib.sha256(arr.tobytes()).hexdigest()[:16]


def write_shards(root: Path, samples: list[tuple[str, bytes | np.ndarray]], per_shard: int, split: str = "train") -> list[str]:
    """Write ``{split}-{i:06d}.tar`` shards + manifest.json; raw bytes are stored as-is (to test bad images)."""
    def members(key: str, img: bytes | np.ndarray) -> dict[str, bytes]:
        if isinstance(img, np.ndarray):
            out = io.BytesIO()
            Image.fromarray(img).save(out, "PNG")  # lossless, so pixel tests are exact
            data, ext, w, h = out.getvalue(), "png", img.shape[1], img.shape[0]
        else:
            data, ext, w, h = img, "jpg", 0, 0
        meta = {"caption": f"sample {key}", "captions": [f"sample {key}"], "source": "test", "width": w, "height": h}
        return {ext: data, "json": json.dumps(meta).encode()}

    shards = fmt.write_split(str(root), split, ((k, members(k, img)) for k, img in samples), per_shard)
    fmt.write_manifest(str(root), fmt.Manifest.build(shards, name="test"))
    return [s.name for s in shards]


def standard_samples(n_noise: int = 5) -> list[tuple[str, np.ndarray]]:
    imgs = [text_image(), rect_image(), face_image(), *[noise_image(i) for i in range(n_noise)]]
    return [(key_of(a), a) for a in imgs]


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """8 images (text, rectangle, face, 5 noise) in 3 shards of up to 3 samples."""
    root = tmp_path / "data"
    write_shards(root, standard_samples(), per_shard=3)
    return root


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
