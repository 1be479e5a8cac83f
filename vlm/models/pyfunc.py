"""The MLflow pyfunc wrapper of a model artefact: ``predict`` captions images or answers questions.

Input: a pandas DataFrame (or a dict of columns / one row, or a list of row dicts) with

- ``image``: encoded image bytes, a base64 string, or a local path / ``s3://`` URI of an image file;
- ``question`` (optional): the question to answer; empty/missing means "describe the image".

Params (optional): ``num_beams``, ``max_new_tokens``. Output: one string per row.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import mlflow.pyfunc

log = logging.getLogger(__name__)

ARTIFACT_KEY = "model"
DEFAULT_CAPTION_INSTRUCTION = "Describe this image briefly."


def signature():
    """Input/output/params schema of the pyfunc."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("binary", "image"), ColSpec("string", "question", required=False)]),
        outputs=Schema([ColSpec("string")]),
        params=ParamSchema([ParamSpec("num_beams", "long", 0), ParamSpec("max_new_tokens", "long", 0)]),
    )


def input_example():
    """A one-row example: a small PNG and a question."""
    import pandas as pd
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(buf, format="PNG")
    return pd.DataFrame({"image": [buf.getvalue()], "question": ["What colour is the image?"]})


def _image(value: Any):
    """bytes / base64 str / path or URI / PIL image -> RGB PIL image, with a clear error."""
    from PIL import Image

    if isinstance(value, Image.Image):
        return value.convert("RGB")
    data: bytes | None = None
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
    elif isinstance(value, str):
        from vlm import storage

        text = value.strip()
        if text.startswith("s3://") or text.startswith("file://") or storage.exists(text):
            data = storage.read_bytes(text)
        else:
            try:
                data = base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError(f"image {text[:80]!r} is neither an existing path/URI nor base64 data") from None
    else:
        raise TypeError(f"image must be bytes, a base64 string or a path, got {type(value).__name__}")
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.convert("RGB")
    except OSError as exc:
        raise ValueError(f"cannot decode image ({len(data)} bytes): {exc}") from None


def _rows(model_input: Any) -> list[dict[str, Any]]:
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        return model_input.to_dict(orient="records")
    if isinstance(model_input, Mapping):
        if all(isinstance(v, (list, tuple)) for v in model_input.values()):
            return pd.DataFrame(dict(model_input)).to_dict(orient="records")
        return [dict(model_input)]
    if isinstance(model_input, Sequence) and not isinstance(model_input, (str, bytes)):
        return [dict(r) if isinstance(r, Mapping) else {"image": r} for r in model_input]
    raise TypeError(f"unsupported input type {type(model_input).__name__}; pass a DataFrame with an 'image' column")


def _question(row: Mapping[str, Any]) -> str | None:
    q = row.get("question")
    if q is None or (isinstance(q, float) and q != q):  # missing or NaN
        return None
    q = str(q).strip()
    return q or None


class VLMPyfunc(mlflow.pyfunc.PythonModel):
    """Loads the model artefact logged under the ``model`` artifact key and generates text."""

    caption_instruction = DEFAULT_CAPTION_INSTRUCTION

    def load_context(self, context) -> None:
        from vlm.models import load

        self.model = load(context.artifacts[ARTIFACT_KEY])
        if hasattr(self.model, "eval"):
            self.model.eval()

    def predict(self, context, model_input, params=None):
        params = dict(params or {})
        rows = _rows(model_input)
        if not rows:
            return []
        missing = [i for i, r in enumerate(rows) if r.get("image") is None]
        if missing:
            raise ValueError(f"rows {missing[:5]} have no 'image'")
        images = [_image(r["image"]) for r in rows]
        instructions = [_question(r) or self.caption_instruction for r in rows]
        kwargs = {k: int(params[k]) for k in ("num_beams", "max_new_tokens") if params.get(k)}
        import torch

        with torch.inference_mode():
            return list(self.model.generate(images, instructions=instructions, **kwargs))
