"""Fixtures: a tiny trained stage-one model artefact and tiny data shards in the DESIGN.md format."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
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
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for index in range(0, len(samples), per_shard):
        name = f"{split}-{index // per_shard:06d}.tar"
        with tarfile.open(folder / name, "w") as tar:
            for key, data, meta in samples[index : index + per_shard]:
                for member, payload in ((f"{key}.png", data), (f"{key}.json", json.dumps(meta).encode())):
                    info = tarfile.TarInfo(member)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
        names.append(name)
    return names


@pytest.fixture
def shards(tmp_path) -> str:
    folder = tmp_path / "data"
    write_shards(folder)
    return str(folder)
