"""Image checks and the sample transform: EXIF orientation, RGB, resize (long side <= max_side), JPEG.

JPEGs are decoded with Pillow's ``draft`` mode (DCT-domain downscaling) when the target is much smaller
than the original, which is where most of the speed over a naive decode + resize comes from.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vlm.data.validate import Rejected

_ROTATED = {5, 6, 7, 8}  # EXIF orientations that swap width and height


@dataclass(frozen=True)
class ImageSpec:
    min_side: int
    max_side: int
    max_pixels: int
    jpeg_quality: int = 90


def open_checked(data: bytes, spec: ImageSpec) -> tuple[Image.Image, int, int]:
    """Open (header only) and check size limits; returns the lazily-loaded image and its displayed
    (EXIF-oriented) width and height. Raises Rejected(undecodable|too_small|too_large)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise Rejected("too_large", str(exc)) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise Rejected("undecodable", f"{type(exc).__name__}: {exc}") from None
    w, h = im.size
    if w * h > spec.max_pixels:
        raise Rejected("too_large", f"{w}x{h} = {w * h} pixels > max_pixels {spec.max_pixels}")
    if min(w, h) < spec.min_side:
        raise Rejected("too_small", f"{w}x{h}, short side < min_side {spec.min_side}")
    try:
        orientation = im.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block is not fatal
        orientation = 1
    if orientation in _ROTATED:
        w, h = h, w
    return im, w, h


def target_size(w: int, h: int, max_side: int) -> tuple[int, int]:
    scale = min(1.0, max_side / max(w, h))
    return max(1, round(w * scale)), max(1, round(h * scale))


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB; transparent pixels are composited onto white, 16-bit/float rescaled."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        a = np.asarray(im, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(a)
        return Image.fromarray(a.astype(np.uint8)).convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, im).convert("RGB")
    return im.convert("RGB")


def decode(data: bytes, spec: ImageSpec, max_side: int | None = None) -> tuple[Image.Image, int, int]:
    """Decode, orient and convert to RGB, downscaled so the long side <= ``max_side`` (default
    spec.max_side). Returns (image, original displayed width, original displayed height)."""
    max_side = max_side or spec.max_side
    im, w, h = open_checked(data, spec)
    tw, th = target_size(w, h, max_side)
    try:
        if im.format == "JPEG" and max(w, h) > 2 * max_side:
            sw, sh = im.size  # stored orientation
            im.draft("RGB", target_size(sw, sh, max_side))
        im.load()
        im = ImageOps.exif_transpose(im) or im
        im = to_rgb(im)
        if im.size != (tw, th):
            im = im.resize((tw, th), Image.Resampling.BICUBIC, reducing_gap=3.0)
    except Rejected:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a property of the sample
        raise Rejected("undecodable", f"{type(exc).__name__}: {exc}") from None
    return im, w, h


def encode_jpeg(im: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality, optimize=False)
    return buf.getvalue()


def process(data: bytes, spec: ImageSpec) -> tuple[bytes, dict[str, int]]:
    """Raw image bytes -> (JPEG bytes, size meta). Raises Rejected."""
    im, w, h = decode(data, spec)
    return encode_jpeg(im, spec.jpeg_quality), {"width": im.width, "height": im.height,
                                                "orig_width": w, "orig_height": h}


def perceptual_hash(data: bytes, spec: ImageSpec) -> int:
    """64-bit pHash (imagehash) of the image, decoded small."""
    import imagehash

    im, _, _ = decode(data, spec, max_side=64)
    return int(str(imagehash.phash(im)), 16)
