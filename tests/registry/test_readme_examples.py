"""The README's registry examples, run as written against a real registered tiny model.

A fenced block right after a ``<!-- example: NAME ... -->`` line in README.md is an example: Python blocks are
executed, bash blocks run each ``vlm ...`` line through the real CLI. The model is registered as the README
names it (``vlm-linear``) on the test MLflow server, and ``photo.jpg`` is a scene of the demo's data.
"""

from __future__ import annotations

import ast
import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
EXAMPLE = re.compile(r"<!-- example: ([\w-]+)[^>]*-->\n```(\w+)\n(.*?)\n```", re.S)


def examples() -> dict[str, tuple[str, str]]:
    """``{name: (language, code)}`` of the README's marked examples."""
    return {name: (lang, code) for name, lang, code in EXAMPLE.findall(README.read_text(encoding="utf-8"))}


def test_readme_marks_its_examples():
    found = examples()
    assert {"promote", "use-registered-model"} <= set(found)
    # the example, exactly as a user types it
    assert 'predict({"image": ["photo.jpg"]})' in found["use-registered-model"][1]


@pytest.fixture
def vlm_linear(mlflow_uri, tiny_artefact, tmp_path, monkeypatch):
    """Versions 1 (champion) and 2 (challenger, better cider) of ``vlm-linear``; cwd holds photo.jpg."""
    from vlm.data.sources.shapes import render, scene
    from vlm.registry import promote, register_model

    render(*scene(0, 0), 128).save(tmp_path / "photo.jpg", format="JPEG")
    monkeypatch.chdir(tmp_path)
    first = register_model(tiny_artefact, "vlm-linear", {"cider": 0.2}, {})
    promote("vlm-linear", first, force=True)
    second = register_model(tiny_artefact, "vlm-linear", {"cider": 0.5}, {})
    return first, second


def test_readme_examples_run(vlm_linear):
    from mlflow import MlflowClient
    from typer.testing import CliRunner

    from vlm.cli import app

    first, second = vlm_linear
    assert (first, second) == ("1", "2")  # the versions the README's commands name
    found = examples()
    lang, code = found["promote"]
    assert lang == "bash"
    runner = CliRunner()
    for line in code.splitlines():
        command = shlex.split(line, comments=True)
        assert command[0] == "vlm", line
        res = runner.invoke(app, command[1:])
        assert res.exit_code == 0, f"{line}\n{res.output}"
    assert MlflowClient().get_registered_model("vlm-linear").aliases["champion"] == "1"  # rolled back by --force

    lang, code = found["use-registered-model"]
    assert lang == "python"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md:use-registered-model", "exec"), {"__name__": "__readme__"})
    printed = [ast.literal_eval(line) for line in out.getvalue().splitlines()]
    assert [len(p) for p in printed] == [1, 2, 1]
    assert all(isinstance(t, str) for p in printed for t in p)
