"""``ocr``: a 0/255 text mask plus the recognised words and their boxes (json). Two offline backends:

- ``rapidocr`` (default): PP-OCRv4 det/rec ONNX models shipped inside ``rapidocr-onnxruntime``.
- ``tesseract``: ``pytesseract`` over the Debian ``tesseract-ocr`` binary (``apt-get install tesseract-ocr``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from vlm.experts.base import ExpertError, Label, PerImageExpert
from vlm.experts.registry import register


def _mask(shape: tuple[int, int], polygons: list[np.ndarray]) -> np.ndarray:
    import cv2

    mask = np.zeros(shape, np.uint8)
    if polygons:
        cv2.fillPoly(mask, [np.round(p).astype(np.int32) for p in polygons], 255)
    return mask


@register(default=True)
class RapidOcr(PerImageExpert):
    name = "ocr"
    backend = "rapidocr"
    version = "1"
    kind = "text"

    def options(self) -> dict[str, Any]:
        return {"min_score": self.cfg.ocr.min_score, "det_side": self.cfg.ocr.det_side}

    def setup(self) -> None:
        from rapidocr_onnxruntime import RapidOCR

        threads = int(os.environ.get("OMP_NUM_THREADS") or -1)
        self._engine = RapidOCR(det_limit_side_len=self.cfg.ocr.det_side, intra_op_num_threads=threads,
                                inter_op_num_threads=threads)

    def predict_one(self, image: np.ndarray, deps: Mapping[str, np.ndarray | None]) -> Label:
        result, _ = self._engine(np.ascontiguousarray(image[:, :, ::-1]))  # rapidocr expects BGR
        words, polys = [], []
        for box, text, score in result or []:
            if float(score) < self.cfg.ocr.min_score or not str(text).strip():
                continue
            poly = np.asarray(box, dtype=np.float32)
            polys.append(poly)
            words.append({"text": str(text), "score": round(float(score), 4),
                          "box": [round(float(v), 1) for v in (*poly.min(0), *poly.max(0))],
                          "polygon": poly.round(1).tolist()})
        return Label(_mask(image.shape[:2], polys), {"words": words})


@register
class TesseractOcr(PerImageExpert):
    name = "ocr"
    backend = "tesseract"
    version = "1"
    kind = "text"

    def options(self) -> dict[str, Any]:
        return {"min_score": self.cfg.ocr.min_score, "lang": self.cfg.ocr.lang}

    def setup(self) -> None:
        import pytesseract

        try:
            pytesseract.get_tesseract_version()
        except pytesseract.TesseractNotFoundError:
            raise ExpertError("ocr backend 'tesseract' needs the tesseract binary (apt-get install tesseract-ocr); "
                              "or use the default backend 'rapidocr'") from None

    def predict_one(self, image: np.ndarray, deps: Mapping[str, np.ndarray | None]) -> Label:
        import pytesseract

        data = pytesseract.image_to_data(image, lang=self.cfg.ocr.lang, output_type=pytesseract.Output.DICT)
        words, polys = [], []
        for text, conf, x, y, w, h in zip(data["text"], data["conf"], data["left"], data["top"],
                                          data["width"], data["height"], strict=True):
            score = float(conf) / 100.0
            if not str(text).strip() or score < self.cfg.ocr.min_score:
                continue
            polys.append(np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], np.float32))
            words.append({"text": str(text), "score": round(score, 4), "box": [x, y, x + w, y + h]})
        return Label(_mask(image.shape[:2], polys), {"words": words})
