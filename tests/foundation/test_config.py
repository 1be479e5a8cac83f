"""Config: YAML loading, strict validation, error messages naming field paths and allowed values."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from vlm.cli import app
from vlm.config import ConfigError, default_config_path, load_config, parse_config

runner = CliRunner()


def test_quickstart_is_valid_and_complete():
    cfg = load_config(default_config_path())
    assert cfg.name == "vlm-quickstart"
    assert cfg.registered_model_name() == f"vlm-{cfg.model.adapter.type}"
    assert cfg.cluster.launcher == "local" and not cfg.root.startswith("s3://")


def test_defaults_follow_the_papers():
    from vlm.config import PipelineConfig

    cfg = PipelineConfig()
    assert cfg.train.strategy == "deepspeed" and cfg.train.zero_stage == 2  # as Prismer and mPLUG trained
    assert cfg.train.weight_decay == 0.05
    assert cfg.model.generation.num_beams == 3  # Prismer's evaluation
    assert "###Human: <Img><ImageHere></Img>" in cfg.model.prompt_template


def test_bad_literal_names_path_and_allowed_values():
    with pytest.raises(ConfigError) as err:
        parse_config({"model": {"adapter": {"type": "transformerz"}}})
    msg = str(err.value)
    assert "model.adapter.type" in msg
    for allowed in ("linear", "mlp", "perceiver", "qformer", "tinylm"):
        assert allowed in msg
    assert "transformerz" in msg


def test_unknown_key_is_rejected_with_suggestion():
    with pytest.raises(ConfigError) as err:
        parse_config({"train": {"learning_rate": 0.1, "stepz": 3}})
    msg = str(err.value)
    assert "train.learning_rate: unknown field" in msg
    assert "did you mean 'steps'" in msg
    assert "2 invalid field(s)" in msg


def test_range_and_type_errors_name_nested_paths():
    with pytest.raises(ConfigError) as err:
        parse_config({"data": {"split": {"train": 3}}, "align": {"finetune": {"batch_size": "many"}}})
    msg = str(err.value)
    assert "data.split.train" in msg and "less than or equal to 1" in msg
    assert "align.finetune.batch_size" in msg


def test_env_overrides_only_endpoints(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    cfg = parse_config({"tracking": {"uri": "sqlite:///x.db"}})
    assert cfg.tracking.uri == "http://mlflow.example:5000"
    monkeypatch.setenv("VLM_TRAIN_STEPS", "999")  # not an override: config values other than endpoints stay in YAML
    assert parse_config({}).train.steps != 999


def test_yaml_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(scalar)


def test_cli_validate_exit_codes(tmp_path):
    ok = runner.invoke(app, ["config", "validate", str(default_config_path())])
    assert ok.exit_code == 0, ok.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  strategy: horovod\n")
    res = runner.invoke(app, ["config", "validate", str(bad)])
    assert res.exit_code == 1
    assert "train.strategy" in res.output and "deepspeed" in res.output


def test_cli_schema_is_json_schema():
    res = runner.invoke(app, ["config", "schema"])
    assert res.exit_code == 0
    schema = json.loads(res.stdout)
    assert schema["type"] == "object"
    assert {"data", "model", "train", "align", "eval", "registry"} <= set(schema["properties"])
    import jsonschema

    jsonschema.Draft202012Validator.check_schema(schema)


def test_config_loads_from_s3(s3_prefix):
    from vlm import storage

    uri = f"{s3_prefix}/cfg.yaml"
    storage.write_text(uri, "name: from-s3\ntrain:\n  steps: 7\n")
    cfg = load_config(uri)
    assert cfg.name == "from-s3" and cfg.train.steps == 7


def test_version_flag():
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and "vlm-platform" in res.output


@pytest.mark.parametrize("name", ["quickstart.yaml", "tiny.yaml", "stage1.yaml", "cluster.yaml"])
def test_shipped_configs_are_valid(name):
    cfg = load_config(default_config_path().parent / name)
    assert cfg.name
