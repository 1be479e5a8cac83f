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


def test_a_shape_or_colour_is_inferred_by_elimination():
    """Images whose questions only deny things still get a caption when one shape (or colour) is left."""
    denied = _qa(("does the image contain a rectangle?", "no"), ("is there a circle?", "no"),
                 ("is no red shape present?", "yes"), ("is there a green shape?", "no"))
    assert caption_from_qa(denied) == "A triangle."
    colours = [("is there a %s shape?" % c, "no") for c in ("red", "green", "blue", "black", "gray", "yellow", "brown")]
    assert caption_from_qa(denied + _qa(*colours)) == "A teal triangle."
    assert caption_from_qa(_qa(("is there a circle?", "no"))) is None, "two shapes left: nothing to say"
