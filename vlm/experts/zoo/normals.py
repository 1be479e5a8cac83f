"""``normals``: surface normals derived from the ``depth`` expert's map (no extra weights beyond depth's).

Method: the stored depth map (relative inverse depth, uint8, 255 = near) is read as a height field seen by
an orthographic camera. It is smoothed with a Gaussian (``normals.smooth``), differentiated with Sobel
filters, and gradients are expressed per image width so a full-range ramp across the image is a 45 deg
slope (times ``normals.strength``). The normal is ``n = normalize(-dz/dx, -dz/dy, 1)`` with z pointing to
the camera, stored as RGB uint8 ``(n + 1) / 2 * 255`` (x right, y down, z towards the viewer): an HxWx3 map,
the only three-channel expert. It is a cheap, scale-free approximation, not a trained normal estimator.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from vlm.experts.base import Label, PerImageExpert
from vlm.experts.registry import register


def normals_from_depth(depth: np.ndarray, smooth: float = 1.5, strength: float = 1.0) -> np.ndarray:
    """uint8 HxW relative inverse depth -> uint8 HxWx3 normals (see the module docstring)."""
    import cv2

    z = depth.astype(np.float32) / 255.0
    if smooth > 0:
        z = cv2.GaussianBlur(z, (0, 0), smooth)
    scale = strength * max(z.shape) / 8.0  # Sobel 3x3 sums 8 x the per-pixel slope
    gx = cv2.Sobel(z, cv2.CV_32F, 1, 0, ksize=3) * scale
    gy = cv2.Sobel(z, cv2.CV_32F, 0, 1, ksize=3) * scale
    n = np.stack([-gx, -gy, np.ones_like(z)], axis=-1)
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    return np.round((n + 1.0) * 127.5).clip(0, 255).astype(np.uint8)


@register
class DepthNormals(PerImageExpert):
    name = "normals"
    backend = "from-depth"
    version = "1"
    kind = "dense"
    channels = 3
    requires = ("depth",)

    def options(self) -> dict[str, Any]:
        return self.cfg.normals.model_dump()

    def predict_one(self, image: np.ndarray, deps: Mapping[str, np.ndarray | None]) -> Label:
        depth = deps.get("depth")
        if depth is None:
            raise ValueError("no depth label for this image")
        if depth.shape != image.shape[:2]:
            raise ValueError(f"depth map {depth.shape} does not match image {image.shape[:2]}")
        return Label(normals_from_depth(depth, self.cfg.normals.smooth, self.cfg.normals.strength))
