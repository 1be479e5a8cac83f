"""Prompt template, padding/masks, greedy == beam 1 == a step-by-step reference decode, stop symbol."""

from __future__ import annotations

import pytest
import torch

from tests.models.helpers import make_images, tiny_config
from vlm.models import build_model


def reference_greedy(model, image, prompt: str, steps: int) -> list[int]:
    """Greedy decoding without KV cache, padding or batching: full forward per step."""
    before, after = model._prompt_parts(prompt)
    img = model.adapter(model.visual_tokens(model.vision.preprocess([image])))[0]
    prefix = torch.cat([model._embed(torch.tensor(before)), img, model._embed(torch.tensor(after))])
    ids: list[int] = []
    for _ in range(steps):
        x = torch.cat([prefix, model._embed(torch.tensor(ids, dtype=torch.long))]) if ids else prefix
        nxt = int(model.llm(inputs_embeds=x[None]).logits[0, -1].argmax())
        if nxt == model.tokenizer.eos_token_id:
            break
        ids.append(nxt)
    return ids


def test_template_and_labels_only_on_answers(examples):
    model = build_model(tiny_config())
    assert model.format_prompt("Hi?") == "###Human: <Img><ImageHere></Img> Hi? ###Assistant: "
    batch = model.collate(examples)
    tok = model.tokenizer
    for i, ex in enumerate(examples):
        labels = batch["labels"][i]
        answer_ids = labels[labels != -100].tolist()
        assert tok.decode(answer_ids) == ex["answer"] + "###"
        n = int(batch["attention_mask"][i].sum())
        assert batch["attention_mask"][i, n:].sum() == 0 and (labels[n:] == -100).all()  # right padding
        prompt = ex.get("prompt") or model.format_prompt(ex["instruction"])
        before = prompt.split("<ImageHere>")[0]
        assert int(batch["image_positions"][i]) == len(tok(before, add_special_tokens=False)["input_ids"])


def test_batch_padding_does_not_change_results(examples):
    model = build_model(tiny_config("perceiver"))
    batch = model.collate(examples)
    with torch.no_grad():
        full = model(**batch)
        for i, ex in enumerate(examples):
            single = model(**model.collate([ex]))
            n = single.logits.shape[1]
            torch.testing.assert_close(full.logits[i, :n], single.logits[0], atol=1e-4, rtol=1e-4)
    losses = [model(**model.collate([ex])).losses["caption"] for ex in examples]
    assert all(torch.isfinite(x) for x in losses)


@pytest.mark.parametrize("adapter", ["linear", "qformer"])
def test_greedy_and_beam1_match_reference_decode(adapter):
    model = build_model(tiny_config(adapter, end_sym=""))  # EOS-only stopping, comparable token by token
    images = make_images(2, seed=3)
    instructions = ["What is in the image?", "Say something long about this picture, please."]
    ids = model.generate_ids(images, instructions, num_beams=1, max_new_tokens=6)
    pad = model.tokenizer.pad_token_id
    for i, image in enumerate(images):
        got = [t for t in ids[i].tolist() if t not in (pad, model.tokenizer.eos_token_id)]
        with torch.no_grad():
            assert got == reference_greedy(model, image, model.format_prompt(instructions[i]), 6)
    beam1 = model.generate(images, instructions, num_beams=1, max_new_tokens=6)
    assert beam1 == model.generate(images, instructions, num_beams=1, max_new_tokens=6)
    beam3 = model.generate(images, instructions, num_beams=3, max_new_tokens=6)
    assert len(beam3) == 2 and all(isinstance(t, str) for t in beam3)


