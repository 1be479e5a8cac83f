"""Fixtures for the model-library tests (tiny randomly initialised encoders, a fixed batch)."""

from __future__ import annotations

import pytest
import torch

from tests.models.helpers import make_images

torch.set_num_threads(1)


@pytest.fixture
def examples() -> list[dict]:
    ims = make_images(3)
    return [
        {"image": ims[0], "instruction": "What shape is it?", "answer": "a red circle"},
        {"image": ims[1], "instruction": "Describe the picture in a few words please.", "answer": "blue"},
        {"image": ims[2], "prompt": "<Img><ImageHere></Img> caption:", "answer": "green triangle on white"},
    ]
