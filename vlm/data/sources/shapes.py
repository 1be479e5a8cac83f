"""``builtin:shapes``: procedural scenes of coloured shapes with exact captions and QA (numpy + PIL).

Scene ``i`` of seed ``s`` is a pure function of ``(s, i)``: 1-3 shapes on a plain background, each in its
own cell of a 3x3 grid, so positions ("top left", "center"...) and counts are exact.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from vlm.data.sources.base import Record, Source, register

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 170, 60), "blue": (30, 70, 220), "yellow": (240, 210, 20),
    "purple": (140, 50, 180), "orange": (245, 140, 20), "black": (15, 15, 15), "white": (250, 250, 250),
}
BACKGROUNDS = ("white", "gray", "black")
BG_RGB = {"white": (255, 255, 255), "gray": (128, 128, 128), "black": (0, 0, 0)}
SHAPES = ("circle", "square", "triangle", "diamond")
CELLS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
NUMBERS = ("zero", "one", "two", "three")


@dataclass(frozen=True)
class Item:
    shape: str
    color: str
    cell: int
    frac: float  # size within its cell
    dx: float
    dy: float


def scene(seed: int, index: int) -> tuple[str, list[Item]]:
    rng = np.random.default_rng([seed, index])
    bg = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    palette = [c for c in COLORS if c != bg]
    n = int(rng.integers(1, 4))
    cells = sorted(rng.choice(9, size=n, replace=False).tolist())
    items = [Item(SHAPES[rng.integers(len(SHAPES))], palette[rng.integers(len(palette))], c,
                  float(rng.uniform(0.55, 0.85)), float(rng.uniform(-0.1, 0.1)), float(rng.uniform(-0.1, 0.1)))
             for c in cells]
    return bg, items


def render(bg: str, items: list[Item], size: int) -> Image.Image:
    im = Image.new("RGB", (size, size), BG_RGB[bg])
    draw = ImageDraw.Draw(im)
    cell = size / 3
    for it in items:
        cx = (it.cell % 3 + 0.5 + it.dx) * cell
        cy = (it.cell // 3 + 0.5 + it.dy) * cell
        r = it.frac * cell / 2
        fill = COLORS[it.color]
        if it.shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        elif it.shape == "square":
            draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
        elif it.shape == "triangle":
            draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
        else:
            draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    return im


def describe(bg: str, items: list[Item]) -> tuple[str, list[dict]]:
    """Exact caption and QA for a scene."""
    parts = [f"a {it.color} {it.shape} at the {CELLS[it.cell]}" for it in items]
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    caption = f"{listed[0].upper()}{listed[1:]} on a {bg} background."
    qa = [{"question": "how many shapes are there?", "answers": [str(len(items)), NUMBERS[len(items)]]},
          {"question": "what color is the background?", "answers": [bg]}]
    for shape in SHAPES:
        of = [it for it in items if it.shape == shape]
        qa.append({"question": f"is there a {shape} in the image?", "answers": ["yes" if of else "no"]})
        if len(of) == 1:
            qa.append({"question": f"what color is the {shape}?", "answers": [of[0].color]})
            qa.append({"question": f"where is the {shape}?", "answers": [CELLS[of[0].cell]]})
    for color in sorted({it.color for it in items}):
        of = [it for it in items if it.color == color]
        if len(of) == 1:
            qa.append({"question": f"what shape is {color}?", "answers": [of[0].shape]})
    return caption, qa


@register
class ShapesSource(Source):
    """``builtin_size`` generated scenes of ``builtin_image_size`` pixels, seeded by ``seed``."""

    name = "shapes"
    builtin = True

    def records(self) -> Iterator[Record]:
        for i in range(self.cfg.builtin_size):
            bg, items = scene(self.cfg.seed, i)
            caption, qa = describe(bg, items)
            yield Record(ref=f"shapes:{self.cfg.seed}:{i}", locator=i, caption=caption,
                         extra={"qa": qa, "objects": [{"shape": it.shape, "color": it.color,
                                                       "position": CELLS[it.cell]} for it in items]})

    def read_image(self, record: Record) -> bytes:
        bg, items = scene(self.cfg.seed, record.locator)
        buf = io.BytesIO()
        render(bg, items, self.cfg.builtin_image_size).save(buf, format="PNG", compress_level=1)
        return buf.getvalue()
