"""Tiny model + small datasets in every input format the evaluation reads."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

COLORS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (30, 70, 220), "yellow": (240, 210, 20)}


@pytest.fixture(scope="session")
def tiny_model_uri(tmp_path_factory) -> str:
    from vlm.models import ModelConfig, build_model

    path = tmp_path_factory.mktemp("model") / "tiny"
    build_model(ModelConfig(vision={"type": "tiny"}, llm={"type": "tiny"})).save(str(path))
    return str(path)


@pytest.fixture(scope="session")
def tiny_model(tiny_model_uri):
    from vlm.models import load

    return load(tiny_model_uri)


def _shapes(tmp_path_factory, size: int, per_shard: int, train: float) -> str:
    from vlm.data.config import ShardConfig
    from vlm.data.shard import shard_dataset

    out = str(tmp_path_factory.mktemp("shapes") / "ds")
    shard_dataset("builtin:shapes", out, ShardConfig(builtin_size=size, samples_per_shard=per_shard,
                                                     builtin_image_size=48,
                                                     split={"train": train, "val": 0, "test": 1 - train}))
    return out


@pytest.fixture(scope="session")
def shapes_shards(tmp_path_factory) -> str:
    """16 builtin:shapes scenes (captions + qa), all in the test split."""
    return _shapes(tmp_path_factory, 16, 6, 0.0)


@pytest.fixture(scope="session")
def split_shards(tmp_path_factory) -> str:
    """24 builtin:shapes scenes, half train (for the report's baselines), half test."""
    return _shapes(tmp_path_factory, 24, 12, 0.5)


def _png(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def coco_dir(tmp_path: Path) -> Path:
    """COCO captions json + images (one image file missing, one corrupt: counted rejections)."""
    d = tmp_path / "coco"
    (d / "images").mkdir(parents=True)
    images, anns = [], []
    for i, (name, rgb) in enumerate(COLORS.items(), start=1):
        fn = f"COCO_val2014_{i:012d}.png"
        (d / "images" / fn).write_bytes(_png(rgb))
        images.append({"id": i, "file_name": fn})
        anns += [{"id": 10 * i, "image_id": i, "caption": f"A plain {name} square."},
                 {"id": 10 * i + 1, "image_id": i, "caption": f"An image that is all {name}."}]
    images.append({"id": 5, "file_name": "missing.png"})
    anns.append({"id": 50, "image_id": 5, "caption": "gone"})
    (d / "images" / "broken.png").write_bytes(b"not a png")
    images.append({"id": 6, "file_name": "broken.png"})
    anns.append({"id": 60, "image_id": 6, "caption": "broken"})
    (d / "captions_val2014.json").write_text(json.dumps({"images": images, "annotations": anns}))
    return d


@pytest.fixture
def vqa_dir(tmp_path: Path) -> Path:
    """VQAv2-style questions + annotations (ten answers each) and COCO-named images."""
    d = tmp_path / "vqa"
    d.mkdir()
    questions, anns = [], []
    qid = 0
    for i, (name, rgb) in enumerate(COLORS.items(), start=1):
        (d / f"COCO_val2014_{i:012d}.png").write_bytes(_png(rgb))
        for q, answers, kind in [("What colour is the image?", [name] * 8 + ["dark"] * 2, "other"),
                                 ("Is the image red?", ["yes" if name == "red" else "no"] * 10, "yes/no")]:
            qid += 1
            questions.append({"image_id": i, "question": q, "question_id": qid})
            anns.append({"image_id": i, "question_id": qid, "answer_type": kind, "question_type": "what",
                         "answers": [{"answer": a, "answer_id": k + 1} for k, a in enumerate(answers)]})
    (d / "v2_OpenEnded_mscoco_val2014_questions.json").write_text(json.dumps({"questions": questions}))
    (d / "v2_mscoco_val2014_annotations.json").write_text(json.dumps({"annotations": anns}))
    return d
