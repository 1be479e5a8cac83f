"""``segmentation`` (backend ``hf``): semantic segmentation from a Hugging Face checkpoint (SegFormer, DPT, ...).

Needs weights: ``experts.sources.segmentation``. The map holds class ids (at most 256 classes); the json
lists the classes present (id -> label from the checkpoint's ``id2label``).
"""

from __future__ import annotations

import numpy as np

from vlm.experts.base import Batch, Expert, ExpertError, Label
from vlm.experts.registry import register


@register
class HfSegmentation(Expert):
    name = "segmentation"
    backend = "hf"
    version = "1"
    kind = "dense"
    needs_weights = True
    batched = True

    def setup(self) -> None:
        from transformers import AutoModelForSemanticSegmentation

        from vlm.experts.hf import load_checkpoint

        self.model, self.processor = load_checkpoint(self.source, AutoModelForSemanticSegmentation, self.device,
                                                     self.cfg.dtype)
        if self.model.config.num_labels > 256:
            raise ExpertError(f"segmentation: {self.model.config.num_labels} classes do not fit a uint8 map")

    def predict(self, batch: Batch) -> list[Label]:
        import torch
        import torch.nn.functional as F

        from vlm.experts.hf import pixel_values

        param = next(self.model.parameters())
        with torch.inference_mode():
            logits = self.model(pixel_values=pixel_values(self.processor, batch.images, param.device, param.dtype)).logits
        id2label = self.model.config.id2label
        out = []
        for i, img in enumerate(batch.images):
            up = F.interpolate(logits[i][None].float(), size=img.shape[:2], mode="bilinear", align_corners=False)
            classes = up[0].argmax(0).to(torch.uint8).cpu().numpy()
            present = [int(c) for c in np.unique(classes)]
            out.append(Label(classes, {"classes": {str(c): str(id2label.get(c, c)) for c in present}}))
        return out
