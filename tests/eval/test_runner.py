"""The evaluation runner end to end with the tiny model: shards, COCO and VQAv2 json, local and S3, MLflow."""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vlm.eval.config import EvalConfig
from vlm.eval.metrics import caption_metrics
from vlm.eval.runner import EvalResult, evaluate

FAST = dict(num_beams=2, max_new_tokens=6, vqa_max_new_tokens=3, batch_size=8, meteor=False, tokenizer="simple",
            report_examples=3)


def test_shards_all_tasks_results_and_report(tiny_model_uri, tiny_model, shapes_shards, tmp_path):
    cfg = EvalConfig(tasks=["caption", "vqa", "retrieval"], max_samples=6, retrieval_max_images=4, max_questions=10,
                     **FAST)
    out = tmp_path / "eval"
    summary = evaluate(tiny_model_uri, shapes_shards, cfg, output=str(out), track=False, model=tiny_model)
    assert summary.format == "shards" and summary.n_samples == 6
    m = summary.metrics
    for key in ("bleu4", "cider", "rouge_l", "caption_perplexity", "vqa_accuracy", "retrieval_i2t_r1",
                "retrieval_t2i_r1", "retrieval_mean_recall"):
        assert key in m and math.isfinite(m[key]), key
    assert m["caption_perplexity"] > 1  # an untrained model is far from certain
    results = json.loads((out / "results.json").read_text())
    assert len(results["caption"]) == 6 and summary.n["caption"] == 6
    # the corpus metrics are exactly those of the per-sample predictions written out
    again = caption_metrics({r["key"]: r["references"] for r in results["caption"]},
                            {r["key"]: r["prediction"] for r in results["caption"]}, tokenizer="simple", meteor=False)
    assert again == pytest.approx({k: m[k] for k in again})
    assert all(r["scoring"] == "exact" for r in results["vqa"])  # shapes carry 1-2 answers, not VQAv2's ten
    assert len(results["vqa"]) == 10 and {r["key"] for r in results["vqa"]} <= {r["key"] for r in results["caption"]}
    assert m["vqa_accuracy"] == pytest.approx(sum(r["accuracy"] for r in results["vqa"]) / len(results["vqa"]))
    # the predictions are the model's own beam-search output
    s0 = results["caption"][0]
    from vlm.data.format import iter_samples

    first = next(iter_samples(shapes_shards, split="test", rank=0, world_size=1, worker=0, num_workers=1))
    assert first["__key__"] == s0["key"]
    assert tiny_model.generate([first["image"]], instructions=[cfg.caption_instruction], num_beams=2,
                               max_new_tokens=6) == [s0["prediction"]]
    assert len(results["retrieval"]["similarity"]) == 4
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    assert "| cider |" in md and "plots/caption_metrics.png" in md and "examples/000.jpg" in md
    assert (out / "plots" / "cider_hist.png").stat().st_size > 1000 and (out / "examples" / "000.jpg").exists()
    assert "data:image/png;base64," in html and "data:image/jpeg;base64," in html and s0["key"] in html
    assert isinstance(summary, EvalResult) and summary.run_id is None  # not tracked
    assert summary.output == str(out) and summary.report == str(out / "report.html")
    assert json.loads((out / "summary.json").read_text()) == summary.to_dict()  # the JSON summary, as written
    assert summary.to_dict()["metrics"] == m and summary.to_dict()["by_question_type"] == summary.by_question_type


def test_perplexity_uses_the_models_own_loss(tiny_model, shapes_shards):
    """Per-example NLL / tokens must equal the model's mean caption loss on that example alone."""
    from PIL import Image

    from vlm.eval.scoring import answer_nll

    ex = [{"image": Image.new("RGB", (32, 32), (200, 0, 0)), "instruction": "Describe.", "answer": "a red square"},
          {"image": Image.new("RGB", (32, 32), (0, 0, 200)), "instruction": "Describe it.", "answer": "blue"}]
    got = answer_nll(tiny_model, ex, batch_size=2)
    import torch

    for e, (nll, n) in zip(ex, got):
        with torch.no_grad():
            loss = tiny_model(**tiny_model.collate([e])).losses["caption"]
        assert n > 0 and nll / n == pytest.approx(float(loss), rel=1e-4)


