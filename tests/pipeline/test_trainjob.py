"""TrainJob manifests (Kubeflow Trainer v2) for the training steps, checked offline against the vendored CRD and
against the PyTorchJob built from the same cluster config."""

from __future__ import annotations

import copy
import json
import os
import subprocess

import pytest

from vlm.k8s import crds
from vlm.k8s.config import ClusterConfig
from vlm.k8s.launch import job_env
from vlm.k8s.lifecycle import ClusterJobError, dropped_fields
from vlm.k8s.pytorchjob import build_pytorchjob
from vlm.k8s.trainjob import build_trainjob, mpi_command, validate_trainjob

ARGS = ["--config", "s3://b/runs/x/config.yaml", "--stage", "pretrain"]


@pytest.fixture
def cluster():
    return ClusterConfig(launcher="trainjob", namespace="team-a", workers=3, nproc_per_node=8, gpus_per_node=8,
                         node_selector={"nvidia.com/gpu.product": "H100"}, service_account="vlm-pipeline")


def test_trainjob_is_valid_and_matches_the_pytorchjob(cluster):
    env = {"VLM_PARENT_RUN_ID": "abc"}
    tj = build_trainjob("vlm-pretrain-x", ARGS, cluster, env=env, labels={"vlm.stage": "pretrain"})
    validate_trainjob(tj)
    pj = build_pytorchjob("vlm-pretrain-x", ARGS, cluster.model_copy(update={"launcher": "pytorchjob"}), env=env,
                          labels={"vlm.stage": "pretrain"})
    trainer, spec = tj["spec"]["trainer"], tj["spec"]
    master = pj["spec"]["pytorchReplicaSpecs"]["Master"]["template"]
    container = master["spec"]["containers"][0]
    assert spec["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime",
                                  "name": "torch-distributed"}
    assert trainer["numNodes"] == 4 and trainer["numProcPerNode"] == 8  # 1 master + 3 workers, 8 procs each
    assert (trainer["image"], trainer["command"], trainer["args"]) == (container["image"], container["command"], ARGS)
    assert trainer["resourcesPerNode"] == container["resources"]
    assert spec["activeDeadlineSeconds"] == pj["spec"]["runPolicy"]["activeDeadlineSeconds"]
    literal = [e for e in trainer["env"] if "value" in e]
    assert literal == container["env"]
    # envFrom (PyTorchJob) and key-by-key references (TrainJob) name the same Secrets and ConfigMaps
    refs = {(k, e["valueFrom"][k]["name"]) for e in trainer["env"] if "valueFrom" in e for k in e["valueFrom"]}
    assert {("secretKeyRef", "vlm-s3-credentials"), ("configMapKeyRef", "vlm-vlm-platform-env")} == refs
    assert {n for e in container["envFrom"] for n in (e.get("secretRef") or e.get("configMapRef")).values()} == \
        {"vlm-s3-credentials", "vlm-vlm-platform-env"}
    assert {e["name"] for e in trainer["env"] if "valueFrom" in e} == set(cluster.secret_keys + cluster.config_map_keys)
    (patch,) = spec["runtimePatches"]
    (rjob,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    pod = rjob["template"]["spec"]["template"]
    for key in ("nodeSelector", "tolerations", "serviceAccountName", "volumes"):
        assert pod["spec"][key] == master["spec"][key], key
    assert pod["metadata"] == master["metadata"]
    assert pod["spec"]["containers"] == [{"name": "node", "volumeMounts": container["volumeMounts"],
                                          "securityContext": container["securityContext"]}]


def test_schema_catches_typos_and_wrong_types(cluster):
    tj = build_trainjob("vlm-x", ARGS, cluster)
    bad = copy.deepcopy(tj)
    bad["spec"]["trainer"]["numNode"] = 2
    bad["spec"]["runtimeRef"].pop("name")
    with pytest.raises(ClusterJobError) as err:
        validate_trainjob(bad)
    assert "spec.trainer.numNode: unknown field" in str(err.value) and "'name' is a required property" in str(err.value)
    assert dropped_fields(tj, {**tj, "spec": {**tj["spec"], "suspend": True}}) == []  # added by a server: fine
    assert dropped_fields(tj, {**tj, "spec": {k: v for k, v in tj["spec"].items() if k != "trainer"}}) == \
        ["spec.trainer: dropped"]


def test_deepspeed_picks_the_mpi_runtime_unless_told_otherwise(cluster):
    tj = build_trainjob("vlm-x", ARGS, cluster, strategy="deepspeed")
    validate_trainjob(tj)
    assert tj["spec"]["runtimeRef"]["name"] == "deepspeed-distributed"
    assert tj["spec"]["trainer"]["command"][:2] == ["bash", "-c"] and "mpirun" in tj["spec"]["trainer"]["command"][2]
    assert tj["spec"]["trainer"]["args"] == ARGS
    same = build_trainjob("vlm-x", ARGS, cluster.model_copy(update={"deepspeed_runtime": "torch-distributed"}),
                          strategy="deepspeed")
    assert same["spec"]["runtimeRef"]["name"] == "torch-distributed" and same["spec"]["trainer"]["command"][0] == "python"


def test_mpi_command_maps_openmpi_ranks_for_vlm_train(tmp_path):
    """Run the launcher command with a stand-in mpirun (starts 2 ranks) and python (records what it got)."""
    (tmp_path / "mpirun").write_text(
        "#!/bin/bash\n# drop options up to the program, start two ranks of it\n"
        "while [[ $1 == -* ]]; do case $1 in --hostfile|-x) shift 2;; *) shift;; esac; done\n"
        "for r in 0 1; do OMPI_COMM_WORLD_RANK=$r OMPI_COMM_WORLD_SIZE=2 OMPI_COMM_WORLD_LOCAL_RANK=$r \"$@\"; done\n")
    (tmp_path / "python").write_text(
        "#!/bin/bash\necho \"{\\\"rank\\\": \\\"$RANK\\\", \\\"world\\\": \\\"$WORLD_SIZE\\\", \\\"local\\\": "
        "\\\"$LOCAL_RANK\\\", \\\"master\\\": \\\"$MASTER_ADDR:$MASTER_PORT\\\", \\\"argv\\\": \\\"$*\\\"}\" "
        f">> {tmp_path}/ranks.jsonl\n")
    for exe in ("mpirun", "python"):
        (tmp_path / exe).chmod(0o755)
    cmd = mpi_command(["AWS_ENDPOINT_URL", "VLM_PARENT_RUN_ID"]) + ARGS
    assert "-x AWS_ENDPOINT_URL -x VLM_PARENT_RUN_ID" in cmd[2]
    env = {"PATH": f"{tmp_path}:{os.environ['PATH']}", "MASTER_ADDR": "vlm-x-launcher-0-0.vlm-x"}
    subprocess.run(cmd, env=env, check=True, timeout=30)
    ranks = [json.loads(line) for line in (tmp_path / "ranks.jsonl").read_text().splitlines()]
    assert ranks == [{"rank": str(r), "world": "2", "local": str(r), "master": "vlm-x-launcher-0-0.vlm-x:29500",
                      "argv": "-m vlm.train " + " ".join(ARGS)} for r in (0, 1)]


def test_job_env_strips_credentials_and_prefers_references(monkeypatch, caplog):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://alice:s3cr3t@mlflow:5000")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://seaweed:8333")
    with_cm = ClusterConfig(launcher="trainjob")
    assert job_env(with_cm, {"X": "1"}) == {"X": "1"}, "the ConfigMap provides the endpoints: referenced, not copied"
    no_cm = with_cm.model_copy(update={"env_from_config_maps": []})
    assert job_env(no_cm, {"X": "1"}) == {"MLFLOW_TRACKING_URI": "http://mlflow:5000",
                                          "AWS_ENDPOINT_URL": "http://seaweed:8333", "X": "1"}
    assert "MLFLOW_TRACKING_URI carries credentials" in caplog.text and "s3cr3t" not in caplog.text
    for launcher in ("pytorchjob", "trainjob"):
        from vlm.k8s.launch import prepare_job

        ops = prepare_job(no_cm.model_copy(update={"launcher": launcher}), "vlm-x",
                          ["--config", "s3://alice:pw@b/c.yaml"], api_client=_offline_client())
        assert "s3cr3t" not in json.dumps(ops.manifest) and "alice" not in json.dumps(ops.manifest), launcher


def _offline_client():
    """An ApiClient pointed nowhere: building and validating a job talks to no server."""
    from kubernetes import client

    cfg = client.Configuration()
    cfg.host = "https://127.0.0.1:9"
    return client.ApiClient(cfg)


def test_cel_rules_stripped_only_for_old_servers():
    crd = crds.crd("TrainJob")
    assert crds.for_server(crd, 31) is crd
    old = json.dumps(crds.for_server(crd, 20))
    assert "x-kubernetes-validations" not in old and "x-kubernetes-validations" in json.dumps(crd)
    assert json.loads(old)["spec"]["names"]["kind"] == "TrainJob"
