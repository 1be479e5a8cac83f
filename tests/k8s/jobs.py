"""Helpers shared by the PyTorchJob and TrainJob tests: the pipeline ServiceAccount from the chart, a cluster
config for a test namespace, and running a job through the launcher while a stand-in operator plays along."""

from __future__ import annotations

import logging
from typing import Any

from tests.k8s.conftest import NODE, apply_server_side, service_account_token
from tests.k8s.standins import FakeOperator
from vlm.k8s.config import ClusterConfig
from vlm.k8s.launch import run_cluster_job

SECRET_URI = "http://alice:s3cr3t-pw@mlflow.example:5000"
LOG_LINES = ["step 1/2 loss 2.31", f"tracking to {SECRET_URI}", "step 2/2 loss 1.87", "saved model"]


def chart_rbac(helm_template, k8s, namespace: str, values: str = "default-values.yaml") -> tuple[str, list[dict]]:
    """Apply the chart's pipeline ServiceAccount, Role and RoleBinding (rendered for ``namespace``); returns the
    ServiceAccount name and the applied documents."""
    docs = [d for d in helm_template(values, "--namespace", namespace)
            if d["kind"] in ("Role", "RoleBinding") or (d["kind"] == "ServiceAccount" and "pipeline" in d["metadata"]["name"])]
    apply_server_side(k8s, docs, namespace=namespace)
    sa = next(d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount")
    return sa, docs


def pipeline_client(k8s, admin, helm_template, namespace: str):
    """An ApiClient authenticated as the chart's pipeline ServiceAccount (a real signed token)."""
    sa, _ = chart_rbac(helm_template, k8s, namespace)
    return k8s.api_client(service_account_token(admin, namespace, sa)), sa


def cluster_config(namespace: str, launcher: str, service_account: str, **overrides: Any) -> ClusterConfig:
    return ClusterConfig(**{
        "launcher": launcher, "namespace": namespace, "workers": 1, "nproc_per_node": 2, "gpus_per_node": 1,
        "cpu": "2", "memory": "4Gi", "node_selector": {"nvidia.com/gpu.present": "true"},
        "service_account": service_account, "timeout_s": 60, "poll_s": 1, **overrides})


def run_with_operator(admin, client, cluster: ClusterConfig, name: str, script: str, kubelet=None,
                      strategy: str = "ddp", env: dict[str, str] | None = None, **operator_kw: Any):
    """Run ``run_cluster_job`` as ``client`` while a FakeOperator plays ``script``; returns (result or
    exception, operator)."""
    kind = "PyTorchJob" if cluster.launcher == "pytorchjob" else "TrainJob"
    op = FakeOperator(admin, kind, cluster.namespace, name, script, NODE, kubelet=kubelet, log_lines=LOG_LINES,
                      **operator_kw)
    op.start()
    try:
        outcome: Any = run_cluster_job(cluster, name, ["--config", "s3://b/runs/t/config.yaml", "--stage", "pretrain"],
                                       env=env or {"VLM_PARENT_RUN_ID": "parent123"}, strategy=strategy,
                                       labels={"vlm.stage": "pretrain"}, api_client=client)
    except Exception as exc:  # noqa: BLE001 - the test inspects it
        outcome = exc
    op.join(30)
    assert op.error is None, f"the stand-in operator failed: {op.error!r}"
    return outcome, op


API = {"pytorchjob": ("kubeflow.org", "v1", "pytorchjobs"), "trainjob": ("trainer.kubeflow.org", "v1alpha1", "trainjobs")}


def stored_job(admin, launcher: str, namespace: str, name: str) -> dict | None:
    """The job as the API server stores it, or None when it does not exist."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    try:
        group, version, plural = API[launcher]
        return client.CustomObjectsApi(admin).get_namespaced_custom_object(group, version, namespace, plural, name)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def pod_log_records(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "vlm.k8s.lifecycle" and r.levelno == logging.INFO
            and r.getMessage().startswith("[")]
