"""The TrainJob path (Kubeflow Trainer v2) against a real API server: vendored CRDs and runtimes, dry run,
create -> status -> logs -> delete as the chart's pipeline ServiceAccount, torch and DeepSpeed runtimes."""

from __future__ import annotations

import json
import logging

import pytest

from tests.k8s.jobs import stored_job, LOG_LINES, cluster_config, pipeline_client, pod_log_records, run_with_operator
from vlm.k8s import crds as vendored
from vlm.k8s.launch import prepare_job
from vlm.k8s.lifecycle import ClusterJobError, dropped_fields



def test_trainer_crds_and_runtimes_are_served(k8s, admin, crds):
    from kubernetes import client

    assert json.dumps(vendored.crd("TrainJob")).count("x-kubernetes-validations") == 17
    api = client.CustomObjectsApi(admin)
    names = {r["metadata"]["name"] for r in api.list_cluster_custom_object("trainer.kubeflow.org", "v1alpha1", "clustertrainingruntimes")["items"]}
    assert {"torch-distributed", "deepspeed-distributed"} <= names
    served = k8s.kubectl("get", "crd", "trainjobs.trainer.kubeflow.org", "-o", "json").stdout
    assert ("x-kubernetes-validations" in served) == \
        (k8s.minor >= vendored.CEL_MIN_MINOR)


def test_dry_run_keeps_every_field(admin, crds, namespace):
    cluster = cluster_config(namespace, "trainjob", "default")
    ops = prepare_job(cluster, "vlm-dry", ["--stage", "pretrain"], api_client=admin)
    assert dropped_fields(ops.manifest, ops.dry_run()) == []
    ops.manifest["spec"]["trainer"]["numNode"] = 2  # misspelt numNodes: pruned by the server, found by us
    assert dropped_fields(ops.manifest, ops.dry_run()) == ["spec.trainer.numNode: dropped"]


def test_trainjob_succeeds_logs_and_is_deleted(k8s, admin, crds, kubelet, namespace, helm_template, caplog):
    client, sa = pipeline_client(k8s, admin, helm_template, namespace)
    cluster = cluster_config(namespace, "trainjob", sa)
    caplog.set_level(logging.INFO, logger="vlm.k8s")
    result, op = run_with_operator(admin, client, cluster, "vlm-pretrain-tj", "succeed", kubelet=kubelet)
    assert result == {"name": "vlm-pretrain-tj", "namespace": namespace, "kind": "TrainJob", "status": "Succeeded"}
    lines = pod_log_records(caplog)
    assert len(lines) == len(LOG_LINES) and lines[1].endswith("tracking to http://***@mlflow.example:5000")
    assert "s3cr3t" not in caplog.text
    assert stored_job(admin, "trainjob", namespace, "vlm-pretrain-tj") is None
    pod = op.pod["spec"]  # what the stand-in Trainer made from the TrainJob + runtime patch, admitted by the server
    assert pod["service_account_name"] == sa and pod["node_selector"] == {"nvidia.com/gpu.present": "true"}
    assert {v["name"] for v in pod["volumes"]} == {"dshm"}
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_trainjob_failed_and_stuck(k8s, admin, crds, kubelet, namespace, helm_template):
    client, sa = pipeline_client(k8s, admin, helm_template, namespace)
    failed, _ = run_with_operator(admin, client, cluster_config(namespace, "trainjob", sa), "vlm-tj-bad", "fail",
                                  kubelet=kubelet, failure_message="trainer node-0 exited with code 137")
    assert isinstance(failed, ClusterJobError) and "failed: trainer node-0 exited with code 137" in str(failed)
    assert stored_job(admin, "trainjob", namespace, "vlm-tj-bad") is not None, "failed jobs are kept by default"
    stuck, _ = run_with_operator(admin, client, cluster_config(namespace, "trainjob", sa, timeout_s=3,
                                                               delete_job="always"), "vlm-tj-stuck", "stuck")
    assert isinstance(stuck, ClusterJobError) and "did not finish within 3s" in str(stuck)
    assert stored_job(admin, "trainjob", namespace, "vlm-tj-stuck") is None, "delete_job=always deletes a timed-out job"


def test_deepspeed_stage_uses_the_mpi_runtime(admin, crds, namespace):
    cluster = cluster_config(namespace, "trainjob", "default")
    ops = prepare_job(cluster, "vlm-ds", ["--stage", "pretrain"], strategy="deepspeed", api_client=admin)
    assert ops.manifest["spec"]["runtimeRef"]["name"] == "deepspeed-distributed" and ops.mpi
    assert [p["name"] for p in ops.manifest["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]
            ["replicatedJobs"]] == ["launcher", "node"]
    assert dropped_fields(ops.manifest, ops.dry_run()) == []
    same = prepare_job(cluster.model_copy(update={"deepspeed_runtime": "torch-distributed"}), "vlm-ds2",
                       ["--stage", "pretrain"], strategy="deepspeed", api_client=admin)
    assert same.manifest["spec"]["runtimeRef"]["name"] == "torch-distributed" and not same.mpi


@pytest.mark.parametrize("launcher", ["pytorchjob", "trainjob"])
def test_no_credential_reaches_the_server(k8s, admin, crds, kubelet, namespace, helm_template, monkeypatch, caplog,
                                          launcher):
    """MLFLOW_TRACKING_URI with userinfo in the step's env: the job gets the URI without it, credentials go by
    Secret reference only, and nothing the platform logs carries them."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://alice:s3cr3t-pw@mlflow.example:5000")
    client, sa = pipeline_client(k8s, admin, helm_template, namespace)
    # no ConfigMap reference for the endpoints: the launcher passes the step's own MLFLOW_TRACKING_URI on
    cluster = cluster_config(namespace, launcher, sa, env_from_config_maps=[], delete_job="never")
    caplog.set_level(logging.INFO)
    result, _ = run_with_operator(admin, client, cluster, f"vlm-cred-{launcher}", "succeed", kubelet=kubelet)
    assert result["status"] == "Succeeded"
    stored = json.dumps(stored_job(admin, launcher, namespace, f"vlm-cred-{launcher}"))
    assert "s3cr3t" not in stored and "alice" not in stored
    assert '"name": "MLFLOW_TRACKING_URI", "value": "http://mlflow.example:5000"' in stored
    assert "vlm-s3-credentials" in stored  # the Secret, by reference
    assert "s3cr3t" not in caplog.text and "carries credentials" in caplog.text

