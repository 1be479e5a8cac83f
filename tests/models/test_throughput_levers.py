"""The training-throughput levers of the model: supervised-only LM head, pooled visual tokens, encoder cache."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.models.helpers import make_images, tiny_config, train_steps
from vlm.models import build_model
from vlm.models.vision import TokenCache, pool_tokens


@pytest.mark.parametrize("adapter", ["linear", "qformer"])
def test_loss_on_supervised_positions_equals_full_sequence_loss(adapter, examples):
    model = build_model(tiny_config(adapter))
    batch = model.collate(examples)
    model.train()
    out = model(**batch)
    logits = out.logits  # computed on demand, over the whole sequence
    m = logits.shape[1] - batch["input_ids"].shape[1]
    labels = torch.stack([torch.cat([row[:p], row.new_full((m,), -100), row[p:]])
                          for row, p in zip(batch["labels"], batch["image_positions"].tolist())])
    full = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
    torch.testing.assert_close(out.loss, full, atol=1e-5, rtol=1e-5)
    out.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.adapter.parameters() if p.requires_grad)


def test_pool_tokens_grid_and_cls():
    x = torch.arange(2 * 49 * 3, dtype=torch.float32).reshape(2, 49, 3)
    out = pool_tokens(x, 2)
    assert out.shape == (2, 4, 3)
    torch.testing.assert_close(out.mean(1), x.mean(1), atol=2.0, rtol=0)  # averages of the same values
    grid = x.reshape(2, 7, 7, 3)
    torch.testing.assert_close(out[:, 0], grid[:, :4, :4].mean((1, 2)))  # adaptive pooling: 0..3 x 0..3
    with_cls = torch.cat([torch.full((2, 1, 3), -1.0), x], 1)
    out = pool_tokens(with_cls, 3)
    assert out.shape == (2, 10, 3) and torch.equal(out[:, 0], with_cls[:, 0])
    assert torch.equal(pool_tokens(x, 7), x)
    with pytest.raises(ValueError, match="square token grid"):
        pool_tokens(torch.zeros(1, 12, 3), 2)


def test_model_pools_the_tiny_vit_grid(examples):
    model = build_model(tiny_config("linear", vision={"type": "tiny", "pool_grid": 2}))
    batch = model.collate(examples)
    assert model.visual_tokens(batch["pixel_values"]).shape == (3, 5, 32)  # CLS + 2x2 of the 4x4 patches
    out = model(**batch)
    assert out.logits.shape == (3, batch["input_ids"].shape[1] + 5, len(model.tokenizer))
    losses = train_steps(model, batch, steps=5)
    assert losses[-1] < losses[0]


def test_token_cache_encodes_each_image_once_and_matches():
    calls: list[int] = []

    def encode(x):
        calls.append(len(x))
        return x.flatten(1)[:, :4] * 2

    cache = TokenCache(3)
    a = torch.randn(4, 2, 3, 3)
    first = cache(a[:2], encode)
    again = cache(a[[1, 0, 2]], encode)
    assert calls == [2, 1] and (cache.hits, cache.misses) == (2, 3)
    torch.testing.assert_close(again, encode(a[[1, 0, 2]]))
    torch.testing.assert_close(first, again[[1, 0]])
    cache(a[3:], encode)  # evicts the least recently used row (a[1])
    assert len(cache) == 3
    calls.clear()
    cache(a[[0, 2, 3]], encode)
    assert calls == []
    cache(a[1:2], encode, salt="bf16")
    assert calls == [1]


def test_cached_model_matches_uncached(examples):
    plain = build_model(tiny_config("linear"))
    cached = build_model(tiny_config("linear", vision={"type": "tiny", "cache_size": 16}))
    batch = plain.collate(examples)
    with torch.no_grad():
        ref = plain(**batch).loss
        for _ in range(2):
            torch.testing.assert_close(cached(**batch).loss, ref)
    assert (cached._vision_cache.hits, cached._vision_cache.misses) == (3, 3)
    ims = make_images(3, seed=1)
    assert cached.generate(ims, "What?", num_beams=1) == plain.generate(ims, "What?", num_beams=1)
