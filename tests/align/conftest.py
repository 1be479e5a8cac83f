"""Fixtures: a tiny trained stage-one model artefact and tiny data shards (docs/formats.md, vlm.data.format)."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest

from tests.align.tinylm import COLOURS, image, train_stage_one


@pytest.fixture(scope="session")
def stage_one(tmp_path_factory) -> str:
    """A stage-one model artefact (local folder) that writes degenerate descriptions per image colour."""
    return str(train_stage_one(tmp_path_factory.mktemp("stage-one")))


def write_shards(folder: Path, per_colour: int = 2, split: str = "train", per_shard: int = 4) -> list[str]:
    """``per_colour`` images of each colour (distinct sizes -> distinct keys) in ``{split}-NNNNNN.tar``."""
    samples = []
    for colour in COLOURS:
        for i in range(per_colour):
            buf = io.BytesIO()
            image(colour, 32 + i).save(buf, format="PNG")
            data = buf.getvalue()
            key = hashlib.sha256(data).hexdigest()[:16]
            meta = {"caption": f"a {colour} shape", "captions": [f"a {colour} shape"], "source": "test",
                    "width": 32 + i, "height": 32 + i, "colour": colour,
                    "qa": [{"question": "what colour is it?", "answers": [colour]}]}
            samples.append((key, data, meta))
    samples.sort()
    from vlm.data import format as fmt

    shards = fmt.write_split(str(folder), split, ((key, {"png": data, "json": json.dumps(meta).encode()})
                                                  for key, data, meta in samples), per_shard)
    fmt.write_manifest(str(folder), fmt.Manifest.build(shards, name="align-test"))
    return [s.name for s in shards]


@pytest.fixture
def shards(tmp_path) -> str:
    folder = tmp_path / "data"
    write_shards(folder)
    return str(folder)
