"""The held-out probe of `vlm.train.recipe`: every question of N held-out images, per type, vs a text lookup."""

from __future__ import annotations

import numpy as np
import pytest

from tests.train.conftest import COLORS, tiny_config
from vlm.config import parse_config
from vlm.train import train
from vlm.train.recipe import TextLookup, probe, question_type, table


class _Oracle:
    """Answers the colour question from the centre pixel (what a model that uses the image can do)."""

    def answer(self, images, questions, **kw):
        out = []
        for im in images:
            px = np.asarray(im.convert("RGB"))[16, 16].astype(int)
            out.append(min(COLORS, key=lambda c: sum(abs(a - b) for a, b in zip(COLORS[c], px))) + ".")
        return out


class _Constant:
    def __init__(self, text: str):
        self.text = text

    def answer(self, images, questions, **kw):
        return [self.text] * len(images)


def test_probe_scores_each_question_against_the_text_lookup(shards):
    oracle = probe(_Oracle(), shards, split="val", images=8)["metrics"]
    assert oracle["probe/n_images"] == 8 and oracle["probe/n_questions"] == 8
    assert oracle["probe/overall"] == 1.0 and oracle["probe/color"] == 1.0 and oracle["probe/image_needed"] == 1.0
    # the val colours cycle through all four: a lookup that ignores the image gets at most a quarter
    assert oracle["probe/lookup_overall"] == pytest.approx(0.25)
    assert oracle["probe/n_image_needed"] == 6
    guess = TextLookup(shards)("What color is the shape?")
    blind = probe(_Constant(guess), shards, split="val", images=4)["metrics"]
    assert blind["probe/overall"] == blind["probe/lookup_overall"] and blind["probe/image_needed"] == 0.0
    assert "image-needed" in table(oracle) and "color" in table(oracle)
    with pytest.raises(ValueError, match="held-out"):
        probe(_Oracle(), shards, split="train")


def test_question_types():
    assert question_type("is no red shape present?", "yes") == "yes_no"
    assert question_type("what is the blue shape?", "circle") == "shape"
    assert question_type("what is the color of the shape?", "red") == "color"
    assert question_type("how many shapes are there?", "2") == "count"
    assert question_type("where is the circle?", "top left") == "position"


def test_training_logs_the_probe_to_its_run(shards, tmp_path):
    import mlflow

    cfg = parse_config(tiny_config(tmp_path, steps=2, eval_samples=0, probe_images=3, probe_split="val"))
    out = train(cfg, "pretrain", shards, str(tmp_path / "model"))
    assert out.probe["probe/n_images"] == 3 and 0.0 <= out.probe["probe/overall"] <= 1.0
    mlflow.set_tracking_uri(cfg.tracking.uri)
    logged = mlflow.get_run(out.run_id).data.metrics
    for key in ("probe/overall", "probe/image_needed", "probe/color", "probe/lookup_overall"):
        assert logged[key] == pytest.approx(out.probe[key], nan_ok=True)
    with pytest.raises(ValueError, match="held out"):
        parse_config(tiny_config(tmp_path, probe_images=3, probe_split="train"))
