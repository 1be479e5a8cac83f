"""The MLflow pyfunc wrapper of a model artefact: ``predict`` captions images or answers questions.

Input, in whichever shape a user tries (see :func:`rows`):

- a pandas DataFrame; a dict of columns (lists, or scalars for one row; a scalar next to lists applies to
  every row); a list of row dicts; a list of images; one image;
- column ``image``: encoded image bytes, a base64 string (or a ``data:image/...;base64,`` URI), a local
  path, a ``file://`` or ``s3://`` URI of an image file, or a PIL image;
- column ``question`` (optional): the question to answer (``model.answer``); missing/empty/None means "describe
  the image" (``model.generate`` with the caption instruction).

Params (optional): ``num_beams``, ``max_new_tokens``. Output: one string per row, in input order.
Bad input fails before any generation, naming the row (``row 2: image 'x.jpg': no such file``) or the
unknown column.

The signature declares no input schema on purpose: with one, MLflow converts the input itself first
(``{'image': ['a.jpg']}`` became one row holding a list) and silently drops unknown columns (a misspelt
``questoin`` would caption instead of answer). The input contract is in the model's metadata instead.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import os
from collections.abc import Mapping
from typing import Any

import mlflow.pyfunc

log = logging.getLogger(__name__)

ARTIFACT_KEY = "model"
DEFAULT_CAPTION_INSTRUCTION = "Describe this image briefly."
COLUMNS = ("image", "question")
INPUT_CONTRACT = ("rows with 'image' (bytes, base64 string, local path, file:// or s3:// URI) and optional "
                  "'question' (answered; without one the image is described) as a DataFrame, a dict of "
                  "columns, a list of row dicts or a list of images")
BATCH = 16
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


class InputError(ValueError):
    """The input cannot be read as rows of images (+ questions); the message names the row or column."""


def signature():
    """Output and params schema of the pyfunc (no input schema: see the module docstring)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=None,
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


# --------------------------------------------------------------------------------------- images
def _describe(value: str) -> str:
    return repr(value if len(value) <= 80 else value[:77] + "...")


def _image_bytes(value: str) -> bytes:
    """The bytes a string names: a local path, a file:// or s3:// URI, or base64 data."""
    from vlm import storage

    text = value.strip()
    if text.startswith("data:") and ";base64," in text[:64]:
        text = text.split(";base64,", 1)[1]
    elif text.startswith(("http://", "https://")):
        raise InputError(f"image {_describe(text)}: URLs are not fetched (no network at run time); pass the "
                         "downloaded file's path or its bytes")
    elif text.startswith(("s3://", "file://")) or os.path.exists(text):
        try:
            return storage.read_bytes(text[len("file://"):] if text.startswith("file://") else text)
        except FileNotFoundError:
            raise InputError(f"image {_describe(text)}: no such file") from None
    looks_like_path = len(text) < 16 or text.lower().endswith(_IMAGE_SUFFIXES) or "\\" in text
    if not looks_like_path:
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            pass
    where = f" (relative to {os.getcwd()})" if not os.path.isabs(text) else ""
    raise InputError(f"image {_describe(text)}: no such file{where}, and not base64 image data")


def load_image(value: Any):
    """bytes / base64 str / path or URI / PIL image -> RGB PIL image, with a clear error."""
    from PIL import Image

    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, (bytes, bytearray, memoryview)):
        data, what = bytes(value), f"{len(value)} bytes"
    elif isinstance(value, str):
        data, what = _image_bytes(value), _describe(value.strip())
    else:
        raise InputError(f"image must be bytes, a base64 string, a path or an s3:// URI, got "
                         f"{type(value).__name__}")
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.convert("RGB")
    except (OSError, ValueError) as exc:
        raise InputError(f"image {what} is not a readable image: {exc}") from None


