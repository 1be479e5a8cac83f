"""``detection``: OpenCV Haar cascades (shipped in ``opencv-python-headless<5``) as an instance map.

Each detection is a filled box with its own id (1..255) and the json maps id -> class, box and score. Where
boxes overlap, the nearer object wins: as in Prismer, boxes are painted far-to-near using the mean of the
``depth`` map inside each box (depth maps store relative inverse depth, 255 = nearest). Without depth,
larger boxes are painted first so small objects stay visible.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from vlm.experts.base import ExpertError, Label, PerImageExpert
from vlm.experts.registry import register


@register
class HaarDetection(PerImageExpert):
    name = "detection"
    backend = "haar"
    version = "1"
    kind = "instance"
    after = ("depth",)

    def options(self) -> dict[str, Any]:
        return self.cfg.detection.model_dump()

    def setup(self) -> None:
        import cv2

        self._cascades = {}
        for cls, file in self.cfg.detection.classes.items():
            path = file if os.path.isabs(file) else os.path.join(cv2.data.haarcascades, file)
            cascade = cv2.CascadeClassifier(path)
            if cascade.empty():
                raise ExpertError(f"detection: cannot load cascade {path!r} for class {cls!r} "
                                  f"(available: {sorted(f for f in os.listdir(cv2.data.haarcascades) if f.endswith('.xml'))})")
            self._cascades[cls] = cascade

    def predict_one(self, image: np.ndarray, deps: Mapping[str, np.ndarray | None]) -> Label:
        import cv2

        o = self.cfg.detection
        grey = cv2.equalizeHist(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))
        boxes: list[tuple[str, int, int, int, int, float]] = []
        for cls, cascade in self._cascades.items():
            rects, _, weights = cascade.detectMultiScale3(grey, scaleFactor=o.scale_factor, minNeighbors=o.min_neighbors,
                                                          minSize=(o.min_size, o.min_size), outputRejectLevels=True)
            for (x, y, w, h), s in zip(rects, np.ravel(weights), strict=False):
                boxes.append((cls, int(x), int(y), int(w), int(h), float(s)))
        depth = deps.get("depth")
        if depth is not None:
            key = [float(depth[y:y + h, x:x + w].mean()) for _, x, y, w, h, _ in boxes]  # far (small) first
        else:
            key = [-float(w * h) for _, _, _, w, h, _ in boxes]  # large first
        order = sorted(range(len(boxes)), key=lambda i: key[i])[-255:]
        out = np.zeros(image.shape[:2], np.uint8)
        instances = {}
        for new_id, i in enumerate(order, start=1):
            cls, x, y, w, h, s = boxes[i]
            out[y:y + h, x:x + w] = new_id
            instances[str(new_id)] = {"class": cls, "box": [x, y, x + w, y + h], "score": round(s, 3)}
            if depth is not None:
                instances[str(new_id)]["depth"] = round(key[i], 2)
        return Label(out, {"instances": instances, "ordered_by": "depth" if depth is not None else "area"})
