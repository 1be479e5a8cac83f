"""Continuation logic of the description generator, against a scripted model that records every call."""

from __future__ import annotations

import pytest
from PIL import Image

from vlm.align.config import AlignConfig
from vlm.align.generate import continuation_prompt, count_tokens, describe
from vlm.models.config import DEFAULT_TEMPLATE
from vlm.models.llm import tiny_tokenizer

FIRST = "###Human: <Img><ImageHere></Img> Describe this image in detail. Give as many details as possible. " \
        "Say everything you see. ###Assistant: "


class ScriptedModel:
    """Answers from a script keyed by (image colour, turn); records the prompts of each generate call."""

    def __init__(self, script: dict[tuple[str, int], str]):
        self.script = script
        self.tokenizer = tiny_tokenizer()  # byte-level: one token per byte
        self.calls: list[list[str]] = []

    def format_prompt(self, instruction: str) -> str:
        return DEFAULT_TEMPLATE.format(instruction=instruction)

    def generate(self, images, instructions=None, prompts=None, **kwargs):
        assert instructions is None and len(prompts) == len(images)
        self.calls.append(list(prompts))
        return [self.script[(str(im.getpixel((0, 0))), p.count("###Human: Continue"))] for im, p in zip(images, prompts)]


def img(colour):
    return Image.new("RGB", (8, 8), colour)


RED, BLUE = str((255, 0, 0)), str((0, 0, 255))


def test_prompt_is_the_papers():
    model = ScriptedModel({(RED, 0): "x" * 100})
    describe(model, [img("red")], AlignConfig(min_answer_tokens=10))
    assert model.calls == [[FIRST]]


def test_short_answers_are_continued_long_ones_not():
    script = {(RED, 0): "A red square.", (RED, 1): "It sits on a white background.",
              (BLUE, 0): "A blue square on a white background with a thin black border around it."}
    model = ScriptedModel(script)
    cfg = AlignConfig(min_answer_tokens=40, max_continuations=1, batch_size=2)
    red, blue = describe(model, [img("red"), img("blue")], cfg)
    # round two batches only the short one, with the whole dialogue as the prompt
    assert len(model.calls) == 2 and len(model.calls[1]) == 1
    assert model.calls[1][0] == FIRST + "A red square. ###Human: Continue ###Assistant: "
    assert red.text == "A red square. It sits on a white background."
    assert red.continued == 1 and blue.continued == 0
    assert red.tokens == count_tokens(model.tokenizer, red.text) == len(red.text.encode())
    assert blue.text == script[(BLUE, 0)]


def test_continuation_stops_at_max_and_when_long_enough():
    script = {(RED, 0): "A red square.", (RED, 1): "It is small.", (RED, 2): "It is bright.", (RED, 3): "More."}
    cfg = AlignConfig(min_answer_tokens=1000, max_continuations=2)
    (d,) = describe(ScriptedModel(script), [img("red")], cfg)
    assert d.continued == 2 and d.text == "A red square. It is small. It is bright."
    (d,) = describe(ScriptedModel(script), [img("red")], cfg.model_copy(update={"min_answer_tokens": 20}))
    assert d.continued == 1  # 13 + 1 + 12 bytes >= 20 after one continuation
    (d,) = describe(ScriptedModel(script), [img("red")], cfg.model_copy(update={"max_continuations": 0}))
    assert d.continued == 0


def test_empty_answer_is_not_continued():
    model = ScriptedModel({(RED, 0): "###Human: hi"})
    (d,) = describe(model, [img("red")], AlignConfig(min_answer_tokens=80))
    assert len(model.calls) == 1 and d.continued == 0


def test_role_leak_is_cut_from_the_dialogue_before_continuing():
    assert continuation_prompt("P: ", "A cat. ###Human: more", "###Human: Continue ###Assistant: ") == \
        "P: A cat. ###Human: Continue ###Assistant: "
    script = {(RED, 0): "A cat.###Human: what?", (RED, 1): "It is grey."}
    (d,) = describe(ScriptedModel(script), [img("red")], AlignConfig(min_answer_tokens=80))
    assert d.text == "A cat. It is grey."


def test_wrong_number_of_outputs_is_an_error():
    class Broken(ScriptedModel):
        def generate(self, images, instructions=None, prompts=None, **kwargs):
            return []

    with pytest.raises(RuntimeError, match="returned 0 texts for 1 images"):
        describe(Broken({}), [img("red")], AlignConfig())
