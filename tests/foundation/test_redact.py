"""No credential in what the platform writes: URIs with userinfo are masked (logs, params) or stripped (files)."""

from __future__ import annotations

import logging

import yaml

from vlm import redact

URI = "http://alice:s3cr3t@mlflow.example:5000/api"


def test_redact_and_strip_userinfo_everywhere_in_a_value():
    assert redact.redact(URI) == "http://***@mlflow.example:5000/api"
    assert redact.strip_userinfo(URI) == "http://mlflow.example:5000/api"
    nested = {"a": [URI, ("https://tok@h/x", 3)], "b": {"c": f"see {URI} and postgresql://u:p@db/x"}, "n": 7}
    assert redact.redact(nested) == {"a": ["http://***@mlflow.example:5000/api", ("https://***@h/x", 3)],
                                     "b": {"c": "see http://***@mlflow.example:5000/api and postgresql://***@db/x"},
                                     "n": 7}
    assert "s3cr3t" not in str(redact.strip_userinfo(nested)) and "tok" not in str(redact.strip_userinfo(nested))


def test_no_false_positives():
    for text in ("s3://bucket/runs/x@y", "mail alice@example.com", "git@github.com:org/repo", "http://host/a@b",
                 "sqlite:///mlflow.db", "http://host:5000/?q=a@b"):
        assert redact.redact(text) == text and not redact.has_userinfo(text), text


def test_logging_filter_masks_messages_args_and_tracebacks(caplog):
    logger = logging.getLogger("vlm.test.redact")
    handler = caplog.handler
    handler.addFilter(redact.RedactingFilter())
    try:
        logger.warning("connecting to %s", URI)
        try:
            raise ConnectionError(f"cannot reach {URI}")
        except ConnectionError:
            logger.exception("tracking failed")
    finally:
        handler.removeFilter(handler.filters[-1])
    assert "s3cr3t" not in caplog.text
    assert "connecting to http://***@mlflow.example:5000/api" in caplog.text
    assert "ConnectionError: cannot reach http://***@mlflow.example" in caplog.text


def test_prepare_writes_no_credential_to_config_or_mlflow(mlflow_uri, tmp_path, caplog):
    """steps.prepare: config.yaml (file and MLflow artefact) and the parent run's params carry no userinfo."""
    from mlflow import MlflowClient

    from vlm import steps

    config = {"name": "cred-test", "root": str(tmp_path / "runs"),
              "tracking": {"uri": "http://alice:s3cr3t@mlflow.example:5000"},  # MLFLOW_TRACKING_URI wins for the run
              "data": {"input": "https://bob:t0ken@data.example/shapes.tar"}}
    caplog.set_level(logging.WARNING)
    out = steps.prepare(yaml.safe_dump(config), run_tag="cred")
    written = (tmp_path / "runs" / "runs" / "cred" / "config.yaml").read_text()
    assert "s3cr3t" not in written and "t0ken" not in written
    data = yaml.safe_load(written)
    assert data["data"]["input"] == "https://data.example/shapes.tar"
    assert "URIs with credentials" in caplog.text
    client = MlflowClient(mlflow_uri)
    run = client.get_run(out["parent_run_id"])
    assert run.data.params["data.input"] == "https://***@data.example/shapes.tar"
    assert not any("t0ken" in v or "s3cr3t" in v for v in run.data.params.values())
    artefact = client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))
    assert "s3cr3t" not in open(artefact).read()
