"""Caption metrics against pycocoevalcap's own numbers, VQA accuracy on hand-worked cases, retrieval recall."""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pytest

from vlm.eval import metrics, tokenize
from vlm.eval.metrics import caption_metrics, caption_scores, perplexity, retrieval_recall, vqa_accuracy

REFS = {
    "1": ["A man riding a wave on top of a surfboard.", "A surfer rides a large wave in the ocean.",
          "Man on a surfboard riding a big wave."],
    "2": ["Two dogs are playing with a frisbee in the park.", "A couple of dogs chase a frisbee on the grass.",
          "Dogs playing in a grassy field."],
    "3": ["A plate of food with broccoli and rice.", "A white plate topped with rice, meat and broccoli."],
    "4": ["A red double-decker bus driving down the street.", "The bus isn't stopping at the station."],
}
PREDS = {"1": "a man riding a wave on a surfboard", "2": "two dogs playing with a frisbee",
         "3": "a plate of rice and broccoli", "4": "a red bus on a city street"}

needs_java = pytest.mark.skipif(not tokenize.java_available(), reason="Java is not installed")


def _library_scores(gts: dict, res: dict, with_meteor: bool = False) -> dict[str, float]:
    """What pycocoevalcap itself computes on already tokenised captions."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    with contextlib.redirect_stdout(io.StringIO()):
        bleu, _ = Bleu(4).compute_score(gts, res)
    out = {f"bleu{i + 1}": bleu[i] for i in range(4)}
    out["cider"] = Cider().compute_score(gts, res)[0]
    out["rouge_l"] = Rouge().compute_score(gts, res)[0]
    if with_meteor:
        from pycocoevalcap.meteor.meteor import Meteor

        out["meteor"] = Meteor().compute_score(gts, res)[0]
    return out


def _library_ptb(captions: dict[str, list[str]]) -> dict[str, list[str]]:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    with contextlib.redirect_stderr(io.StringIO()):
        return PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in captions.items()})


@needs_java
def test_ptb_tokenizer_equals_pycocoevalcap():
    captions = {**REFS, "5": ["Hello (world)!", "e.g. 3.5 kg, isn't it?"], "6": ["dog's   ball\n on the\tgrass"]}
    assert tokenize.tokenize(captions, "ptb") == _library_ptb(captions)


@needs_java
def test_caption_metrics_equal_pycocoevalcap_on_ptb_tokens():
    ours = caption_metrics(REFS, PREDS, tokenizer="ptb", meteor=False)
    ref = _library_scores(_library_ptb(REFS), _library_ptb({k: [v] for k, v in PREDS.items()}))
    assert set(ours) == {"bleu1", "bleu2", "bleu3", "bleu4", "cider", "rouge_l"}
    for name, value in ref.items():
        assert ours[name] == pytest.approx(value, abs=1e-12), name
    assert 0 < ours["bleu4"] < ours["bleu1"] < 1 and ours["cider"] > 0.5


@needs_java
def test_meteor_present_with_java_and_ranks_captions():
    preds = {**PREDS, "3": "a purple elephant"}
    corpus, per = caption_scores(REFS, preds, tokenizer="ptb")
    assert 0 < corpus["meteor"] < 1
    assert per["1"]["meteor"] > per["3"]["meteor"]
    assert corpus["meteor"] == pytest.approx(sum(p["meteor"] for p in per.values()) / len(per), rel=0.2)


@pytest.mark.slow  # two METEOR JVMs: ~17 s idle
@needs_java
def test_meteor_equals_pycocoevalcap():
    ours = caption_metrics(REFS, PREDS, tokenizer="ptb")
    ref = _library_scores(_library_ptb(REFS), _library_ptb({k: [v] for k, v in PREDS.items()}), with_meteor=True)
    assert ours["meteor"] == pytest.approx(ref["meteor"], abs=1e-9)
    assert 0.1 < ours["meteor"] < 1


def test_simple_tokenizer_rule():
    assert tokenize.simple_tokenize("A dog's ball, isn't it? Black-and-white 3.5 kg.") == \
        "a dog 's ball is n't it black-and-white 3.5 kg"
    assert tokenize.simple_tokenize("  Hello\n(WORLD)!! ") == "hello world"


@needs_java
def test_simple_tokenizer_agrees_with_ptb_on_ordinary_captions():
    assert tokenize.tokenize(REFS, "simple") == tokenize.tokenize(REFS, "ptb")


def test_without_java_falls_back_to_simple_tokens_and_no_meteor(monkeypatch):
    monkeypatch.setattr(metrics, "java_available", lambda: False)
    monkeypatch.setattr(tokenize, "java_available", lambda: False)
    monkeypatch.delenv("VLM_EVAL_TOKENIZER", raising=False)
    assert tokenize.default_tokenizer() == "simple"
    ours = caption_metrics(REFS, PREDS)
    assert "meteor" not in ours
    simple = lambda d: {k: [tokenize.simple_tokenize(c) for c in v] for k, v in d.items()}  # noqa: E731
    ref = _library_scores(simple(REFS), simple({k: [v] for k, v in PREDS.items()}))
    for name, value in ref.items():
        assert ours[name] == pytest.approx(value, abs=1e-12), name


def test_caption_scores_rank_better_captions_higher():
    good = caption_scores(REFS, PREDS, tokenizer="simple", meteor=False)
    bad = caption_scores(REFS, {k: "a purple elephant" for k in PREDS}, tokenizer="simple", meteor=False)
    assert good[0]["cider"] > bad[0]["cider"] and good[0]["bleu1"] > bad[0]["bleu1"]
    assert set(good[1]) == set(PREDS) and all(good[1][k]["cider"] > bad[1][k]["cider"] for k in PREDS)
    # an empty prediction scores zero but does not crash
    empty = caption_metrics(REFS, {**PREDS, "1": ""}, tokenizer="simple", meteor=False)
    assert empty["cider"] < good[0]["cider"]


def test_caption_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="no references"):
        caption_metrics(REFS, {"nope": "a cat"}, tokenizer="simple")
    with pytest.raises(ValueError, match="no non-empty reference"):
        caption_metrics({"1": ["", " "]}, {"1": "a cat"}, tokenizer="simple")
    with pytest.raises(ValueError, match="no predictions"):
        caption_metrics(REFS, {}, tokenizer="simple")
    with pytest.raises(ValueError, match="unknown tokenizer"):
        caption_metrics(REFS, PREDS, tokenizer="spacy")


# ------------------------------------------------------------------------------------------------- VQA
@pytest.mark.parametrize("prediction, answers, expected", [
    ("yes", ["yes"] * 10, 1.0),
    ("yes", ["yes"] * 3 + ["no"] * 7, (3 * 2 / 3 + 7 * 1) / 10),   # 0.9
    ("yes", ["yes"] * 2 + ["no"] * 8, (2 * 1 / 3 + 8 * 2 / 3) / 10),  # 0.6
    ("yes", ["yes"] + ["no"] * 9, (1 * 0 + 9 * 1 / 3) / 10),      # 0.3
    ("maybe", ["yes"] * 5 + ["no"] * 5, 0.0),
    (" yes\n", ["yes"] * 10, 1.0),                               # only stripped when the answers agree
    ("yes", ["yes"], 0.0),                                         # one answer: the others never match
])
def test_vqa_accuracy_leave_one_out(prediction, answers, expected):
    assert vqa_accuracy(prediction, answers) == pytest.approx(expected)


# The cases the 2021 official fix changed: when the answers disagree, answers AND prediction are normalised.
@pytest.mark.parametrize("prediction, answers, expected", [
    ("2", ["two"] * 8 + ["2", "three"], 1.0),                       # number words -> digits on the answers too
    ("2", ["two"] * 2 + ["three"] * 8, (2 * 1 / 3 + 8 * 2 / 3) / 10),  # 0.6: the two "two" count
    ("a dog", ["dog"] * 2 + ["the dog"] * 2 + ["cat"] * 6, 1.0),   # articles dropped on both sides
    ("dog", ["a dog"] * 4 + ["cat"] * 6, 1.0),
    ("Dog.", ["dog"] * 3 + ["cat"] * 7, 0.9),                      # case and final period
    ("1,000", ["1,000"] + ["1000"] * 9, 1.0),                      # digit,digit: commas deleted
    ("dont", ["don't"] * 9 + ["do not"], 1.0),                     # contractions (plain apostrophes)
    ("red!", ["red"] * 3 + ["blue"] * 7, 0.9),                     # "!" and "-" are punctuation marks
    ("t-shirt", ["t shirt"] * 3 + ["shirt"] * 7, 0.9),
    ("red?", ["red"] * 2 + ["red?"] + ["blue"] * 7, 0.9),          # a human "red?" counts as "red"
    ("yes: no", ["yes: no", "yes no"] + ["x"] * 8, (1 * 0 + 9 * 1 / 3) / 10),  # ":" is kept: "yes no" differs
])
def test_vqa_accuracy_normalises_when_answers_differ(prediction, answers, expected):
    assert vqa_accuracy(prediction, answers) == pytest.approx(expected)


@pytest.mark.parametrize("prediction, answers", [
    ("Two", ["2"] * 10), ("two", ["2"] * 10), ("Yes", ["yes"] * 10), ("yes.", ["yes"] * 10), ("a dog", ["dog"] * 10),
])
def test_vqa_accuracy_identical_answers_leave_the_prediction_as_written(prediction, answers):
    """Ten identical answers: the official code normalises nothing, so the prediction must match as written."""
    assert vqa_accuracy(prediction, answers) == 0.0
    assert vqa_accuracy(prediction, answers[:-1] + ["something else"]) == 1.0  # one dissent: normalised


@pytest.mark.parametrize("text, expected", [
    ("Two dogs.", "2 dogs"), ("The cat's toy", "cat's toy"), ("3.5 m", "3.5 m"), ("left/right", "left right"),
    ("1,000, ok", "1000 ok"), ("(a) none", "0"), ("Im here", "im here"), ("couldnt've", "couldn't've"),
    ("a.b.c.", "abc"),
])
def test_normalize_answer(text, expected):
    from vlm.eval.vqa_normalize import normalize_answer

    assert normalize_answer(text) == expected


def test_vqa_accuracy_needs_answers():
    with pytest.raises(ValueError):
        vqa_accuracy("yes", [])


# ------------------------------------------------------------------------------------------------- retrieval
def test_retrieval_recall_square():
    sim = np.array([[0.9, 0.1, 0.0], [0.8, 0.7, 0.0], [0.0, 0.6, 0.5]])
    r = retrieval_recall(sim, ks=(1, 2))
    # i2t ranks: img0 -> 0; img1: text1 (0.7) below text0 (0.8) -> 1; img2: text2 (0.5) below text1 -> 1
    assert r["i2t_r1"] == pytest.approx(1 / 3) and r["i2t_r2"] == 1.0
    # t2i: text0 -> img0 (0.9 best) ok; text1 -> img1 0.7 best ok; text2 -> img2 0.5 best ok
    assert r["t2i_r1"] == 1.0 and r["t2i_r2"] == 1.0
    assert r["mean_recall"] == pytest.approx((1 / 3 + 1 + 1 + 1) / 4)


def test_retrieval_recall_several_captions_per_image_and_torch_input():
    import torch

    # 2 images, 4 texts: texts 0,1 -> image 0; texts 2,3 -> image 1
    sim = torch.tensor([[0.2, 0.9, 0.8, 0.1], [0.3, 0.4, 0.1, 0.5]])
    r = retrieval_recall(sim, ks=(1,), text_to_image=[0, 0, 1, 1])
    assert r["i2t_r1"] == 1.0  # img0's best caption (0.9) tops; img1's text3 (0.5) tops
    # t2i: t0 -> img1 wins (0.3 > 0.2) miss; t1 ok; t2 belongs to img1 but img0 wins (0.8 > 0.1) miss; t3 ok
    assert r["t2i_r1"] == pytest.approx(2 / 4)


def test_retrieval_ties_are_pessimistic():
    r = retrieval_recall(np.ones((4, 4)), ks=(1, 4))
    assert r["i2t_r1"] == 0.0 and r["t2i_r1"] == 0.0 and r["i2t_r4"] == 1.0


def test_retrieval_rejects_bad_input():
    with pytest.raises(ValueError, match="text_to_image"):
        retrieval_recall(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="NaN"):
        retrieval_recall(np.array([[np.nan]]))
    with pytest.raises(ValueError, match="no caption"):
        retrieval_recall(np.zeros((3, 2)), text_to_image=[0, 0])


def test_perplexity():
    assert perplexity(10 * math.log(4.0), 10) == pytest.approx(4.0)
    with pytest.raises(ValueError):
        perplexity(1.0, 0)
