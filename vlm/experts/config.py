"""Config of the expert-label precomputation stage."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from vlm.configbase import Section


class EdgesConfig(Section):
    """Canny edges on the grey image (after a Gaussian blur)."""

    low: int = Field(100, ge=0, le=1000, description="hysteresis low threshold")
    high: int = Field(200, ge=0, le=1000, description="hysteresis high threshold")
    blur: float = Field(1.0, ge=0, description="Gaussian sigma before Canny; 0 = none")

    @model_validator(mode="after")
    def _order(self) -> EdgesConfig:
        if self.low > self.high:
            raise ValueError(f"edges.low ({self.low}) must not exceed edges.high ({self.high})")
        return self


class OcrConfig(Section):
    """Text detection + recognition: a 0/255 text mask plus the words and their boxes."""

    min_score: float = Field(0.5, ge=0, le=1, description="drop words recognised with a lower confidence")
    det_side: int = Field(480, ge=32, description="rapidocr: the text detector's input short side (upscaled to this; "
                                                   "736 = rapidocr's default, ~2.5x slower than 480, 320 ~2x faster)")
    lang: str = Field("eng", description="tesseract language (tesseract backend only)")


class SuperpixelConfig(Section):
    """SLIC superpixels as an instance map (ids 1..N)."""

    segments: int = Field(64, ge=2, le=255, description="target number of superpixels (at most 255 ids)")
    compactness: float = Field(10.0, gt=0)


class DetectionConfig(Section):
    """OpenCV Haar cascades; each detection becomes one instance id in the map."""

    classes: dict[str, str] = Field(
        default_factory=lambda: {"face": "haarcascade_frontalface_default.xml",
                                 "cat_face": "haarcascade_frontalcatface_extended.xml",
                                 "person": "haarcascade_fullbody.xml"},
        description="class name -> cascade file (a name in cv2.data.haarcascades or a path)")
    scale_factor: float = Field(1.1, gt=1.0)
    min_neighbors: int = Field(5, ge=0)
    min_size: int = Field(16, ge=1, description="smallest box side in pixels")


class NormalsConfig(Section):
    """Surface normals derived from the depth map (see vlm/experts/zoo/normals.py)."""

    smooth: float = Field(1.5, ge=0, description="Gaussian sigma applied to depth before differentiating")
    strength: float = Field(1.0, gt=0, description="gradient gain: a full-range depth ramp across the image = 45 deg x strength")


class ExpertsConfig(Section):
    """Which frozen experts label the images, and where their labels go."""

    enabled: bool = True
    experts: list[str] = Field(default_factory=lambda: ["edges", "segmentation"])
    output: str = Field("", description="labels URI; empty = <run root>/labels")
    resolution: int = Field(224, ge=16, description="images are shrunk so the long side is at most this; labels have that size")
    batch_size: int = Field(16, ge=1)
    device: str = Field("auto", description="auto (cuda when present), cpu, cuda, cuda:N")
    workers: int = Field(1, ge=1, description="processes working on different shards")
    shard_groups: int = Field(1, ge=1, description="fan-out width of the kfp ParallelFor")
    sources: dict[str, str] = Field(default_factory=dict, description="expert -> model path/S3 URI")
    backends: dict[str, str] = Field(default_factory=dict,
                                     description="expert -> backend (e.g. ocr: tesseract); default: hf when a source is set, else the offline one")
    broken_after: int = Field(16, ge=1, description="stop when an expert failed this many images in a row and never succeeded")
    dtype: Literal["float32", "float16", "bfloat16"] = Field("float32", description="model-backed experts' weights on GPU")
    edges: EdgesConfig = EdgesConfig()
    ocr: OcrConfig = OcrConfig()
    superpixels: SuperpixelConfig = SuperpixelConfig()
    detection: DetectionConfig = DetectionConfig()
    normals: NormalsConfig = NormalsConfig()
