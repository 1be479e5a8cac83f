"""Small data shards in the format of ../shared/DESIGN.md, built with tarfile + PIL (no dependency on vlm.data)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont


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
    root.mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(0, len(samples), per_shard):
        name = f"{split}-{i // per_shard:06d}.tar"
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for key, img in samples[i : i + per_shard]:
                if isinstance(img, np.ndarray):
                    out = io.BytesIO()
                    Image.fromarray(img).save(out, "PNG")  # lossless, so pixel tests are exact
                    data, ext = out.getvalue(), "png"
                    w, h = img.shape[1], img.shape[0]
                else:
                    data, ext, w, h = img, "jpg", 0, 0
                meta = json.dumps({"caption": f"sample {key}", "captions": [f"sample {key}"], "source": "test",
                                   "width": w, "height": h}).encode()
                for member, payload in ((f"{key}.{ext}", data), (f"{key}.json", meta)):
                    info = tarfile.TarInfo(member)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
        (root / name).write_bytes(buf.getvalue())
        entries.append({"name": name, "num_samples": len(samples[i : i + per_shard]),
                        "sha256": hashlib.sha256(buf.getvalue()).hexdigest()})
    (root / "manifest.json").write_text(json.dumps({"name": "test", "shards": entries,
                                                    "total": len(samples), "rejected": {}}))
    return [e["name"] for e in entries]


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
