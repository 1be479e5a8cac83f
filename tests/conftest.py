"""Session fixtures: a real S3 server (SeaweedFS) and a real MLflow server, both on 127.0.0.1.

Tests that need S3 take ``s3_prefix`` (a fresh ``s3://vlm-test/<id>`` with the S3 environment set);
tests that need MLflow take ``mlflow_uri`` (tracking URI set in the environment for the test).
"""

from __future__ import annotations

import os
import uuid

import pytest

from tests.servers import MlflowServer, S3Server, start_mlflow, start_seaweedfs

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


@pytest.fixture(scope="session")
def s3_server() -> S3Server:
    server = start_seaweedfs()
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The S3 endpoint and credentials in the environment, as a deployment would set them."""
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    return s3_server


@pytest.fixture
def s3_prefix(s3_env: S3Server) -> str:
    """A fresh, empty ``s3://`` prefix for one test."""
    return f"s3://vlm-test/{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def mlflow_server(s3_server: S3Server) -> MlflowServer:
    server = start_mlflow(s3_server)
    yield server
    server.stop()


@pytest.fixture
def mlflow_uri(mlflow_server: MlflowServer, s3_env: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """The real MLflow server's URI, also exported as MLFLOW_TRACKING_URI for the test."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    mlflow.set_tracking_uri(mlflow_server.uri)
    yield mlflow_server.uri
    mlflow.set_tracking_uri(None)
