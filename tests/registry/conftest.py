from __future__ import annotations

import uuid
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_artefact(tmp_path_factory) -> str:
    """A saved tiny model artefact (random tiny vision encoder + tiny LLM + linear adapter)."""
    from vlm.models import ModelConfig, build_model

    path = tmp_path_factory.mktemp("artefact") / "model"
    build_model(ModelConfig(vision={"type": "tiny"}, llm={"type": "tiny"})).save(str(path))
    return str(path)


@pytest.fixture
def model_name() -> str:
    return f"vlm-test-{uuid.uuid4().hex[:8]}"


def png_bytes(color=(200, 30, 30), size=24) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def png_file(tmp_path: Path) -> str:
    p = tmp_path / "img.png"
    p.write_bytes(png_bytes((10, 200, 10)))
    return str(p)
