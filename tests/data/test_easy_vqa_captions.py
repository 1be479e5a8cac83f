"""easy-vqa captions are inferred from the answers: negated questions must not turn into affirmed facts."""

from __future__ import annotations

import pytest

from vlm.data.sources.easy_vqa import caption_from_qa


def _qa(*pairs):
    return [{"question": q, "answers": [a]} for q, a in pairs]


@pytest.mark.parametrize("question", ["is no red shape present?", "does the image not contain a red shape?",
                                      "is there not a red shape?"])
def test_a_negated_yes_is_not_a_colour(question):
    assert caption_from_qa(_qa((question, "yes"), ("is there a circle?", "yes"))) == "A circle."
    assert caption_from_qa(_qa((question, "no"), ("is there a circle?", "yes"))) == "A red circle."


def test_no_triangle_present_names_no_shape():
    assert caption_from_qa(_qa(("is no triangle present?", "yes"), ("what color is the shape?", "teal"))) == \
        "A teal shape."
