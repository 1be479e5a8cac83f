"""The report a person reads: its sections, their order and numbers; question types; text-only baselines."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from vlm.eval.baselines import vqa_baselines
from vlm.eval.data import EvalSample
from vlm.eval.question_types import question_type
from vlm.eval.report import change, fmt, write_report


def md_table(md: str, title: str) -> list[dict[str, str]]:
    """Rows of the Markdown table under ``## title`` as dicts (header -> cell)."""
    block = md.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in block.splitlines() if line.startswith("|")]
    split = lambda line: [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]  # noqa: E731
    headers = split(lines[0])
    return [dict(zip(headers, split(line))) for line in lines[2:]]


# ------------------------------------------------------------------------------------------ question types
def test_question_types_of_the_builtin_shapes_templates():
    from vlm.data.sources.shapes import describe, scene

    seen = {}
    for i in range(40):
        for qa in describe(*scene(0, i))[1]:
            seen.setdefault(qa["question"].split()[0] + " " + qa["question"].split()[1], set()).add(question_type(qa))
    assert seen == {"how many": {"count"}, "what color": {"color"}, "is there": {"yes/no"}, "where is": {"position"},
                    "what shape": {"shape"}}


def test_question_types_of_every_easy_vqa_template():
    """easy-vqa's 24 templates: yes/no ones, colour ones and shape ones, judged against the answers."""
    import importlib.util
    import os

    root = os.path.join(os.path.dirname(importlib.util.find_spec("easy_vqa").origin), "data")
    with open(os.path.join(root, "test", "questions.json")) as fh:
        questions = json.load(fh)
    from vlm.data.sources.easy_vqa import COLORS, SHAPES

    for text, answer, _ in questions[:3000]:
        want = "yes/no" if answer in ("yes", "no") else "color" if answer in COLORS else "shape"
        assert answer in ("yes", "no") or answer in COLORS or answer in SHAPES
        assert question_type({"question": text, "answers": [answer]}) == want, text


def test_a_given_type_wins_and_unknown_templates_group_by_their_first_words():
    assert question_type({"question": "What color is the bus?", "question_type": "what color is the"}) == \
        "what color is the"
    assert question_type({"question": "Who is holding the umbrella?"}) == "who is"
    assert question_type({"question": "Are these cats?"}) == "yes/no"
    assert question_type({"question": ""}) == "other"


# ------------------------------------------------------------------------------------------ baselines
def _sample(key, qa, captions=(), color=(200, 30, 30)):
    return EvalSample(key, Image.new("RGB", (40, 40), color), list(captions), qa)


def _records(items):
    return [{"key": f"t{i}", "question": q, "answers": a, "question_type": question_type({"question": q})}
            for i, (q, a) in enumerate(items)]


TRAIN = [_sample("a", [{"question": "is there a red circle?", "answers": ["yes"]},
                       {"question": "what color is the circle?", "answers": ["red"]}]),
         _sample("b", [{"question": "is there a red circle?", "answers": ["yes"]},
                       {"question": "what color is the circle?", "answers": ["blue"]},
                       {"question": "is there a green square?", "answers": ["yes"]}]),
         _sample("c", [{"question": "is there a blue square?", "answers": ["no"]},
                       {"question": "what color is the circle?", "answers": ["blue"]}])]
TEST = _records([("Is there a red circle?", ["no"]),          # lookup "yes": wrong
                 ("what color is the circle?", ["blue"]),     # lookup "blue" (2 of 3): right
                 ("how many shapes are there?", ["2", "two"]),  # never seen: majority "yes", wrong
                 ("is there a blue square", ["no"]),          # lookup "no": right
                 ("is there a green circle?", ["yes"])])      # never seen: majority "yes", right


def test_majority_and_text_only_baselines_by_hand():
    b = vqa_baselines(TRAIN, TEST)
    assert b["n_train_questions"] == 7
    assert b["majority"]["answer"] == "yes"
    assert b["majority"]["vqa_accuracy"] == pytest.approx(1 / 5)
    assert b["text_only"]["vqa_accuracy"] == pytest.approx(3 / 5) and b["text_only"]["coverage"] == pytest.approx(3 / 5)
    assert b["majority"]["by_question_type"] == pytest.approx({"yes/no": 1 / 3, "color": 0.0, "count": 0.0})
    assert b["text_only"]["by_question_type"] == pytest.approx({"yes/no": 2 / 3, "color": 1.0, "count": 0.0})
    assert vqa_baselines([], TEST) is None


# ------------------------------------------------------------------------------------------ the report
def test_change_and_number_formats():
    assert change("cider", 0.5, 0.4) == "+0.1 (better)"
    assert change("caption_perplexity", 20.0, 25.0) == "-5 (better)"
    assert change("vqa_accuracy", 0.3, 0.5) == "-0.2 (worse)"
    assert change("cider", 0.5, 0.5) == "±0 (same)"
    assert fmt(1 / 3) == "0.3333" and fmt(3e-21) == "<0.0001" and fmt(12) == "12" and fmt(None) == ""


