"""Prismer experts input and bottleneck adaptors, mPLUG fusion + ITC/ITM, LoRA, bf16, checkpointing, S3."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.models.helpers import make_images, tiny_config, train_steps
from vlm.models import build_model, load
from vlm.models.config import ModelConfig


def with_experts(examples):
    rng = np.random.default_rng(1)
    maps = [{"depth": rng.integers(0, 256, (20, 30), dtype=np.uint8), "edge": rng.integers(0, 2, (16, 16), dtype=np.uint8) * 255},
            {},  # no expert at all
            {"edge": rng.integers(0, 256, (32, 32), dtype=np.uint8), "unused": np.zeros((4, 4), np.uint8)}]
    return [{**ex, "experts": m} for ex, m in zip(examples, maps)]


def test_experts_input_any_subset(examples):
    model = build_model(tiny_config("perceiver", experts=["depth", "edge"], experts_input={"num_tokens": 5, "stem_channels": 8}))
    batch = model.collate(with_experts(examples))
    assert batch["expert_maps"].shape == (3, 2, 32, 32) and batch["expert_maps"].dtype == torch.uint8
    assert batch["experts_present"].tolist() == [[True, True], [False, False], [False, True]]
    vis = model.visual_tokens(batch["pixel_values"], batch["expert_maps"], batch["experts_present"])
    assert vis.shape == (3, 17 + 5, 32)
    model.train()
    out = model(**batch)
    out.loss.backward()
    stem_grad = {n: model.experts_input.stems[n].convs[0].weight.grad.abs().sum().item() for n in ("depth", "edge")}
    assert stem_grad["depth"] > 0 and stem_grad["edge"] > 0
    for name, p in model.named_parameters():
        if not p.requires_grad:
            assert p.grad is None, name
    # changing a present expert's map changes the tokens; a missing one's content is ignored
    with torch.no_grad():
        b2 = dict(batch)
        b2["expert_maps"] = batch["expert_maps"].clone()
        b2["expert_maps"][0, 0] = 255 - b2["expert_maps"][0, 0]
        b2["expert_maps"][1, 0] = 77  # sample 1 has no depth: must not matter
        a = model.visual_tokens(batch["pixel_values"], batch["expert_maps"], batch["experts_present"])
        b = model.visual_tokens(b2["pixel_values"], b2["expert_maps"], b2["experts_present"])
        assert not torch.allclose(a[0, 17:], b[0, 17:])
        torch.testing.assert_close(a[1:], b[1:])
    assert model.generate([ex["image"] for ex in examples], "Describe.", num_beams=1,
                          experts=[ex.get("experts") for ex in with_experts(examples)])


def test_experts_bad_maps_are_rejected(examples):
    model = build_model(tiny_config(experts=["depth"]))
    with pytest.raises(ValueError, match="must be uint8"):
        model.collate([{**examples[0], "experts": {"depth": np.zeros((8, 8), np.float32)}}])
    with pytest.raises(ValueError, match="must be HxW"):
        model.collate([{**examples[0], "experts": {"depth": np.zeros((8, 8, 3), np.uint8)}}])


def test_bottleneck_adaptors_start_as_identity_and_train(examples):
    batch_cfg = tiny_config("linear")
    plain = build_model(batch_cfg)
    adapted = build_model(tiny_config("linear", bottleneck={"enabled": True, "reduction": 4}))
    batch = plain.collate(examples)
    with torch.no_grad():
        torch.testing.assert_close(plain(**batch).logits, adapted(**batch).logits)
    assert len(adapted.vision_adaptors) == 2 and len(adapted.llm_adaptors) == 2  # tiny: 2 ViT + 2 LLM blocks
    adapted.train()
    adapted(**batch).loss.backward()
    for mod in [*adapted.vision_adaptors, *adapted.llm_adaptors]:
        assert mod.up.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in adapted.vision.parameters()) and all(p.grad is None for p in adapted.llm.parameters())
    assert adapted.parameter_counts()["trainable"] > plain.parameter_counts()["trainable"]


def test_mplug_fusion_itc_itm(examples, tmp_path):
    cfg = tiny_config("linear", fusion={"enabled": True, "hidden_size": 32, "skip_every": 3, "num_groups": 2},
                      losses={"caption": 1.0, "itc": 0.5, "itm": 0.25})
    model = build_model(cfg)
    assert len(model.fusion.groups) == 2 and all(len(g["co"]) == 3 for g in model.fusion.groups)
    batch = model.collate(examples)
    out = model(**batch)
    assert set(out.losses) == {"caption", "itc", "itm"}
    expected = out.losses["caption"] + 0.5 * out.losses["itc"] + 0.25 * out.losses["itm"]
    torch.testing.assert_close(out.loss, expected)
    losses = train_steps(model, batch, steps=10, lr=1e-2)
    assert losses[-1] < 0.9 * losses[0], losses
    model.save(str(tmp_path / "m"))
    loaded = load(str(tmp_path / "m"))
    with torch.no_grad():
        assert torch.equal(model(**batch).loss, loaded(**batch).loss)
    images = [ex["image"] for ex in examples]
    assert model.generate(images, "Describe.") == loaded.generate(images, "Describe.")


def test_itc_score_ranks_matching_texts_after_itc_training(examples):
    torch.manual_seed(0)
    model = build_model(tiny_config("linear", fusion={"enabled": True, "hidden_size": 32},
                                    losses={"caption": 0.0, "itc": 1.0}))
    images, texts = [ex["image"] for ex in examples], [ex["answer"] for ex in examples]
    train_steps(model, model.collate(examples), steps=30, lr=1e-2)
    # every image against every text: the matching text scores highest
    grid = [model.itc_score(images, [texts[(i + shift) % 3] for i in range(3)]) for shift in range(3)]
    for i in range(3):
        assert grid[0][i] > max(grid[1][i], grid[2][i]), grid
    assert all(-1.0 <= s <= 1.0 for row in grid for s in row)
    # the score is the cosine training optimises (logit-scaled there)
    batch = model.collate(examples)
    with torch.no_grad():
        a_ids, a_mask = model._select(batch["input_ids"], batch["labels"] != -100, model.tokenizer.pad_token_id)
        cos = model.fusion.itc_similarity(model.adapter(model.visual_tokens(batch["pixel_values"])),
                                          model._embed(a_ids), a_mask)
    torch.testing.assert_close(torch.tensor(grid[0]), cos, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="images for"):
        model.itc_score(images, texts[:1])
    with pytest.raises(ValueError, match="no ITC head"):
        build_model(tiny_config("linear")).itc_score(images, texts)


def test_itm_never_uses_an_identical_text_as_negative(examples):
    model = build_model(tiny_config("linear", fusion={"enabled": True, "hidden_size": 32}, losses={"itm": 1.0}))
    same = [{**ex, "answer": "same"} for ex in examples]
    out = model(**model.collate(same))
    assert torch.isfinite(out.losses["itm"])  # only positives: still a finite loss
    with pytest.raises(ValueError, match="fusion.enabled"):
        ModelConfig.model_validate(tiny_config("linear", losses={"itc": 1.0}))


def test_lora_trains_only_lora_and_adapter(examples):
    model = build_model(tiny_config("linear", llm={"type": "tiny", "lora_rank": 4}))
    model.train()
    model(**model.collate(examples)).loss.backward()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("lora_A" in n for n in trainable) and all("lora_" in n or n.startswith("adapter.") for n in trainable)
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)


def test_bf16_and_gradient_checkpointing(examples):
    ref = build_model(tiny_config("qformer"))
    ck = build_model(tiny_config("qformer", gradient_checkpointing=True))
    batch = ref.collate(examples)
    for m in (ref, ck):
        m.train()
        m(**batch).loss.backward()
    assert ck.llm.is_gradient_checkpointing and ck.llm.training and not ck.vision.training
    for (n, a), (_, b) in zip(ref.adapter.named_parameters(), ck.adapter.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4, msg=n)
    bf = build_model(tiny_config("qformer", bf16=True))
    out = bf(**batch)
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.loss)
    assert abs(out.loss.item() - ref(**batch).loss.item()) < 0.1
    assert bf.generate(make_images(1), "Describe.", num_beams=2)


def test_the_frozen_encoder_computes_in_fp32_under_bf16_autocast_unless_told(examples):
    """``vision.precision: fp32`` (default): bf16 autocast leaves the frozen encoder in fp32 (its bf16 features
    lost the stage-one recipe its colours) and its cached tokens are the fp32 ones; ``auto`` follows the autocast."""
    pixels = build_model(tiny_config()).vision.preprocess([ex["image"] for ex in examples])
    for precision in ("fp32", "auto"):
        model = build_model(tiny_config(vision={"type": "tiny", "precision": precision, "cache_size": 8}))
        with torch.no_grad():
            plain = model.visual_tokens(pixels)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                mixed = model.visual_tokens(pixels)
        if precision == "fp32":
            torch.testing.assert_close(mixed, plain, rtol=0, atol=0)  # the cache's fp32 entries, bit for bit
        else:
            assert not torch.equal(mixed.float(), plain), "computed in bf16: rounded"
    assert ModelConfig().vision.precision == "fp32"


def test_save_load_via_s3(s3_prefix, examples):
    model = build_model(tiny_config("perceiver"))
    batch = model.collate(examples)
    train_steps(model, batch, steps=1)
    uri = f"{s3_prefix}/model"
    model.save(uri)
    loaded = load(uri)
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, loaded(**batch).logits)
    with pytest.raises(FileNotFoundError, match="not a model artefact"):
        load(f"{s3_prefix}/nothing-here")
