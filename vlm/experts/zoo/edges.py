"""``edges``: OpenCV Canny on the grey image. Offline, no weights."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from vlm.experts.base import Label, PerImageExpert
from vlm.experts.registry import register


@register
class CannyEdges(PerImageExpert):
    """A 0/255 edge map."""

    name = "edges"
    backend = "canny"
    version = "1"
    kind = "dense"

    def options(self) -> dict[str, Any]:
        return self.cfg.edges.model_dump()

    def predict_one(self, image: np.ndarray, deps: Mapping[str, np.ndarray | None]) -> Label:
        import cv2

        o = self.cfg.edges
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        if o.blur > 0:
            grey = cv2.GaussianBlur(grey, (0, 0), o.blur)
        return Label(cv2.Canny(grey, o.low, o.high))
