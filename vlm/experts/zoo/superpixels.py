"""``segmentation`` (offline backend ``slic``): scikit-image SLIC superpixels as an instance map."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from vlm.experts.base import Label, PerImageExpert
from vlm.experts.registry import register


@register(default=True)
class SlicSegmentation(PerImageExpert):
    """Instance ids 1..N (N <= ``superpixels.segments`` <= 255), one per superpixel; json: id -> mean colour."""

    name = "segmentation"
    backend = "slic"
    version = "1"
    kind = "instance"

    def options(self) -> dict[str, Any]:
        return self.cfg.superpixels.model_dump()

    def predict_one(self, image: np.ndarray, deps: Mapping[str, np.ndarray | None]) -> Label:
        from skimage.segmentation import slic

        o = self.cfg.superpixels
        seg = slic(image, n_segments=o.segments, compactness=o.compactness, start_label=1, channel_axis=-1)
        # relabel to consecutive ids 1..N so the map fits in uint8 whatever SLIC returned
        ids, inverse = np.unique(seg, return_inverse=True)
        if len(ids) > 255:
            raise ValueError(f"SLIC produced {len(ids)} segments (> 255)")
        out = (inverse.reshape(seg.shape) + 1).astype(np.uint8)
        return Label(out, {"instances": {str(i + 1): {"class": "superpixel"} for i in range(len(ids))}})
