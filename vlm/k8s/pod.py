"""The training container both launchers build (PyTorchJob replicas, TrainJob trainer): plain camelCase dicts.

One place decides the entry point, env (literal values plus Secret/ConfigMap references), resources,
placement and the shared-memory volume, so a PyTorchJob and a TrainJob for the same ``ClusterConfig`` run
the same container on the same nodes.
"""

from __future__ import annotations

from typing import Any

from vlm.k8s.config import ClusterConfig

# torchrun reads --nnodes/--node-rank/--nproc-per-node/--master-addr/--master-port from PET_* variables, which
# the Training Operator (PyTorchJob with nprocPerNode) and Trainer's torch plugin (TrainJob) both set; locally
# vlm.train.launch runs the same module under torchrun --standalone.
TORCHRUN = ["python", "-m", "torch.distributed.run", "-m", "vlm.train"]
SHM_VOLUME = "dshm"


def env(values: dict[str, str] | None) -> list[dict[str, str]]:
    """Literal env vars (sorted) plus PYTHONUNBUFFERED, so log lines reach ``kubectl logs`` as they are written."""
    out = [{"name": k, "value": str(v)} for k, v in sorted((values or {}).items()) if k != "PYTHONUNBUFFERED"]
    return out + [{"name": "PYTHONUNBUFFERED", "value": "1"}]


def env_from(cluster: ClusterConfig) -> list[dict[str, Any]]:
    """``envFrom`` references: every key of the configured Secrets and ConfigMaps (PyTorchJob pods)."""
    return ([{"secretRef": {"name": s}} for s in cluster.env_from_secrets]
            + [{"configMapRef": {"name": c}} for c in cluster.env_from_config_maps])


def env_refs(cluster: ClusterConfig) -> list[dict[str, Any]]:
    """The same references key by key (``valueFrom``, optional like envFrom's keys), where no envFrom exists
    (TrainJob's trainer): ``secret_keys`` of each Secret, ``config_map_keys`` of each ConfigMap."""
    refs = [{"name": k, "valueFrom": {"secretKeyRef": {"name": s, "key": k, "optional": True}}}
            for s in cluster.env_from_secrets for k in cluster.secret_keys]
    refs += [{"name": k, "valueFrom": {"configMapKeyRef": {"name": c, "key": k, "optional": True}}}
             for c in cluster.env_from_config_maps for k in cluster.config_map_keys]
    return refs


def resources(cluster: ClusterConfig) -> dict[str, dict[str, str]]:
    requests = {"cpu": cluster.cpu, "memory": cluster.memory}
    limits = dict(requests)
    if cluster.gpus_per_node:
        limits["nvidia.com/gpu"] = str(cluster.gpus_per_node)
    return {"requests": requests, "limits": limits}


def tolerations(cluster: ClusterConfig) -> list[dict[str, str]]:
    return [t.model_dump(exclude_none=True) for t in cluster.tolerations]


def shm_volume(cluster: ClusterConfig) -> dict[str, Any]:
    """/dev/shm as a memory-backed emptyDir (dataloader workers and NCCL outgrow the runtime's 64 MB)."""
    return {"name": SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": cluster.shm_size}}


SHM_MOUNT = {"name": SHM_VOLUME, "mountPath": "/dev/shm"}
SECURITY_CONTEXT = {"runAsNonRoot": True, "allowPrivilegeEscalation": False}
POD_ANNOTATIONS = {"sidecar.istio.io/inject": "false"}  # a mesh sidecar would keep the job's pods running
