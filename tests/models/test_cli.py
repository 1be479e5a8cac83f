"""``vlm model`` commands and the plain functions behind them, on tiny configs."""

from __future__ import annotations

import json

import yaml
from typer.testing import CliRunner

from tests.models.helpers import make_images, tiny_config


def _register_only_models():
    import typer

    from vlm.models.cli import register

    app = typer.Typer()
    register(app)
    return app


def test_info_and_caption_commands(tmp_path):
    from vlm.models import build_model

    cfg_file = tmp_path / "pipeline.yaml"
    cfg_file.write_text(yaml.safe_dump({"model": tiny_config("perceiver")}))
    app = _register_only_models()
    runner = CliRunner()
    res = runner.invoke(app, ["model", "info", "--config", str(cfg_file)])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    model = build_model(tiny_config("perceiver"))
    assert info["adapter"] == "perceiver" and info["trainable"] == model.parameter_counts()["trainable"]

    model.save(str(tmp_path / "art"))
    img = tmp_path / "a.png"
    make_images(1)[0].save(img)
    res = runner.invoke(app, ["model", "caption", str(img), "--model", str(tmp_path / "art"), "--num-beams", "1",
                              "--instruction", "Describe."])
    assert res.exit_code == 0, res.output
    captions = json.loads(res.stdout)["captions"]
    assert captions == {str(img): model.generate([str(img)], "Describe.", num_beams=1)[0]}


def test_caption_command_answers_a_question_through_answer(tmp_path):
    """``vlm model caption --question``: the describe_first model describes, then answers (``model.answer``)."""
    from vlm.models import build_model

    model = build_model(tiny_config("linear", describe_first=True, max_length=256))
    model.save(str(tmp_path / "art"))
    img = tmp_path / "a.png"
    make_images(1)[0].save(img)
    res = _runner_invoke(["model", "caption", str(img), "--model", str(tmp_path / "art"), "--num-beams", "1",
                          "--max-new-tokens", "3", "--question", "Is it red?"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["answers"] == {
        str(img): model.answer([str(img)], ["Is it red?"], num_beams=1, max_new_tokens=3)[0]}


def _runner_invoke(args):
    return CliRunner().invoke(_register_only_models(), args)
