"""The MLflow server exactly as the chart renders it (command, args, env names, secret keys, init container),
run locally against a real S3 (SeaweedFS). Two substitutions, because no cluster is here: the in-cluster
MinIO address becomes the local S3 endpoint, and the PostgreSQL URI becomes a sqlite file."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.deploy.conftest import NAMESPACE, one
from tests.servers import _stop, _wait, free_port


def _expand(env_list: list[dict], secrets: dict[tuple[str, str], str]) -> dict[str, str]:
    """Kubernetes' env semantics: secretKeyRef lookups and $(VAR) expansion from earlier entries."""
    out: dict[str, str] = {}
    for e in env_list:
        if "valueFrom" in e:
            ref = e["valueFrom"]["secretKeyRef"]
            out[e["name"]] = secrets[(ref["name"], ref["key"])]
        else:
            out[e["name"]] = re.sub(r"\$\((\w+)\)", lambda m: out.get(m.group(1), m.group(0)), e["value"])
    return out


def _get(url: str, host: str | None = None) -> int:
    req = urllib.request.Request(url)
    if host:
        req.add_header("Host", host)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def test_rendered_mlflow_server_runs_and_proxies_artifacts_to_s3(helm_template, s3_server, tmp_path, monkeypatch):
    import mlflow
    from minio import Minio

    prefix = f"deploy-test/{uuid.uuid4().hex[:10]}"
    docs = helm_template("default-values.yaml", "--set", f"s3.artifactsPrefix={prefix}")
    pod = one(docs, "Deployment", "-mlflow")["spec"]["template"]["spec"]
    (server,), (migrate,) = pod["containers"], pod["initContainers"]
    service = one(docs, "Service", "-mlflow")
    secrets = {("vlm-s3-credentials", "AWS_ACCESS_KEY_ID"): s3_server.access_key,
               ("vlm-s3-credentials", "AWS_SECRET_ACCESS_KEY"): s3_server.secret_key,
               ("vlm-db-credentials", "password"): "only-used-by-postgres"}
    local = {"MLFLOW_BACKEND_STORE_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
             "AWS_ENDPOINT_URL": s3_server.endpoint, "MLFLOW_S3_ENDPOINT_URL": s3_server.endpoint}
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
    base["PATH"] = f"{Path(sys.executable).parent}:{base.get('PATH', '')}"

    rendered_uri = _expand(server["env"], secrets)["MLFLOW_BACKEND_STORE_URI"]
    assert rendered_uri.startswith("postgresql+psycopg2://mlflow:only-used-by-postgres@")

    # Init container: `mlflow db upgrade` on an empty database creates the schema.
    proc = subprocess.run(migrate["command"], env={**base, **_expand(migrate["env"], secrets), **local},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]

    bucket = next(a for a in server["args"] if a.startswith("--artifacts-destination=")).split("//")[1].split("/")[0]
    client = Minio(s3_server.endpoint.split("//")[1], s3_server.access_key, s3_server.secret_key, secure=False)
    if not client.bucket_exists(bucket):
        client.make_bucket(bucket)  # the chart's setup Job does this on a cluster

    port = free_port()
    args = [f"--port={port}" if a == "--port=5000" else "--host=127.0.0.1" if a == "--host=0.0.0.0"
            else "--workers=1" if a.startswith("--workers=") else a for a in server["args"]]
    env = {**base, **_expand(server["env"], secrets), **local, "HOME": str(tmp_path)}
    log = tmp_path / "mlflow.log"
    proc = subprocess.Popen([*server["command"], *args], env=env, cwd=tmp_path, stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        health = server["readinessProbe"]["httpGet"]["path"]
        _wait(lambda: _get(url + health) == 200, 120, "mlflow server (rendered)", proc, log)
        # --allowed-hosts: the in-cluster names pass, anything else is refused.
        svc = f"{service['metadata']['name']}.{NAMESPACE}.svc.cluster.local:{service['spec']['ports'][0]['port']}"
        api = url + "/api/2.0/mlflow/experiments/search?max_results=1"
        assert _get(api, host=svc) == 200
        assert _get(api, host="evil.example.com") == 403
        # Artefacts go through the server (the client has no S3 credentials) into s3://<bucket>/<prefix>/.
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        mlflow.set_tracking_uri(url)
        mlflow.set_experiment("deploy-test")
        with mlflow.start_run() as run:
            mlflow.log_text("hello from the chart", "notes/hello.txt")
        keys = [o.object_name for o in client.list_objects(bucket, prefix=f"{prefix}/", recursive=True)]
        assert any(k.endswith(f"{run.info.run_id}/artifacts/notes/hello.txt") for k in keys), keys
        local_copy = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="notes/hello.txt",
                                                         dst_path=str(tmp_path / "dl"))
        assert Path(local_copy).read_text() == "hello from the chart"
    finally:
        mlflow.set_tracking_uri(None)
        _stop(proc)
