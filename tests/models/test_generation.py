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


def test_describe_first_teaches_the_description_before_the_question_then_the_answer():
    """``describe_first``: a VQA example with a caption gets the prompt DESCRIBE_THEN_ANSWER (no question in it)
    and teaches "<caption> Question:", then is given " <question> Answer:" (not taught) and taught the answer,
    weighted ``losses.answer``; other examples are unchanged."""
    from vlm.models.config import DESCRIBE_THEN_ANSWER

    model = build_model(tiny_config("mlp", describe_first=True, losses={"answer": 4.0}, max_length=256,
                                    llm={"type": "tiny", "lora_rank": 8, "lora_targets": ["q_proj", "v_proj", "o_proj"]}))
    image = make_images(1)[0]
    vqa = {"image": image, "instruction": "Is it red?", "answer": "no", "task": "vqa", "caption": "A blue box."}
    examples = [vqa, {**vqa, "caption": None}, {"image": image, "instruction": "Describe.", "answer": "A blue box.",
                                                "task": "caption"}]
    batch = model.collate(examples)
    tok = model.tokenizer
    taught = [tok.decode(row[row != -100].tolist()) for row in batch["labels"]]
    assert taught == ["A blue box. Question: no###", "no###", "A blue box.###"]
    first = tok.decode(batch["input_ids"][0][batch["attention_mask"][0].bool()].tolist())
    assert first == (model.format_prompt(DESCRIBE_THEN_ANSWER).replace("<ImageHere>", "")
                     + "A blue box. Question: Is it red? Answer: no###"), "the question only after the description"
    assert "Is it red?" in tok.decode(batch["input_ids"][1].tolist()), "without a caption: the plain template"
    weights = batch["loss_weights"][0][batch["labels"][0] != -100].tolist()
    n_answer = len(tok(" no###", add_special_tokens=False)["input_ids"])
    assert weights == [1.0] * (len(weights) - n_answer) + [4.0] * n_answer
    assert batch["loss_weights"][0][batch["labels"][0] == -100].eq(0).all(), "no weight on the prompt, question, padding"
    equal = build_model(tiny_config("mlp", describe_first=True, losses={"answer": 1.0}, max_length=256))
    assert "loss_weights" not in equal.collate(examples), "answer weight 1: the plain mean"


def test_describe_first_answers_every_question_after_one_description_per_image():
    """``answer`` describes each distinct image once (stopping at "Question:"), then generates only the answer
    after "<description> Question: <question> Answer:"; without describe_first it is ``generate``."""
    from tests.models.helpers import train_steps

    model = build_model(tiny_config("mlp", describe_first=True, losses={"answer": 4.0}, max_length=256))
    images = make_images(2)
    qa = [(0, "Is it red?", "no"), (0, "Is it blue?", "yes"), (1, "Is it red?", "yes")]
    captions = ["A blue box.", "A red box."]
    examples = [{"image": images[i], "instruction": q, "answer": a, "task": "vqa", "caption": captions[i]}
                for i, q, a in qa]
    train_steps(model, model.collate(examples), steps=200, lr=2e-2)
    assert model.describe(images, num_beams=1) == captions
    calls = []
    generate_ids = model.generate_ids
    model.generate_ids = lambda *a, **k: calls.append(k.get("given") is not None) or generate_ids(*a, **k)
    asked = [images[i] for i, _, _ in qa]
    assert model.answer(asked, [q for _, q, _ in qa], num_beams=1, max_new_tokens=8) == ["no", "yes", "yes"]
    assert calls == [False, True], "one batch of descriptions (2 images), one of answers (3 questions)"
    calls.clear()
    given = model.answer(asked, [q for _, q, _ in qa], descriptions=[captions[i] for i, _, _ in qa], num_beams=1,
                         max_new_tokens=8)
    assert given == ["no", "yes", "yes"] and calls == [True], "descriptions given: no description written"
    with pytest.raises(ValueError, match="2 questions for 3 images"):
        model.answer(asked, ["a", "b"])
    plain = build_model(tiny_config("mlp"))
    assert plain.answer(images[:1], ["Is it red?"], num_beams=1) == plain.generate(images[:1], "Is it red?", num_beams=1)
