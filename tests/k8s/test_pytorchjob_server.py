"""The PyTorchJob path against a real API server: the vendored CRD, dry run, create -> wait/logs -> delete as
the chart's pipeline ServiceAccount, with a stand-in operator patching the job's status."""

from __future__ import annotations

import json
import logging

import pytest

from tests.k8s.jobs import stored_job, LOG_LINES, SECRET_URI, cluster_config, pipeline_client, pod_log_records, run_with_operator
from vlm.k8s import crds as vendored
from vlm.k8s.launch import prepare_job
from vlm.k8s.lifecycle import ClusterJobError, dropped_fields, run_job



def test_crd_cel_rule_kept_or_stripped_by_server_version(k8s, crds):
    assert json.dumps(vendored.crd("PyTorchJob")).count("x-kubernetes-validations") == 1  # the queue-immutable rule
    served = k8s.kubectl("get", "crd", "pytorchjobs.kubeflow.org", "-o", "json").stdout
    has_rule = "x-kubernetes-validations" in served
    assert has_rule == (k8s.minor >= vendored.CEL_MIN_MINOR)


def test_dry_run_finds_what_the_server_drops(admin, crds, namespace):
    cluster = cluster_config(namespace, "pytorchjob", "default")
    ops = prepare_job(cluster, "vlm-dry", ["--stage", "pretrain"], api_client=admin)
    assert dropped_fields(ops.manifest, ops.dry_run()) == []  # the server keeps every field we send
    ops.manifest["spec"]["runPolicy"]["backoffLimitt"] = 3  # a typo the offline check would catch, bypassed here
    ops.manifest["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["imagee"] = "x"
    dropped = dropped_fields(ops.manifest, ops.dry_run())
    assert sorted(dropped) == ["spec.pytorchReplicaSpecs.Master.template.spec.containers[0].imagee: dropped",
                               "spec.runPolicy.backoffLimitt: dropped"]
    assert stored_job(admin, "pytorchjob", namespace, "vlm-dry") is None, "a dry run creates nothing"
    with pytest.raises(ClusterJobError, match="(?s)drops fields.*backoffLimitt"):
        run_job(ops, timeout_s=5, poll_s=1)
    ops.manifest["spec"]["runPolicy"].pop("backoffLimitt")
    ops.manifest["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] = "one"  # a wrong type is refused outright
    with pytest.raises(ClusterJobError, match="(?s)refused.*replicas"):
        run_job(ops, timeout_s=5, poll_s=1)


def test_job_succeeds_logs_streamed_and_redacted_job_deleted(k8s, admin, crds, kubelet, namespace, helm_template,
                                                             caplog):
    client, sa = pipeline_client(k8s, admin, helm_template, namespace)
    cluster = cluster_config(namespace, "pytorchjob", sa)
    caplog.set_level(logging.INFO, logger="vlm.k8s")
    result, op = run_with_operator(admin, client, cluster, "vlm-pretrain-ok", "succeed", kubelet=kubelet)
    assert result == {"name": "vlm-pretrain-ok", "namespace": namespace, "kind": "PyTorchJob", "status": "Succeeded"}
    lines = pod_log_records(caplog)
    assert lines == [f"[vlm-pretrain-ok-master-0] {line}" for line in LOG_LINES[:1]] + \
        ["[vlm-pretrain-ok-master-0] tracking to http://***@mlflow.example:5000"] + \
        [f"[vlm-pretrain-ok-master-0] {line}" for line in LOG_LINES[2:]]
    assert "s3cr3t" not in caplog.text
    assert any(p.startswith(f"/containerLogs/{namespace}/vlm-pretrain-ok-master-0/pytorch?") and "follow=true" in p
               for p in kubelet.requests), kubelet.requests
    assert stored_job(admin, "pytorchjob", namespace, "vlm-pretrain-ok") is None, "delete_job=on_success deletes a succeeded job"
    # the operator made the master pod from the job's own template, and the real server admitted it
    pod = op.pod["spec"]
    assert pod["service_account_name"] == sa and pod["node_selector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["containers"][0]["command"] == ["python", "-m", "torch.distributed.run", "-m", "vlm.train"]


def test_job_fails_step_fails_job_kept(k8s, admin, crds, kubelet, namespace, helm_template):
    client, sa = pipeline_client(k8s, admin, helm_template, namespace)
    cluster = cluster_config(namespace, "pytorchjob", sa)
    result, _ = run_with_operator(admin, client, cluster, "vlm-pretrain-bad", "fail", kubelet=kubelet,
                                  failure_message=f"OOMKilled while logging to {SECRET_URI}")
    assert isinstance(result, ClusterJobError)
    assert "failed: OOMKilled" in str(result) and "s3cr3t" not in str(result) and "http://***@" in str(result)
    job = stored_job(admin, "pytorchjob", namespace, "vlm-pretrain-bad")
    assert job is not None and job["status"]["conditions"][-1]["type"] == "Failed", "a failed job is kept"


@pytest.mark.parametrize("delete_job", ["on_success", "always"])
def test_created_then_stuck_times_out(k8s, admin, crds, namespace, helm_template, delete_job):
    client, sa = pipeline_client(k8s, admin, helm_template, namespace)
    cluster = cluster_config(namespace, "pytorchjob", sa, timeout_s=4, delete_job=delete_job)
    result, _ = run_with_operator(admin, client, cluster, "vlm-stuck", "stuck")
    assert isinstance(result, ClusterJobError) and "did not finish within 4s (last status: Pending)" in str(result)
    assert (stored_job(admin, "pytorchjob", namespace, "vlm-stuck") is None) == (delete_job == "always")


def test_retried_step_replaces_a_failed_job(k8s, admin, crds, kubelet, namespace,
                                                                     helm_template):
    client, sa = pipeline_client(k8s, admin, helm_template, namespace)
    cluster = cluster_config(namespace, "pytorchjob", sa)
    first, _ = run_with_operator(admin, client, cluster, "vlm-retry", "fail", kubelet=kubelet)
    assert isinstance(first, ClusterJobError)
    uid = stored_job(admin, "pytorchjob", namespace, "vlm-retry")["metadata"]["uid"]
    # the retried step finds the failed job: it is deleted and created anew, and this time it succeeds
    from kubernetes import client as k8s_client

    k8s_client.CoreV1Api(admin).delete_namespaced_pod("vlm-retry-master-0", namespace)  # no GC here
    second, _ = run_with_operator(admin, client, cluster, "vlm-retry", "succeed", kubelet=kubelet, after_uid=uid)
    assert second["status"] == "Succeeded"
    assert stored_job(admin, "pytorchjob", namespace, "vlm-retry") is None


def test_pipeline_account_is_refused_outside_its_namespace(k8s, admin, crds, helm_template):
    from tests.k8s.conftest import make_namespace

    home, other = make_namespace(admin), make_namespace(admin)
    client, sa = pipeline_client(k8s, admin, helm_template, home)
    cluster = cluster_config(other, "pytorchjob", sa)
    with pytest.raises(ClusterJobError, match="(?s)refused.*forbidden"):
        prepare_and_run = prepare_job(cluster, "vlm-elsewhere", ["--stage", "pretrain"], api_client=client)
        run_job(prepare_and_run, timeout_s=5, poll_s=1)