def test_coco_and_vqa_json_from_s3_logged_to_mlflow(mlflow_uri, s3_prefix, tiny_model_uri, tiny_model, coco_dir,
                                                      vqa_dir):
    from mlflow import MlflowClient

    from vlm import storage

    storage.upload_tree(coco_dir, storage.join(s3_prefix, "coco"))
    storage.upload_tree(vqa_dir, storage.join(s3_prefix, "vqa"))
    out = storage.join(s3_prefix, "report")
    cfg = EvalConfig(tasks=["caption", "vqa"], **FAST)
    cap = evaluate(tiny_model_uri, storage.join(s3_prefix, "coco", "captions_val2014.json"), cfg, output=out,
                   model=tiny_model)
    assert cap.format == "coco-captions" and cap.n == {"caption": 4}
    assert cap.rejected == {"missing_image": 1, "undecodable": 1}
    assert cap.skipped_tasks == ["vqa"]
    assert storage.exists(storage.join(out, "report.html")) and storage.exists(storage.join(out, "results.json"))
    run = MlflowClient().get_run(cap.run_id)
    assert run.data.metrics["cider"] == pytest.approx(cap.metrics["cider"])
    assert run.data.tags["vlm.stage"] == "evaluate"
    logged = {f.path for f in MlflowClient().list_artifacts(cap.run_id, "eval")}
    assert {"eval/report.html", "eval/report.md", "eval/results.json"} <= logged

    # VQAv2: attach to an existing run (as with the training run)
    train_run = MlflowClient().create_run(MlflowClient().create_experiment(f"train-{Path(s3_prefix).name}")).info.run_id
    vqa = evaluate(tiny_model_uri, storage.join(s3_prefix, "vqa", "v2_OpenEnded_mscoco_val2014_questions.json"),
                   EvalConfig(tasks=["vqa"], **FAST), run_id=train_run, model=tiny_model)
    assert vqa.format == "vqav2" and vqa.n == {"vqa": 8} and vqa.run_id == train_run
    assert {"vqa_accuracy", "vqa_accuracy_yes_no", "vqa_accuracy_other"} <= set(vqa.metrics)
    assert MlflowClient().get_run(train_run).data.metrics["vqa_accuracy"] == pytest.approx(vqa.metrics["vqa_accuracy"])


def test_evaluate_result_is_json_and_tracked(mlflow_uri, tiny_model_uri, coco_dir, tmp_path):
    """What the pipeline step hands to kfp: the result's JSON (the config as evaluated, the report, the run)."""
    from vlm.eval.runner import EvalResult, evaluate

    cfg = EvalConfig(tasks=["caption"], meteor=False, tokenizer="simple", num_beams=1, max_new_tokens=4)
    result = evaluate(tiny_model_uri, str(coco_dir / "captions_val2014.json"), cfg, output=str(tmp_path / "out"))
    summary = result.to_dict()
    assert isinstance(result, EvalResult) and summary["config"]["tasks"] == ["caption"]
    assert summary["config"]["num_beams"] == 1 and json.loads(json.dumps(summary)) == summary
    assert Path(summary["report"]).exists() and summary["run_id"] == result.run_id and result.run_id


def test_vqa_scoring_against_known_answers(vqa_dir, tmp_path):
    """A model that answers correctly scores 1 on VQAv2 questions (8/10 agreement) and 0 when wrong.

    Official rule: "The Red." is normalised to match "red" (the ten answers differ: 8 "red", 2 "dark"), but a
    yes/no question whose ten answers agree takes the answer as written: "The No." scores 0 there."""

    class Oracle:
        training = False

        def __init__(self, right: bool):
            self.right = right

        def answer(self, images, questions, **kw):  # VQA goes to answer, captions to generate
            return self.generate(images, questions, **kw)

        def generate(self, images, instructions, **kw):
            outs = []
            for im, q in zip(images, instructions):
                name = {(220, 30, 30): "red", (30, 170, 60): "green", (30, 70, 220): "blue",
                        (240, 210, 20): "yellow"}[im.getpixel((0, 0))]
                if "colour" in q:
                    outs.append(f"The {name.capitalize()}." if self.right else "purple")
                else:
                    ans = "yes" if name == "red" else "no"
                    outs.append(ans if self.right == "exact" else f"The {ans.capitalize()}." if self.right else "maybe")
            return outs

    q = str(vqa_dir / "v2_OpenEnded_mscoco_val2014_questions.json")
    cfg = EvalConfig(tasks=["vqa"], **FAST)
    good = evaluate("oracle", q, cfg, model=Oracle("exact"), track=False, output=str(tmp_path / "a"))
    loose = evaluate("oracle", q, cfg, model=Oracle(True), track=False, output=str(tmp_path / "c"))
    bad = evaluate("oracle", q, cfg, model=Oracle(False), track=False, output=str(tmp_path / "b"))
    assert good.metrics["vqa_accuracy"] == pytest.approx(1.0)
    assert loose.metrics["vqa_accuracy_other"] == pytest.approx(1.0)
    assert loose.metrics["vqa_accuracy_yes_no"] == 0.0 and loose.metrics["vqa_exact_match"] == 1.0
    assert bad.metrics["vqa_accuracy"] == 0.0


