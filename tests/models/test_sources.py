"""Hugging Face encoders and LLMs from a local folder or an S3 prefix (safetensors only)."""

from __future__ import annotations

import pytest
import torch

from tests.models.helpers import make_images
from vlm import storage
from vlm.models import build_model, load


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory):
    """A tiny CLIP (vision tower used) and a tiny Llama + tokenizer saved as Hugging Face folders."""
    from transformers import CLIPConfig, CLIPModel

    from vlm.models.llm import LLMS
    from vlm.models.config import LLMConfig

    root = tmp_path_factory.mktemp("hf")
    clip_cfg = CLIPConfig(text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                       "num_attention_heads": 2, "vocab_size": 100},
                          vision_config={"hidden_size": 48, "intermediate_size": 64, "num_hidden_layers": 2,
                                         "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
                          projection_dim=16)
    torch.manual_seed(0)
    CLIPModel(clip_cfg).save_pretrained(root / "clip")
    (root / "clip" / "preprocessor_config.json").write_text(
        '{"image_mean": [0.48, 0.46, 0.41], "image_std": [0.27, 0.26, 0.28]}')
    llm, tok = LLMS["tiny"](LLMConfig(type="tiny"), 7)
    llm.save_pretrained(root / "llm")
    tok.save_pretrained(root / "llm")
    return root


def test_hf_vision_and_llm_from_local_folders(hf_folders, tmp_path):
    cfg = {"vision": {"type": "hf", "source": str(hf_folders / "clip")},
           "llm": {"type": "hf", "source": str(hf_folders / "llm")},
           "adapter": {"type": "qformer", "hidden_size": 32, "num_queries": 3, "num_layers": 1}}
    model = build_model(cfg)
    assert type(model.vision.model).__name__ == "CLIPVisionTransformer" or "Vision" in type(model.vision.model).__name__
    assert model.vision.hidden_size == 48 and model.vision.image_size == 32
    assert model.vision.mean == (0.48, 0.46, 0.41)
    assert not any(p.requires_grad for p in model.vision.parameters())
    images = make_images(2)
    batch = model.collate([{"image": im, "instruction": "What?", "answer": "x y"} for im in images])
    assert model.visual_tokens(batch["pixel_values"]).shape == (2, 17, 48)
    out = model(**batch)
    assert torch.isfinite(out.loss)
    model.save(str(tmp_path / "art"))
    again = load(str(tmp_path / "art"))
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, again(**batch).logits)


def test_hf_sources_from_s3(hf_folders, s3_prefix):
    storage.upload_tree(hf_folders / "llm", f"{s3_prefix}/llm")
    cfg = {"vision": {"type": "tiny"}, "llm": {"type": "hf", "source": f"{s3_prefix}/llm"}}
    model = build_model(cfg)
    local = build_model({"vision": {"type": "tiny"}, "llm": {"type": "hf", "source": str(hf_folders / "llm")}})
    batch = model.collate([{"image": make_images(1)[0], "instruction": "What?", "answer": "x"}])
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, local(**batch).logits)


def test_missing_source_is_a_clear_error():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="needs llm.source"):
        build_model({"llm": {"type": "hf"}})
