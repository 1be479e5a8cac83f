"""The model artefact: ``vlm_config.json`` (the ModelConfig) + ``adapter.safetensors`` (trainable weights only).

Local folders and ``s3://`` prefixes alike. Loading never unpickles: JSON + safetensors only; the frozen
encoders are rebuilt from the sources recorded in the config.
"""

from __future__ import annotations

import json
import logging

from vlm import storage
from vlm.models.config import ModelConfig

log = logging.getLogger(__name__)

CONFIG_FILE = "vlm_config.json"
WEIGHTS_FILE = "adapter.safetensors"
VERSION = "2"  # 2: describe_first describes before the question (version 1 put the question first)


def save_model(model, uri: str) -> str:
    """Write the artefact to ``uri`` (a folder or S3 prefix); returns ``uri``."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in model.trainable_state_dict().items()}
    meta = {"format": "vlm-model", "version": VERSION, "adapter": model.config.adapter.type}
    storage.write_bytes(storage.join(uri, WEIGHTS_FILE), save(state, metadata=meta))
    storage.write_text(storage.join(uri, CONFIG_FILE), model.config.model_dump_json(indent=2) + "\n")
    log.info("saved model artefact (%d trainable tensors) to %s", len(state), uri)
    return str(uri)


def load_config(uri: str) -> ModelConfig:
    try:
        text = storage.read_text(storage.join(uri, CONFIG_FILE))
    except FileNotFoundError:
        raise FileNotFoundError(f"{uri}: not a model artefact ({CONFIG_FILE} missing)") from None
    return ModelConfig.model_validate_json(text)


def load(uri: str, device: str | None = None):
    """Rebuild the model from ``uri`` and load its trained weights (safetensors, never pickle)."""
    from safetensors.torch import load as load_st

    from vlm.models.model import build_model

    cfg = load_config(uri)
    try:
        data = storage.read_bytes(storage.join(uri, WEIGHTS_FILE))
    except FileNotFoundError:
        raise FileNotFoundError(f"{uri}: {WEIGHTS_FILE} missing") from None
    if cfg.describe_first and _metadata(data).get("version", "1") == "1":
        raise ValueError(f"{uri}: trained with the first describe_first format (the question before the "
                         "description), which this version no longer answers in; train it again")
    model = build_model(cfg)
    model.load_trainable_state_dict(load_st(data))
    if device:
        model.to(device)
    return model


def _metadata(safetensors_bytes: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file (its JSON header)."""
    size = int.from_bytes(safetensors_bytes[:8], "little")
    return json.loads(safetensors_bytes[8:8 + size]).get("__metadata__") or {}
