"""Registration and promotion against the real MLflow server (artefacts proxied to real S3)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from tests.registry.conftest import png_bytes
from vlm.registry import GateConfig, list_versions, promote, promote_if_better, register_model
from vlm.registry.mlflow_registry import Champion, Promotion, RegistryError, champion


def _aliases(name: str) -> dict[str, str]:
    from mlflow import MlflowClient

    return dict(MlflowClient().get_registered_model(name).aliases)


def _tags(name: str, version: str) -> dict[str, str]:
    from mlflow import MlflowClient

    return MlflowClient().get_model_version(name, version).tags


def test_register_gate_pass_fail_and_manual_promotion(mlflow_uri, tiny_artefact, model_name):
    gate = GateConfig(primary_metric="cider", min_delta=0.05, thresholds={"bleu4": 0.1})
    v1 = register_model(tiny_artefact, model_name, {"cider": 0.50, "bleu4": 0.2},
                        {"vlm.training_run_id": "train-1"})
    assert _aliases(model_name) == {"challenger": v1}
    tags = _tags(model_name, v1)
    assert tags["vlm.metric.cider"] == "0.5" and tags["vlm.training_run_id"] == "train-1"

    first = promote_if_better(model_name, v1, gate)
    assert isinstance(first, Promotion) and first.promoted and first.previous_champion is None
    decision = json.loads(json.dumps(first.to_dict()))  # what the vlm.gate.decision tag and the promote step hold
    assert Promotion(**decision) == first and decision["champion"] == v1 and decision["mode"] == "gate"
    assert json.loads(_tags(model_name, v1)["vlm.gate.decision"]) == decision
    assert champion(model_name) == Champion(name=model_name, version=v1, metrics={"cider": 0.5, "bleu4": 0.2})
    assert _aliases(model_name) == {"challenger": v1, "champion": v1}

    # gate fail: better than nothing but not by min_delta -> champion unchanged, tags say why
    v2 = register_model(tiny_artefact, model_name, {"cider": 0.52, "bleu4": 0.3}, {})
    assert _aliases(model_name)["challenger"] == v2
    fail = promote_if_better(model_name, v2, gate)
    assert not fail.promoted and fail.champion == v1
    assert _aliases(model_name)["champion"] == v1
    t2 = _tags(model_name, v2)
    assert t2["vlm.gate.passed"] == "false" and "does not beat" in t2["vlm.gate.reasons"]
    assert json.loads(t2["vlm.gate.decision"])["comparison"]["champion"] == 0.5

    # gate fail on a threshold even though the primary metric is much better
    v3 = register_model(tiny_artefact, model_name, {"cider": 0.9, "bleu4": 0.05}, {})
    assert not promote_if_better(model_name, v3, gate).promoted
    assert _aliases(model_name)["champion"] == v1

    # gate pass: beats the champion by more than min_delta
    v4 = register_model(tiny_artefact, model_name, {"cider": 0.60, "bleu4": 0.25}, {})
    ok = promote_if_better(model_name, v4, gate)
    assert ok.promoted and ok.previous_champion == v1
    assert ok.comparison["delta"] == pytest.approx(0.10)
    assert _aliases(model_name)["champion"] == v4
    assert _tags(model_name, v4)["vlm.gate.passed"] == "true"
    assert _tags(model_name, v1)["vlm.gate.replaced_by"] == v4

    # by hand: through the gate it fails, with --force it moves
    assert not promote(model_name, v2, gate).promoted and _aliases(model_name)["champion"] == v4
    forced = promote(model_name, v2, gate, force=True)
    assert forced.promoted and _aliases(model_name)["champion"] == v2
    assert _tags(model_name, v2)["vlm.gate.mode"] == "forced"

    rows = list_versions(model_name)
    assert [r["version"] for r in rows] == [v4, v3, v2, v1]
    by_version = {r["version"]: r for r in rows}
    assert by_version[v2]["aliases"] == ["champion"] and by_version[v4]["aliases"] == ["challenger"]
    assert by_version[v3]["metrics"] == {"cider": 0.9, "bleu4": 0.05}


def test_load_champion_by_alias_and_predict(mlflow_uri, tiny_artefact, model_name, png_file, s3_prefix):
    import mlflow

    from vlm import storage

    s3_model = storage.join(s3_prefix, "model")
    storage.copy_tree(tiny_artefact, s3_model)
    version = register_model(s3_model, model_name, {"cider": 0.4}, {"vlm.data_manifest_sha256": "abc"})
    promote(model_name, version, force=True)
    model = mlflow.pyfunc.load_model(f"models:/{model_name}@champion")
    reqs = open(mlflow.artifacts.download_artifacts(f"models:/{model_name}/{version}/requirements.txt")).read().split()
    assert any(r.startswith("torch==") for r in reqs) and any(r.startswith("mlflow==") for r in reqs)
    assert all("==" in r for r in reqs)
    df = pd.DataFrame({"image": [png_bytes(), png_file], "question": ["What colour?", None]})
    out = model.predict(df, params={"num_beams": 1, "max_new_tokens": 5})
    assert isinstance(out, list) and len(out) == 2 and all(isinstance(t, str) for t in out)
    # the same as the library model generates (the pyfunc adds nothing of its own)
    from vlm.models import load
    from vlm.models.pyfunc import DEFAULT_CAPTION_INSTRUCTION
    from vlm.models.pyfunc import load_image as _image

    library = load(tiny_artefact)
    direct = (library.answer([_image(png_bytes())], ["What colour?"], num_beams=1, max_new_tokens=5)
              + library.generate([_image(png_file)], DEFAULT_CAPTION_INSTRUCTION, num_beams=1, max_new_tokens=5))
    assert out == direct
    # the evaluation runner loads the same registered model by alias
    from vlm.eval.runner import load_model

    again = load_model(f"models:/{model_name}@champion").answer([_image(png_bytes())], ["What colour?"],
                                                                num_beams=1, max_new_tokens=5)
    assert again == direct[:1]
    # a dict with one row works, base64 text works like bytes; a broken image fails loudly
    import base64

    one = model.predict({"image": png_bytes()}, params={"num_beams": 1, "max_new_tokens": 5})
    b64 = model.predict({"image": base64.b64encode(png_bytes()).decode()}, params={"num_beams": 1, "max_new_tokens": 5})
    assert len(one) == 1 and one == b64
    with pytest.raises(Exception, match="row 0: image '/no/such/file.png': no such file"):
        model.predict(pd.DataFrame({"image": ["/no/such/file.png"]}))


def test_register_rejects_bad_input(mlflow_uri, tmp_path, model_name):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RegistryError, match="vlm_config.json"):
        register_model(str(tmp_path / "empty"), model_name, {}, {})
    with pytest.raises(RegistryError, match="not finite"):
        register_model(str(tmp_path / "empty"), model_name, {"cider": float("nan")}, {})
    with pytest.raises(RegistryError, match="no version"):
        promote_if_better("no-such-model-xyz", "1", GateConfig())
    with pytest.raises(RegistryError, match="no registered model"):
        list_versions("no-such-model-xyz")


def test_register_into_the_training_run_then_gate(mlflow_uri, tiny_artefact, model_name, tmp_path):
    """Register (lineage recorded, the pyfunc logged into the training run), then the gate promotes or keeps."""
    from vlm.registry.config import GateConfig
    from vlm.registry.mlflow_registry import lineage_tags, promote_if_better, register_model

    data = tmp_path / "data"
    data.mkdir()
    (data / "manifest.json").write_text('{"name": "d"}')
    from mlflow import MlflowClient

    client = MlflowClient()
    gate = GateConfig(thresholds={"cider": 0.1})
    train_run = client.create_run(client.create_experiment(f"train-{model_name}")).info.run_id
    tags = lineage_tags(tiny_artefact, str(data), None, train_run)
    first = register_model(tiny_artefact, model_name, {"cider": 0.2}, tags, train_run)
    assert first == "1" and promote_if_better(model_name, first, gate).promoted and _aliases(model_name)["champion"] == "1"
    tags = _tags(model_name, "1")
    assert len(tags["vlm.data_manifest_sha256"]) == 64 and tags["vlm.training_run_id"] == train_run
    assert client.get_model_version(model_name, "1").run_id == train_run  # the pyfunc was logged into that run
    second = register_model(tiny_artefact, model_name, {"cider": 0.15}, {})
    assert second == "2" and not promote_if_better(model_name, second, gate).promoted
    assert _aliases(model_name)["champion"] == "1"


def test_cli_register_promote_list(mlflow_uri, tiny_artefact, model_name, tmp_path):
    from vlm.cli import app

    runner = CliRunner()
    summary = tmp_path / "eval.json"
    summary.write_text(json.dumps({"metrics": {"cider": 0.3, "bleu4": 0.1}, "n": 4}))
    res = runner.invoke(app, ["register", tiny_artefact, "--name", model_name, "--metrics", str(summary)])
    assert res.exit_code == 0, res.output
    assert "version 1" in res.output and "promoted to champion" in res.output  # auto-promote: no champion yet
    res = runner.invoke(app, ["register", tiny_artefact, "--name", model_name, "--metrics", '{"cider": 0.2}',
                              "--no-promote"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["promote", model_name, "--version", "2"])
    assert res.exit_code == 2 and "not promoted" in res.output
    res = runner.invoke(app, ["promote", model_name, "--version", "2", "--force"])
    assert res.exit_code == 0 and "promoted to champion" in res.output
    res = runner.invoke(app, ["models", "list", model_name, "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert rows[0]["version"] == "2" and rows[0]["aliases"] == ["challenger", "champion"]
    res = runner.invoke(app, ["models", "list", model_name])
    assert res.exit_code == 0 and "cider" in res.output and "champion" in res.output