def test_report_sections_order_and_numbers(tmp_path):
    samples = [_sample("s0", [], ["A red square."], (220, 30, 30)), _sample("s1", [], ["A blue square."], (30, 70, 220))]
    results = {
        "caption": [{"key": "s0", "prediction": "a red square", "references": ["A red square."],
                     "scores": {"cider": 1.5}},
                    {"key": "s1", "prediction": "a red square", "references": ["A blue square."],
                     "scores": {"cider": 0.25}}],
        "vqa": [{**TEST[1], "key": "s0", "prediction": "blue", "accuracy": 1.0, "exact_match": 1.0},
                {**TEST[0], "key": "s0", "prediction": "yes", "accuracy": 0.0, "exact_match": 0.0},
                {**TEST[2], "key": "s1", "prediction": "two", "accuracy": 1.0, "exact_match": 1.0}],
    }
    from vlm.eval.tasks.vqa import by_question_type

    summary = {"model_uri": "models:/m@challenger", "data_uri": "/data", "format": "shards", "n_samples": 2,
               "n": {"caption": 2, "vqa": 3}, "rejected": {"undecodable": 1}, "skipped_tasks": [], "tokenizer": "simple",
               "metrics": {"cider": 0.875, "caption_perplexity": 20.0, "vqa_accuracy": 2 / 3,
                           "vqa_accuracy_q_color": 1.0},
               "config": {"split": "test", "num_beams": 1, "max_new_tokens": 8, "vqa_max_new_tokens": 3,
                          "caption_instruction": "Describe this image briefly.", "compare_to": "m"},
               "by_question_type": by_question_type(results["vqa"]),
               "baselines": {"n_train_samples": 3, "vqa": vqa_baselines(TRAIN, TEST),
                             "caption": {"caption": "A red square.", "metrics": {"cider": 0.5}}},
               "champion": {"name": "m", "version": "3", "metrics": {"cider": 0.4, "caption_perplexity": 25.0}}}
    write_report(summary, results, samples, tmp_path, n_examples=8)
    md = (tmp_path / "report.md").read_text()
    assert re.findall(r"^## (.+)$", md, re.M)[:4] == ["Summary", "Per question type", "Examples", "Caption metrics"]

    rows = {r["metric"]: r for r in md_table(md, "Summary")}
    assert list(rows) == ["cider", "caption_perplexity", "vqa_accuracy"]  # per-type metrics go to their table
    assert rows["cider"]["value"] == "0.875" and rows["cider"]["baseline (no image)"] == "0.5 constant caption"
    assert rows["cider"]["vs champion (m v3)"] == "+0.475 (better)"
    assert rows["caption_perplexity"]["vs champion (m v3)"] == "-5 (better)"
    assert rows["vqa_accuracy"]["vs champion (m v3)"] == ""  # the champion has no such metric
    assert rows["vqa_accuracy"]["baseline (no image)"] == '0.2 majority answer "yes"; 0.6 text-only lookup'

    types = {r["question type"]: r for r in md_table(md, "Per question type")}
    assert types == {"color": {"question type": "color", "questions": "1", "accuracy": "1", "exact match": "1",
                               "majority answer": "0", "text-only lookup": "1"},
                     "count": {"question type": "count", "questions": "1", "accuracy": "1", "exact match": "1",
                               "majority answer": "0", "text-only lookup": "0"},
                     "yes/no": {"question type": "yes/no", "questions": "1", "accuracy": "0", "exact match": "0",
                                "majority answer": "0.3333", "text-only lookup": "0.6667"}}

    examples = md_table(md, "Examples")
    assert [(e["image"] != "", e["question"], e["prediction"], e["score"]) for e in examples] == [
        (True, "Describe this image briefly.", "a red square", "CIDEr 1.5"),
        (False, "what color is the circle?", "blue", "✓ 1"),
        (False, "Is there a red circle?", "yes", "✗ 0"),
        (True, "Describe this image briefly.", "a red square", "CIDEr 0.25"),
        (False, "how many shapes are there?", "two", "✓ 1")]
    assert examples[4]["answer"] == "2 / two"
    assert "- rejected inputs: undecodable 1" in md

    html = (tmp_path / "report.html").read_text()
    assert html.index("id='summary'") < html.index("id='per-question-type'") < html.index("id='examples'")
    embedded = re.findall(r"<img src='data:image/jpeg;base64,([^']+)' alt='(s\d)'>", html)
    assert [alt for _, alt in embedded] == ["s0", "s1"]
    thumb = Image.open(io.BytesIO(base64.b64decode(embedded[1][0])))
    assert thumb.size == (40, 40) and thumb.getpixel((20, 20))[2] > 150  # the blue image, embedded
    assert "src='plots/" not in html and Path(tmp_path / "examples" / "001.jpg").exists()


def test_report_without_baselines_or_champion_has_no_empty_columns(tmp_path):
    samples = [_sample("s0", [], ["A red square."])]
    results = {"caption": [{"key": "s0", "prediction": "x", "references": ["A red square."], "scores": {"cider": 0.0}}]}
    summary = {"model_uri": "m", "data_uri": "/d.json", "format": "coco-captions", "n_samples": 1, "n": {"caption": 1},
               "rejected": {}, "skipped_tasks": ["vqa"], "tokenizer": "simple", "metrics": {"cider": 0.0},
               "config": {"split": "test", "num_beams": 1, "max_new_tokens": 8, "compare_to": ""},
               "by_question_type": {}, "baselines": {}, "champion": None}
    write_report(summary, results, samples, tmp_path, n_examples=0)
    md = (tmp_path / "report.md").read_text()
    assert md_table(md, "Summary") == [{"metric": "cider", "value": "0", "baseline (no image)": ""}]
    assert "## Per question type" not in md and "## Examples" not in md
