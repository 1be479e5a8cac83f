"""Evaluation inputs: our dataset shards (read through :mod:`vlm.data.format`), COCO captions json or VQAv2
questions + annotations json.

Every loader returns a list of :class:`EvalSample` plus counted rejections (missing or undecodable
images...). Our shards are checked against the manifest (size, sha256) before any sample is read; a damaged
shard is skipped (counted, named in a warning and in :attr:`EvalData.damaged`), an undecodable sample dropped
and counted (``docs/formats.md``, "Damaged input"); with nothing usable left the load fails naming them.
Loaders are tried in :data:`LOADERS` order; add a format by writing a ``detect``/``load`` pair.
Local paths and ``s3://`` URIs both work (through :mod:`vlm.storage`).
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from vlm import storage
from vlm.data import format as fmt
from vlm.eval.config import EvalConfig

log = logging.getLogger(__name__)


@dataclass
class EvalSample:
    key: str
    image: Image.Image
    captions: list[str] = field(default_factory=list)
    qa: list[dict[str, Any]] = field(default_factory=list)  # {question, answers, question_id?, answer_type?}
    source: str = ""


@dataclass
class EvalData:
    samples: list[EvalSample]
    rejected: Counter
    format: str
    damaged: dict[str, str] = field(default_factory=dict)  # shard URI -> "reason: detail" (skipped shards)


def _decode(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")


def _parent(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[0] if "/" in uri.rstrip("/") else "."


# ------------------------------------------------------------------------------------------ our shards
def _is_shards(uri: str) -> bool:
    return fmt.is_dataset(uri)


def _load_shards(uri: str, cfg: EvalConfig) -> EvalData:
    samples, rejected, damaged = [], Counter(), {}
    for s in fmt.iter_samples(uri, split=cfg.split, rank=0, world_size=1, worker=0, num_workers=1, verify=True,
                              rejected=rejected, damaged=damaged):
        meta = s["meta"]
        captions = [c for c in (meta.get("captions") or [meta.get("caption")]) if isinstance(c, str) and c.strip()]
        qa, bad = fmt.parse_qa(meta.get("qa"))
        rejected["bad_qa"] += bad
        samples.append(EvalSample(s["__key__"], s["image"], captions,
                                  [{"question": q.question, "answers": list(q.answers), "answer_type": q.answer_type}
                                   for q in qa], str(meta.get("source", ""))))
        if cfg.max_samples and len(samples) >= cfg.max_samples:
            break
    return EvalData(samples, +rejected, "shards", damaged)


# ------------------------------------------------------------------------------------------ COCO / VQAv2
def _read_json(uri: str) -> Any:
    try:
        return json.loads(storage.read_text(uri))
    except FileNotFoundError:
        raise FileNotFoundError(f"{uri}: file not found") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{uri}: not valid JSON ({exc})") from None


_ID_IN_NAME = re.compile(r"(\d+)\D*$")


def _image_index(root: str) -> dict[int, str]:
    """image id -> URI for files named like ``COCO_val2014_000000000042.jpg`` or ``42.png`` under ``root``."""
    index = {}
    for uri in storage.list_uris(root):
        name = uri.rsplit("/", 1)[-1]
        stem, _, ext = name.rpartition(".")
        m = _ID_IN_NAME.search(stem)
        if m and ext.lower() in ("jpg", "jpeg", "png", "webp"):
            index.setdefault(int(m.group(1)), uri)
    return index


def _image_root(uri: str, cfg: EvalConfig) -> str:
    if cfg.image_root:
        return cfg.image_root
    parent = _parent(uri)
    images = storage.join(parent, "images")
    return images if storage.list_uris(images) else parent


def _load_images(wanted: list[tuple[int, str | None]], root: str, rejected: Counter) -> dict[int, Image.Image]:
    """Decode images by id (``file_name`` when known, else found by the id in the file name)."""
    index: dict[int, str] | None = None
    out = {}
    for image_id, file_name in wanted:
        uri = storage.join(root, file_name) if file_name else None
        if uri is None or not storage.exists(uri):
            if index is None:
                index = _image_index(root)
            uri = index.get(image_id)
        if uri is None:
            rejected["missing_image"] += 1
            log.warning("image %s not found under %s; skipped", file_name or image_id, root)
            continue
        try:
            out[image_id] = _decode(storage.read_bytes(uri))
        except (OSError, ValueError) as exc:
            rejected["undecodable"] += 1
            log.warning("cannot decode %s (%s); skipped", uri, exc)
    return out


def _load_coco_captions(uri: str, cfg: EvalConfig, data: dict) -> EvalData:
    rejected: Counter = Counter()
    caps: dict[int, list[str]] = {}
    for a in data["annotations"]:
        if not isinstance(a.get("caption"), str) or not a["caption"].strip():
            rejected["bad_caption"] += 1
            continue
        caps.setdefault(int(a["image_id"]), []).append(a["caption"].strip())
    files = {int(im["id"]): im.get("file_name") for im in data.get("images", [])}
    ids = [i for i in (files or caps) if i in caps]
    rejected["no_caption"] += sum(1 for i in files if i not in caps)
    ids = ids[: cfg.max_samples] if cfg.max_samples else ids
    images = _load_images([(i, files.get(i)) for i in ids], _image_root(uri, cfg), rejected)
    samples = [EvalSample(str(i), images[i], caps[i], [], "coco") for i in ids if i in images]
    return EvalData(samples, +rejected, "coco-captions")


def _find_annotations(uri: str, cfg: EvalConfig) -> str:
    if cfg.vqa_annotations:
        return cfg.vqa_annotations
    parent = _parent(uri)
    found = [u for u in storage.list_uris(parent, recursive=False) if u.endswith(".json") and "annotation" in
             u.rsplit("/", 1)[-1].lower()]
    if len(found) != 1:
        raise ValueError(f"VQAv2 questions {uri}: found {len(found)} annotations json next to it; set "
                         "eval.vqa_annotations (--annotations)")
    return found[0]


def _load_vqa(uri: str, cfg: EvalConfig, data: dict) -> EvalData:
    rejected: Counter = Counter()
    ann_uri = _find_annotations(uri, cfg)
    anns = {int(a["question_id"]): a for a in _read_json(ann_uri).get("annotations", [])}
    by_image: dict[int, list[dict]] = {}
    for q in data["questions"]:
        a = anns.get(int(q["question_id"]))
        if a is None:
            rejected["no_annotation"] += 1
            continue
        answers = [x["answer"] if isinstance(x, dict) else str(x) for x in a.get("answers", [])]
        if not answers:
            rejected["no_answers"] += 1
            continue
        by_image.setdefault(int(q["image_id"]), []).append(
            {"question": q["question"], "answers": answers, "question_id": int(q["question_id"]),
             "answer_type": a.get("answer_type"), "question_type": a.get("question_type")})
    ids = list(by_image)[: cfg.max_samples] if cfg.max_samples else list(by_image)
    images = _load_images([(i, None) for i in ids], _image_root(uri, cfg), rejected)
    samples = [EvalSample(str(i), images[i], [], by_image[i], "vqav2") for i in ids if i in images]
    return EvalData(samples, +rejected, "vqav2")


def _load_json(uri: str, cfg: EvalConfig) -> EvalData:
    data = _read_json(uri)
    if isinstance(data, dict) and "questions" in data:
        return _load_vqa(uri, cfg, data)
    if isinstance(data, dict) and isinstance(data.get("annotations"), list) and \
            any("caption" in a for a in data["annotations"][:10]):
        return _load_coco_captions(uri, cfg, data)
    raise ValueError(f"{uri}: neither COCO captions (annotations with 'caption') nor VQAv2 questions "
                     "('questions' + an annotations file)")


LOADERS: list[tuple[str, Callable[[str], bool], Callable[[str, EvalConfig], EvalData]]] = [
    ("shards", _is_shards, _load_shards),
    ("json", lambda uri: uri.endswith(".json"), _load_json),
]


def load_eval_data(uri: str, cfg: EvalConfig) -> EvalData:
    """Samples to evaluate from ``uri`` (shards dir/manifest, COCO captions json, VQAv2 questions json)."""
    for _name, detect, load in LOADERS:
        if detect(uri):
            data = load(uri, cfg)
            if not data.samples:
                raise ValueError(f"{uri}: no usable samples (rejected: {dict(data.rejected) or 'none'})"
                                 + "".join(f"; {shard}: {why}" for shard, why in data.damaged.items()))
            log.info("loaded %d samples (%s) from %s; rejected %s", len(data.samples), data.format, uri,
                     dict(data.rejected) or "none")
            return data
    raise ValueError(f"{uri}: not a dataset we can evaluate on (expected a shard folder with manifest.json, "
                     "a COCO captions json or a VQAv2 questions json)")