def test_generation_stops_on_end_symbol():
    """Teach a frozen tiny LLM (through the adapter) to answer 'ok###'; generation must return exactly 'ok'."""
    from tests.models.helpers import train_steps

    model = build_model(tiny_config("mlp", llm={"type": "tiny", "lora_rank": 8, "lora_targets": ["q_proj", "v_proj",
                                                                                                   "o_proj"]}))
    image = make_images(1)[0]
    batch = model.collate([{"image": image, "instruction": "Answer.", "answer": "ok"}])
    train_steps(model, batch, steps=60, lr=2e-2)
    ids = model.generate_ids([image], "Answer.", num_beams=1, max_new_tokens=12)
    text = model.tokenizer.decode(ids[0], skip_special_tokens=True)
    assert text.startswith("ok###"), text
    assert len(ids[0]) < 12  # stopped at the end symbol, not at max_new_tokens
    assert model.generate([image], "Answer.", num_beams=1) == ["ok"]
    assert model.generate([image], "Answer.", num_beams=3) == ["ok"]


def test_bad_prompts_are_rejected(examples):
    model = build_model(tiny_config())
    with pytest.raises(ValueError, match="exactly once"):
        model.collate([{"image": examples[0]["image"], "prompt": "no placeholder", "answer": "x"}])
    with pytest.raises(ValueError, match="needs 'instruction' or 'prompt'"):
        model.collate([{"image": examples[0]["image"], "answer": "x"}])
    with pytest.raises(ValueError, match="max_length"):
        model.collate([{"image": examples[0]["image"], "instruction": "x" * 200, "answer": "x"}])
    with pytest.raises(ValueError, match="2 instructions for 1 images"):
        model.generate([examples[0]["image"]], ["a", "b"])


def test_describe_first_teaches_the_description_then_the_answer_and_returns_only_the_answer():
    """``describe_first``: a VQA example with a caption teaches "<caption> <question> Answer: <answer>###", the
    answer tokens weighted ``losses.answer``; other examples are unchanged; generation leaves room for the
    description and returns the answer after it."""
    from tests.models.helpers import train_steps

    model = build_model(tiny_config("mlp", describe_first=True, losses={"answer": 4.0},
                                    llm={"type": "tiny", "lora_rank": 8, "lora_targets": ["q_proj", "v_proj", "o_proj"]}))
    image = make_images(1)[0]
    vqa = {"image": image, "instruction": "Is it red?", "answer": "no", "task": "vqa", "caption": "A blue box."}
    examples = [vqa, {**vqa, "caption": None}, {"image": image, "instruction": "Describe.", "answer": "A blue box.",
                                                "task": "caption"}]
    batch = model.collate(examples)
    taught = [model.tokenizer.decode(row[row != -100].tolist()) for row in batch["labels"]]
    assert taught == ["A blue box. Is it red? Answer: no###", "no###", "A blue box.###"]
    weights = batch["loss_weights"][0][batch["labels"][0] != -100].tolist()
    n_answer = len(model.tokenizer(" no###", add_special_tokens=False)["input_ids"])
    assert weights == [1.0] * (len(weights) - n_answer) + [4.0] * n_answer
    assert batch["loss_weights"][0][batch["labels"][0] == -100].eq(0).all(), "no weight on the prompt or padding"
    equal = build_model(tiny_config("mlp", describe_first=True, losses={"answer": 1.0}))
    assert "loss_weights" not in equal.collate(examples), "answer weight 1: the plain mean"
    train_steps(model, model.collate([vqa]), steps=80, lr=2e-2)
    raw = model.tokenizer.decode(model.generate_ids([image], "Is it red?", num_beams=1, max_new_tokens=4)[0],
                                 skip_special_tokens=True)  # the tiny tokenizer: one token per character
    assert raw.startswith("A blue box. Is it red? Answer: no###"), "4 new tokens for the answer, room for the rest"
    assert model.generate([image], "Is it red?", num_beams=1, max_new_tokens=4) == ["no"]
    plain = build_model(tiny_config("mlp"))
    assert plain.collate([vqa])["labels"].ne(-100).sum() < batch["labels"][0].ne(-100).sum()
