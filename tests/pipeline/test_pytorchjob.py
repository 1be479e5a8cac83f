"""PyTorchJob manifests for the training steps, validated against the vendored CRD schema and as core Pods."""

from __future__ import annotations

import copy

import pytest

from vlm.k8s.config import ClusterConfig
from vlm.k8s.launch import job_name
from vlm.k8s.lifecycle import ClusterJobError
from vlm.k8s.pytorchjob import build_pytorchjob, validate_core_manifest, validate_pytorchjob


@pytest.fixture
def manifest():
    cluster = ClusterConfig(launcher="pytorchjob", namespace="team-a", workers=3, nproc_per_node=8, gpus_per_node=8,
                            node_selector={"nvidia.com/gpu.product": "H100"}, service_account="vlm-pipeline")
    return build_pytorchjob(job_name("pretrain", "Run 2026/11/23 #7"),
                            ["--config", "s3://b/runs/x/config.yaml", "--stage", "pretrain"], cluster,
                            env={"MLFLOW_TRACKING_URI": "http://mlflow:5000", "VLM_PARENT_RUN_ID": "abc"},
                            labels={"vlm.stage": "pretrain"})


def test_manifest_is_valid(manifest):
    validate_pytorchjob(manifest)
    spec = manifest["spec"]
    assert manifest["metadata"]["name"] == "vlm-pretrain-run-2026-11-23-7"
    assert spec["nprocPerNode"] == "8"
    assert spec["pytorchReplicaSpecs"]["Master"]["replicas"] == 1
    assert spec["pytorchReplicaSpecs"]["Worker"]["replicas"] == 3
    pod = spec["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["name"] == "pytorch"
    assert container["command"] == ["python", "-m", "torch.distributed.run", "-m", "vlm.train"]  # torchrun: PET_*
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert {"name": "VLM_PARENT_RUN_ID", "value": "abc"} in container["env"]
    assert container["envFrom"][0]["secretRef"]["name"] == "vlm-s3-credentials"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "H100"}
    assert pod["serviceAccountName"] == "vlm-pipeline"
    assert not any("SECRET" in e["name"] for e in container["env"]), "secrets travel by reference only"


def test_schema_catches_wrong_types_and_unknown_fields(manifest):
    bad = copy.deepcopy(manifest)
    bad["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] = "one"
    bad["spec"]["runPolicy"]["backoffLimitt"] = 3
    with pytest.raises(ClusterJobError) as err:
        validate_pytorchjob(bad)
    assert "replicas" in str(err.value) and "backoffLimitt: unknown field" in str(err.value)


def test_pod_template_checked_as_core_pod(manifest):
    bad = copy.deepcopy(manifest)
    bad["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["imagee"] = "x"
    with pytest.raises(ClusterJobError, match="imagee"):
        validate_pytorchjob(bad)
    renamed = copy.deepcopy(manifest)
    renamed["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["name"] = "trainer"
    with pytest.raises(ClusterJobError, match="named 'pytorch'"):
        validate_pytorchjob(renamed)


def test_no_schema_is_a_failure():
    problems = validate_core_manifest({"apiVersion": "example.com/v1", "kind": "Unknown", "metadata": {"name": "x"}})
    assert problems and "no schema" in problems[0]


def test_job_names_are_dns_labels():
    name = job_name("finetune", "A" * 100)
    assert len(name) <= 63 and name == name.lower() and not name.endswith("-")