def test_bad_inputs_fail_clearly(tiny_model, tiny_model_uri, coco_dir, tmp_path):
    cfg = EvalConfig(tasks=["vqa"], **FAST)
    with pytest.raises(ValueError, match="none of the tasks"):
        evaluate(tiny_model_uri, str(coco_dir / "captions_val2014.json"), cfg, model=tiny_model, track=False)
    (tmp_path / "x.json").write_text(json.dumps({"foo": 1}))
    with pytest.raises(ValueError, match="neither COCO captions"):
        evaluate(tiny_model_uri, str(tmp_path / "x.json"), cfg, model=tiny_model, track=False)
    with pytest.raises(ValueError, match="not a dataset"):
        evaluate(tiny_model_uri, str(tmp_path), cfg, model=tiny_model, track=False)
    with pytest.raises(FileNotFoundError):
        evaluate(tiny_model_uri, str(tmp_path / "nope.json"), cfg, model=tiny_model, track=False)


def test_cli_evaluate(tiny_model_uri, coco_dir, tmp_path):
    from vlm.cli import app

    out = tmp_path / "cli"
    config = tmp_path / "pipeline.yaml"
    config.write_text("eval:\n  meteor: false\n  tokenizer: simple\n  max_new_tokens: 5\n")
    res = CliRunner().invoke(app, ["evaluate", tiny_model_uri, str(coco_dir / "captions_val2014.json"), "--tasks",
                                   "caption", "--no-track", "--num-beams", "1", "-o", str(out), "--config", str(config)])
    assert res.exit_code == 0, res.output
    assert '"metrics"' in res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == {"caption": 4} and "cider" in summary["metrics"] and "meteor" not in summary["metrics"]
    assert summary["config"]["num_beams"] == 1 and summary["config"]["max_new_tokens"] == 5
    assert (out / "report.html").exists()
    res = CliRunner().invoke(app, ["evaluate", tiny_model_uri, str(coco_dir / "captions_val2014.json"), "--tasks",
                                   "ocr", "--no-track"])
    assert res.exit_code == 1 and "invalid option" in res.output


def test_report_baselines_from_train_split_and_change_vs_champion(mlflow_uri, split_shards, tiny_model_uri, tmp_path):
    """A model that knows every answer: the report's summary shows it against the text-only baselines of the
    train split (recomputed here) and against the current champion's registered metrics."""
    from collections import Counter

    from vlm.eval.data import load_eval_data
    from vlm.registry import promote, register_model

    model_name = f"vlm-eval-{uuid.uuid4().hex[:8]}"
    cfg = EvalConfig(tasks=["vqa"], compare_to=model_name, **FAST)
    test = load_eval_data(split_shards, cfg).samples
    train = load_eval_data(split_shards, cfg.model_copy(update={"split": "train"})).samples
    truth = {(s.image.tobytes(), qa["question"]): qa["answers"][0] for s in test for qa in s.qa}

    class Knows:
        training = False

        def answer(self, images, questions, **kw):
            return [truth[(im.tobytes(), q)] for im, q in zip(images, questions)]

    version = register_model(tiny_model_uri, model_name, {"vqa_accuracy": 0.25}, {})
    promote(model_name, version, force=True)
    summary = evaluate("knows", split_shards, cfg, model=Knows(), output=str(tmp_path / "out"))
    assert summary.metrics["vqa_accuracy"] == 1.0
    assert summary.champion.to_dict() == {"name": model_name, "version": version, "metrics": {"vqa_accuracy": 0.25}}
    assert summary.to_dict()["champion"] == summary.champion.to_dict()  # summary.json and the report get a dict

    # the majority baseline, recomputed from the train split: the most common first answer, scored by exact match
    majority = Counter(qa["answers"][0] for s in train for qa in s.qa).most_common(1)[0][0]
    questions = [qa for s in test for qa in s.qa]
    want = sum(majority in qa["answers"] for qa in questions) / len(questions)
    base = summary.baselines["vqa"]
    assert base["majority"]["answer"] == majority and base["majority"]["vqa_accuracy"] == pytest.approx(want)
    assert 0 < base["text_only"]["vqa_accuracy"] < 1 and base["n_train_questions"] == sum(len(s.qa) for s in train)

    md = (tmp_path / "out" / "report.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| vqa_accuracy |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells == ["vqa_accuracy", "1", f'{base["majority"]["vqa_accuracy"]:.4g} majority answer "{majority}"; '
                     f'{base["text_only"]["vqa_accuracy"]:.4g} text-only lookup', "+0.75 (better)"]
    assert f"vs champion ({model_name} v{version})" in md
    types = summary.by_question_type
    assert set(types) == {"color", "count", "position", "shape", "yes/no"}
    assert sum(t["n"] for t in types.values()) == len(questions) and all(t["accuracy"] == 1 for t in types.values())
    from mlflow import MlflowClient

    logged = {f.path for f in MlflowClient().list_artifacts(summary.run_id, "eval")}
    assert {"eval/report.html", "eval/report.md", "eval/examples"} <= logged
