"""Fixtures for the training engine: tiny dataset shards (docs/formats.md, written with vlm.data.format) and
tiny model configs."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
import yaml

COLORS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 40)}
SHAPES = ("circle", "square")


def _image(color: str, shape: str, size: int = 32) -> bytes:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), (245, 245, 245))
    d = ImageDraw.Draw(img)
    box = (6, 6, size - 6, size - 6)
    (d.ellipse if shape == "circle" else d.rectangle)(box, fill=COLORS[color])
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_shards(root: Path, split: str, n: int, per_shard: int, corrupt: int = 0, offset: int = 0) -> list[str]:
    """``n`` synthetic shape samples (caption + one QA) in ``{split}-NNNNNN.tar`` files; ``corrupt`` bad images.

    The split's entries in ``manifest.json`` are (re)written; other splits' entries are kept.
    """
    from vlm.data import format as fmt

    colors = list(COLORS)

    def samples():
        for i in range(n):
            color, shape = colors[(i + offset) % 4], SHAPES[((i + offset) // 4) % 2]
            meta = {"caption": f"a {color} {shape}", "captions": [f"a {color} {shape}"], "source": "test",
                    "width": 32, "height": 32, "qa": [{"question": "What color is the shape?", "answers": [color]}]}
            img = b"not an image" if i < corrupt else _image(color, shape)
            yield f"{split}{i:05d}", {"png": img, "json": json.dumps(meta).encode()}

    shards = fmt.write_split(str(root), split, samples(), per_shard)
    try:
        kept = [s for s in fmt.read_manifest(str(root)).shards if s.split != split]
    except FileNotFoundError:
        kept = []
    fmt.write_manifest(str(root), fmt.Manifest.build(kept + shards, name="train-test"))
    return [s.name for s in shards]


@pytest.fixture(scope="session")
def shards(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("shards")
    write_shards(root, "train", 48, 12, corrupt=1)
    write_shards(root, "val", 8, 8, offset=1)
    return str(root)


TINY_MODEL = {"vision": {"type": "tiny"}, "llm": {"type": "tiny"}, "adapter": {"type": "linear"}}


def tiny_config(tmp: Path, **train) -> dict:
    return {"name": "train-test", "root": str(tmp / "run"), "tracking": {"uri": f"sqlite:///{tmp / 'mlflow.db'}"},
            "model": TINY_MODEL,
            "train": {"strategy": "none", "precision": "fp32", "steps": 6, "batch_size": 4, "lr": 1e-2,
                      "warmup_steps": 2, "checkpoint_every": 3, "eval_samples": 8, "shuffle_buffer": 8, **train}}


def write_config(tmp: Path, **train) -> Path:
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(tiny_config(tmp, **train)))
    return path


@pytest.fixture(autouse=True)
def _train_env(tmp_path, monkeypatch):
    monkeypatch.setenv("VLM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", os.environ.get("TORCH_EXTENSIONS_DIR",
                                                             str(Path.home() / ".cache" / "torch_extensions")))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
