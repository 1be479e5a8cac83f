"""Loading Hugging Face checkpoints for model-backed experts: local folder or S3 prefix, device and dtype."""

from __future__ import annotations

import logging
from typing import Any

from vlm.experts.base import ExpertError

log = logging.getLogger(__name__)


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_checkpoint(source: str, auto_class: Any, device: str, dtype: str = "float32") -> tuple[Any, Any]:
    """``(model, image_processor)`` from a folder written by ``save_pretrained`` (local path or ``s3://``).

    Never downloads from the Hub: the folder must hold ``config.json``, the weights and
    ``preprocessor_config.json``.
    """
    import os

    import torch
    import transformers

    from vlm import storage

    try:
        path = storage.local_copy(source)
    except FileNotFoundError:
        path = None
    if path is None or not os.path.isdir(path):
        raise ExpertError(f"model source {source!r} not found (expected a folder written by save_pretrained)")
    for needed in ("config.json", "preprocessor_config.json"):
        if not os.path.exists(os.path.join(path, needed)):
            raise ExpertError(f"model source {source!r} has no {needed} (save the model and its image processor "
                              "with save_pretrained into one folder)")
    try:
        processor = transformers.AutoImageProcessor.from_pretrained(str(path), local_files_only=True)
        model = auto_class.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ExpertError(f"cannot load {auto_class.__name__} from {source!r}: {exc}") from exc
    torch_dtype = getattr(torch, dtype) if device.startswith("cuda") else torch.float32
    model = model.to(device=device, dtype=torch_dtype).eval()
    log.info("loaded %s from %s on %s (%s, %.1fM params)", type(model).__name__, source, device, torch_dtype,
             sum(p.numel() for p in model.parameters()) / 1e6)
    return model, processor


def pixel_values(processor: Any, images: list, device: str, dtype: Any) -> Any:
    batch = processor(images=images, return_tensors="pt")
    return batch["pixel_values"].to(device=device, dtype=dtype)
