"""``depth``: monocular depth from a Hugging Face depth-estimation checkpoint (DPT, Depth-Anything, ...).

Needs weights: ``experts.sources.depth`` = a folder (local or S3) written by ``save_pretrained`` with the
model and its image processor. These models predict relative inverse depth (disparity); each map is
min-max normalised per image to uint8, so 255 = nearest, 0 = farthest. Batched, on GPU when there is one.
"""

from __future__ import annotations

import numpy as np

from vlm.experts.base import Batch, Expert, Label
from vlm.experts.registry import register


def to_uint8(x: np.ndarray) -> np.ndarray:
    lo, hi = float(np.nanmin(x)), float(np.nanmax(x))
    if not np.isfinite(lo) or not np.isfinite(hi):
        raise ValueError("depth prediction is not finite")
    if hi - lo < 1e-12:
        return np.zeros(x.shape, np.uint8)
    return np.round((x - lo) / (hi - lo) * 255.0).astype(np.uint8)


@register
class HfDepth(Expert):
    name = "depth"
    backend = "hf"
    version = "1"
    kind = "dense"
    needs_weights = True
    batched = True

    def setup(self) -> None:
        from transformers import AutoModelForDepthEstimation

        from vlm.experts.hf import load_checkpoint

        self.model, self.processor = load_checkpoint(self.source, AutoModelForDepthEstimation, self.device, self.cfg.dtype)

    def predict(self, batch: Batch) -> list[Label]:
        import torch
        import torch.nn.functional as F

        from vlm.experts.hf import pixel_values

        param = next(self.model.parameters())
        with torch.inference_mode():
            pred = self.model(pixel_values=pixel_values(self.processor, batch.images, param.device, param.dtype)).predicted_depth
        out = []
        for i, img in enumerate(batch.images):
            d = F.interpolate(pred[i][None, None].float(), size=img.shape[:2], mode="bicubic", align_corners=False)
            out.append(Label(to_uint8(d[0, 0].cpu().numpy())))
        return out
