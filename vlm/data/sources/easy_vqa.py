"""``builtin:easy-vqa``: the installable easy-vqa set (64x64 shapes, ~5k images, ~48k questions).

All questions of an image are kept as ``qa``; the caption is derived from the answers to its colour and
shape questions ("A blue rectangle."). easy-vqa's own train/test split is kept as ``orig_split``.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections import defaultdict
from collections.abc import Iterator

from vlm.data.sources.base import InputError, Record, Source, register

SHAPES = {"circle", "rectangle", "triangle"}
COLORS = {"red", "green", "blue", "black", "gray", "teal", "brown", "yellow"}
NEGATIONS = {"not", "no"}  # "does the image not contain a circle?", "is no red shape present?"


def package_dir() -> str:
    spec = importlib.util.find_spec("easy_vqa")
    if spec is None or not spec.origin:
        raise InputError("builtin:easy-vqa needs the easy-vqa package: pip install --no-deps easy-vqa==1.0")
    return os.path.join(os.path.dirname(spec.origin), "data")


def caption_from_qa(qa: list[dict]) -> str | None:
    """'A <colour> <shape>.' inferred from an image's questions and answers (each image has one shape of one
    colour): from the answers to colour / shape questions and affirmed facts, else by elimination (a shape or
    colour is the only one its denied facts leave: "is there a circle?" no, "does the image contain a
    rectangle?" no -> a triangle)."""
    color = shape = None
    absent: set[str] = set()
    for item in qa:
        words = set(item["question"].rstrip("?").split())
        answer = item["answers"][0]
        if answer in SHAPES:
            shape = answer
        elif answer in COLORS:
            color = answer
            shape = shape or next(iter(words & SHAPES), None)
        elif answer in ("yes", "no"):
            if (answer == "yes") != bool(words & NEGATIONS):  # an affirmed fact
                shape = shape or next(iter(words & SHAPES), None)
                color = color or next(iter(words & COLORS), None)
            else:  # a denied fact: "is there a red shape?" no
                absent |= words & (SHAPES | COLORS)
    shape = shape or _only(SHAPES - absent)
    color = color or _only(COLORS - absent)
    if shape is None:
        return f"A {color} shape." if color else None
    return f"A {color} {shape}." if color else f"A {shape}."


def _only(left: set[str]) -> str | None:
    return next(iter(left)) if len(left) == 1 else None


@register
class EasyVqaSource(Source):
    name = "easy-vqa"
    builtin = True

    def records(self) -> Iterator[Record]:
        root = package_dir()
        for split in ("train", "test"):
            with open(os.path.join(root, split, "questions.json")) as fh:
                questions = json.load(fh)
            by_image: dict[int, list[dict]] = defaultdict(list)
            for text, answer, image_id in questions:
                by_image[int(image_id)].append({"question": text, "answers": [answer]})
            images = os.path.join(root, split, "images")
            ids = sorted(int(f[:-4]) for f in os.listdir(images) if f.endswith(".png"))
            for image_id in ids:
                qa = by_image.get(image_id, [])
                yield Record(ref=f"easy-vqa/{split}/{image_id}.png",
                             locator=os.path.join(images, f"{image_id}.png"),
                             caption=caption_from_qa(qa), extra={"qa": qa, "orig_split": split})

    def read_image(self, record: Record) -> bytes:
        with open(record.locator, "rb") as fh:
            return fh.read()