# --------------------------------------------------------------------------------------- rows
def _is_column(value: Any) -> bool:
    """A column of values (list, tuple, numpy array, pandas Series), not one value."""
    import numpy as np
    import pandas as pd

    return isinstance(value, (list, tuple, pd.Series)) or (isinstance(value, np.ndarray) and value.ndim == 1)


def _check_columns(names) -> None:
    unknown = [str(n) for n in names if n not in COLUMNS]
    if unknown:
        raise InputError(f"unknown input column(s) {unknown}; the model reads {INPUT_CONTRACT}")


def _from_columns(columns: Mapping[str, Any]) -> list[dict[str, Any]]:
    _check_columns(columns)
    lengths = {k: len(v) for k, v in columns.items() if _is_column(v)}
    if not lengths:
        return [dict(columns)]
    if len(set(lengths.values())) > 1:
        raise InputError(f"columns have different lengths {lengths}; give one value per row (or a single "
                         "value for every row)")
    values = {k: (list(v) if k in lengths else v) for k, v in columns.items()}
    return [{k: (v[i] if k in lengths else v) for k, v in values.items()} for i in range(next(iter(lengths.values())))]


def rows(model_input: Any) -> list[dict[str, Any]]:
    """The input as ``[{"image": ..., "question": ...}, ...]``, whatever shape it came in (see the module
    docstring); raises :class:`InputError` for unknown columns or ragged columns."""
    import numpy as np
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        return _from_columns({str(c): model_input[c].tolist() for c in model_input.columns})
    if isinstance(model_input, pd.Series):
        model_input = model_input.tolist()
    if isinstance(model_input, np.ndarray):
        model_input = model_input.tolist()
    if isinstance(model_input, Mapping):
        return _from_columns(model_input)
    if isinstance(model_input, (list, tuple)):
        out = []
        for i, item in enumerate(model_input):
            if isinstance(item, Mapping):
                try:
                    _check_columns(item)
                except InputError as exc:
                    raise InputError(f"row {i}: {exc}") from None
                out.append(dict(item))
            else:
                out.append({"image": item})
        return out
    return [{"image": model_input}]  # one image


def _question(row: Mapping[str, Any]) -> str | None:
    q = row.get("question")
    if q is None or (isinstance(q, float) and q != q):  # missing or NaN
        return None
    q = str(q).strip()
    return q or None


def prepare(model_input: Any) -> tuple[list, list[str | None]]:
    """Decoded images and questions (None where the row asks none: the image is described), one per row."""
    images, questions = [], []
    for i, row in enumerate(rows(model_input)):
        if row.get("image") is None:
            raise InputError(f"row {i}: no 'image'; the model reads {INPUT_CONTRACT}")
        try:
            images.append(load_image(row["image"]))
        except InputError as exc:
            raise InputError(f"row {i}: {exc}") from None
        questions.append(_question(row))
    return images, questions


def predict_rows(model, images: list, questions: list[str | None], caption_instruction: str,
                 **kwargs: Any) -> list[str]:
    """One text per row, in row order: ``model.answer`` for the rows with a question, ``model.generate`` with
    ``caption_instruction`` for the others, ``BATCH`` rows at a time."""
    out: list[str | None] = [None] * len(images)

    def fill(rows: list[int], texts) -> None:
        for start in range(0, len(rows), BATCH):
            chunk = rows[start:start + BATCH]
            for i, text in zip(chunk, texts([images[i] for i in chunk], chunk)):
                out[i] = text

    fill([i for i, q in enumerate(questions) if q],
         lambda ims, chunk: model.answer(ims, [questions[i] for i in chunk], **kwargs))
    fill([i for i, q in enumerate(questions) if not q],
         lambda ims, chunk: model.generate(ims, instructions=caption_instruction, **kwargs))
    return out


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
        images, questions = prepare(model_input)
        kwargs = {k: int(params[k]) for k in ("num_beams", "max_new_tokens") if params.get(k)}
        import torch

        with torch.inference_mode():
            return predict_rows(self.model, images, questions, self.caption_instruction, **kwargs)
