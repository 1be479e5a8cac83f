"""Every adapter: output shapes, frozen parts get no gradient, loss falls, save -> load is exact."""

from __future__ import annotations

import pytest
import torch

from tests.models.helpers import ADAPTERS, make_images, tiny_config, train_steps
from vlm.models import build_model, load
from vlm.models.adapters import ADAPTERS as REGISTRY


def test_registry_has_every_configurable_adapter():
    from typing import get_args

    from vlm.models.config import AdapterConfig

    assert set(get_args(AdapterConfig.model_fields["type"].annotation)) == set(REGISTRY) == set(ADAPTERS)


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_shapes(adapter, examples):
    model = build_model(tiny_config(adapter))
    batch = model.collate(examples)
    vis = model.visual_tokens(batch["pixel_values"])
    assert vis.shape == (3, 17, 32)  # tiny ViT: 16 patches + CLS, width 32
    tokens = model.adapter(vis)
    m = 17 if adapter in ("linear", "mlp") else 4
    assert tokens.shape == (3, m, 64)  # tiny LLM width 64
    out = model(**batch)
    assert out.logits.shape == (3, batch["input_ids"].shape[1] + m, len(model.tokenizer))
    assert set(out.losses) == {"caption"} and torch.isfinite(out.loss)


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_gradients_only_reach_trainable_parts(adapter, examples):
    model = build_model(tiny_config(adapter))
    model.train()
    model(**model.collate(examples)).loss.backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert name.startswith("adapter."), name
            if not (adapter == "tinylm" and name == "adapter.embed.weight"):  # tiny-LM vocab unused as adapter
                assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient for {name}"
        else:
            assert p.grad is None, f"gradient reached frozen {name}"
    counts = model.parameter_counts()
    assert counts["trainable"] == sum(p.numel() for p in model.adapter.parameters())
    assert counts["frozen"] == sum(p.numel() for p in model.vision.parameters()) + sum(
        p.numel() for p in model.llm.parameters())


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_loss_falls_on_a_fixed_batch(adapter, examples):
    model = build_model(tiny_config(adapter))
    losses = train_steps(model, model.collate(examples), steps=10, lr=1e-2)
    assert losses[-1] < 0.92 * losses[0], losses


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_save_load_identical_logits_and_generations(adapter, examples, tmp_path):
    model = build_model(tiny_config(adapter))
    batch = model.collate(examples)
    train_steps(model, batch, steps=2, lr=1e-2)  # move off the initialisation
    uri = model.save(str(tmp_path / "artefact"))
    assert sorted(p.name for p in (tmp_path / "artefact").iterdir()) == ["adapter.safetensors", "vlm_config.json"]
    loaded = load(uri)
    assert loaded.config == model.config
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, loaded(**batch).logits)
    images = [ex["image"] for ex in examples]
    instructions = ["What shape is it?", "Describe it.", "Caption:"]
    assert model.generate(images, instructions) == loaded.generate(images, instructions)
    assert model.generate(images, instructions, num_beams=1) == loaded.generate(images, instructions, num_beams=1)


def test_load_rejects_weights_of_another_adapter(tmp_path):
    build_model(tiny_config("perceiver")).save(str(tmp_path / "p"))
    other = build_model(tiny_config("qformer"))
    from safetensors.torch import load_file

    with pytest.raises(ValueError, match="missing"):
        other.load_trainable_state_dict(load_file(tmp_path / "p" / "adapter.safetensors"))


def test_load_refuses_a_describe_first_artefact_of_the_first_format(tmp_path):
    """Version 1 artefacts put the question before the description; a describe_first one is refused by name
    (its answers would be wrong), any other loads."""
    from safetensors.torch import load_file, save_file

    from vlm.models import load

    for describe_first in (True, False):
        uri = build_model(tiny_config(describe_first=describe_first)).save(str(tmp_path / str(describe_first)))
        weights = tmp_path / str(describe_first) / "adapter.safetensors"
        save_file(load_file(weights), weights, metadata={"format": "vlm-model", "version": "1", "adapter": "linear"})
        if describe_first:
            with pytest.raises(ValueError, match="first describe_first format"):
                load(uri)
        else:
            assert load(uri).config.describe_first is False
    build_model(tiny_config(describe_first=True)).save(str(tmp_path / "v2"))
    assert load(str(tmp_path / "v2")).config.describe_first


def test_tinylm_progressive_stages(examples, tmp_path):
    """PaLM2-VAdapter: stage 1 trains the tiny LM as a captioner; stage 2 reuses its weights as the adapter."""
    stage1 = build_model(tiny_config("tinylm", adapter={"stage": "decoder"}))
    batch = stage1.collate(examples)
    losses = train_steps(stage1, batch, steps=10, lr=1e-2)
    assert losses[-1] < 0.92 * losses[0], losses
    out = stage1(**batch)
    assert set(out.losses) == {"decoder"}
    stage1.save(str(tmp_path / "stage1"))

    stage2 = build_model(tiny_config("tinylm", adapter={"stage": "adapter"}))
    from safetensors.torch import load_file

    stage2.load_trainable_state_dict(load_file(tmp_path / "stage1" / "adapter.safetensors"))
    for name, value in stage1.trainable_state_dict().items():
        assert torch.equal(stage2.trainable_state_dict()[name], value)
    assert set(stage2(**batch).losses) == {"caption"}


def test_images_can_be_bytes_or_paths(tmp_path):
    import io

    model = build_model(tiny_config("linear"))
    im = make_images(1)[0]
    path = tmp_path / "x.png"
    im.save(path)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    outs = [model.generate([x], "Describe.", num_beams=1) for x in (im, str(path), buf.getvalue())]
    assert outs[0] == outs[1] == outs[2]
    with pytest.raises(ValueError, match="cannot decode image"):
        model.generate([b"not an image"], "Describe.")
