"""TrainJob (trainer.kubeflow.org/v1alpha1, Kubeflow Trainer v2) for the training stages.

The job points at a ClusterTrainingRuntime (``cluster.runtime``, torchrun; ``cluster.deepspeed_runtime`` when
the stage's strategy is ``deepspeed``) and overrides what the PyTorchJob path sets: the image, command, env
(literal values plus Secret/ConfigMap references key by key: a TrainJob's trainer has no ``envFrom``),
resources per node, and through a runtime patch the node selector, tolerations, service account, pod labels
and the /dev/shm volume. The manifest goes through the ``kubeflow-trainer-api`` models
(``TrainerV1alpha1TrainJob.from_dict``: strict types) and the vendored CRD schema.

Why not the ``kubeflow`` SDK's ``TrainerClient``: its ``train()`` and ``get_job()`` read the
ClusterTrainingRuntime (a cluster-scoped read on every poll, which a namespaced pipeline ServiceAccount should
not need), it has no dry run, and the package ships its own ``kubeflow/__init__.py``, the file
``kubeflow-training`` (the PyTorchJob SDK) ships too. We use its API models and the Kubernetes client instead.

MPI runtimes (Trainer's ``deepspeed-distributed``): the trainer container is the launcher; it runs ``mpirun``
over the hostfile the MPI plugin mounts, and each rank maps OpenMPI's variables to the RANK / WORLD_SIZE /
LOCAL_RANK / MASTER_ADDR that ``vlm.train`` reads (:func:`mpi_command`). The image then needs OpenMPI and sshd
(Trainer's deepspeed-runtime image has them); set ``deepspeed_runtime`` to ``runtime`` to use torchrun.
"""

from __future__ import annotations

import shlex
from typing import Any

from vlm.k8s import crds, pod
from vlm.k8s.config import ClusterConfig
from vlm.k8s.lifecycle import FAILED, PENDING, RUNNING, SUCCEEDED

GROUP, VERSION, PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "TrainJob"
RUNTIME_KIND = "ClusterTrainingRuntime"
CONTAINER = "node"  # the trainer container of Trainer's torch and MPI runtimes
PATCH_MANAGER = "vlm-platform.io/launcher"
HOSTFILE = "/etc/mpi/hostfile"
# JobSet labels on the pods Trainer creates (the kubeflow SDK selects trainer pods by the same labels)
JOBSET_LABEL = "jobset.sigs.k8s.io/jobset-name"
RJOB_LABEL = "jobset.sigs.k8s.io/replicatedjob-name"
INDEX_LABEL = "batch.kubernetes.io/job-completion-index"


def runtime_for(cluster: ClusterConfig, strategy: str) -> tuple[str, bool]:
    """(runtime name, is it an MPI runtime) for a stage trained with ``strategy``."""
    if strategy == "deepspeed" and cluster.deepspeed_runtime and cluster.deepspeed_runtime != cluster.runtime:
        return cluster.deepspeed_runtime, True
    return cluster.runtime, False


def mpi_command(env_names: list[str]) -> list[str]:
    """The launcher's command on an MPI runtime (the job's args follow it): ``mpirun`` starts ``vlm.train`` on
    every slot of the hostfile.

    ssh-started ranks do not inherit the pod's env, so every variable the job sets is forwarded with ``-x``;
    rank 0 runs on the hostfile's first host, which becomes MASTER_ADDR.
    """
    rank = ('export RANK="$OMPI_COMM_WORLD_RANK" WORLD_SIZE="$OMPI_COMM_WORLD_SIZE" '
            'LOCAL_RANK="$OMPI_COMM_WORLD_LOCAL_RANK"; exec python -m vlm.train "$@"')
    forward = " ".join(f"-x {shlex.quote(n)}" for n in sorted(set(env_names)))
    launch = (f'export MASTER_ADDR="${{MASTER_ADDR:-$(awk \'NF {{print $1; exit}}\' {HOSTFILE})}}" '
              f'MASTER_PORT="${{MASTER_PORT:-29500}}"; '
              f'exec mpirun --hostfile {HOSTFILE} -x MASTER_ADDR -x MASTER_PORT {forward} '
              f'bash -c {shlex.quote(rank)} vlm-train "$@"')
    return ["bash", "-c", launch, "vlm-launch"]


def build_trainjob(name: str, command_args: list[str], cluster: ClusterConfig, env: dict[str, str] | None = None,
                   labels: dict[str, str] | None = None, strategy: str = "ddp") -> dict[str, Any]:
    """The TrainJob manifest (a plain dict) running ``vlm.train <command_args>`` on ``1 + workers`` nodes."""
    from kubeflow_trainer_api import models

    runtime, mpi = runtime_for(cluster, strategy)
    env_list = pod.env(env) + pod.env_refs(cluster)
    command = mpi_command([e["name"] for e in env_list]) if mpi else pod.TORCHRUN
    pod_spec = {"volumes": [pod.shm_volume(cluster)],
                "containers": [{"name": CONTAINER, "volumeMounts": [pod.SHM_MOUNT],
                                "securityContext": pod.SECURITY_CONTEXT}]}
    if cluster.node_selector:
        pod_spec["nodeSelector"] = dict(cluster.node_selector)
    if cluster.tolerations:
        pod_spec["tolerations"] = pod.tolerations(cluster)
    if cluster.service_account:
        pod_spec["serviceAccountName"] = cluster.service_account
    pod_meta: dict[str, Any] = {"annotations": dict(pod.POD_ANNOTATIONS)}
    if labels:
        pod_meta["labels"] = dict(labels)
    replicated = [{"name": rjob, "template": {"spec": {"template": {"metadata": pod_meta, "spec": pod_spec}}}}
                  for rjob in (["launcher", "node"] if mpi else ["node"])]
    manifest = {
        "apiVersion": API_VERSION, "kind": KIND,
        "metadata": {"name": name, "namespace": cluster.namespace, **({"labels": dict(labels)} if labels else {})},
        "spec": {
            "runtimeRef": {"apiGroup": GROUP, "kind": RUNTIME_KIND, "name": runtime},
            "trainer": {"image": cluster.training_image, "command": command, "args": list(command_args), "env": env_list,
                        "numNodes": 1 + cluster.workers, "numProcPerNode": cluster.nproc_per_node,
                        "resourcesPerNode": pod.resources(cluster)},
            "activeDeadlineSeconds": cluster.timeout_s,
            "runtimePatches": [{"manager": PATCH_MANAGER, "trainingRuntimeSpec": {
                "template": {"spec": {"replicatedJobs": replicated}}}}],
        },
    }
    return models.TrainerV1alpha1TrainJob.from_dict(manifest).to_dict()


def validate_trainjob(manifest: dict[str, Any]) -> None:
    """Validate a TrainJob manifest against the vendored CRD schema; raises ClusterJobError listing problems."""
    from vlm.k8s.lifecycle import ClusterJobError

    problems = crds.problems(manifest, KIND)
    if manifest.get("apiVersion") != API_VERSION or manifest.get("kind") != KIND:
        problems.append(f"apiVersion/kind must be {API_VERSION}/{KIND}")
    if problems:
        raise ClusterJobError("invalid TrainJob manifest:\n  " + "\n  ".join(problems))


class TrainJobOps:
    """The lifecycle calls :func:`vlm.k8s.lifecycle.run_job` makes, with the Kubernetes client."""

    kind = KIND

    def __init__(self, manifest: dict[str, Any], mpi: bool = False, api_client: Any = None):
        from kubernetes import client as k8s
        from kubernetes import config

        if api_client is None:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            api_client = k8s.ApiClient()
        self.manifest = manifest
        self.name, self.namespace = manifest["metadata"]["name"], manifest["metadata"]["namespace"]
        self.custom = k8s.CustomObjectsApi(api_client)
        self.core = k8s.CoreV1Api(api_client)
        self.mpi = mpi  # on an MPI runtime the trainer (whose logs we follow) is the launcher

    def dry_run(self) -> dict[str, Any]:
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, self.manifest,
                                                           dry_run="All")

    def create(self) -> None:
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, self.manifest)

    def get(self) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, self.name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def phase(self, job: dict[str, Any]) -> tuple[str, str]:
        conds = {c["type"]: c for c in (job.get("status") or {}).get("conditions") or [] if c.get("status") == "True"}
        for ctype, phase in (("Failed", FAILED), ("Complete", SUCCEEDED)):
            if ctype in conds:
                return phase, conds[ctype].get("message", "")
        return (RUNNING, "") if self.log_targets() else (PENDING, "")

    def _trainer_pods(self) -> list[Any]:
        rjob = "launcher" if self.mpi else "node"
        selector = f"{JOBSET_LABEL}={self.name},{RJOB_LABEL}={rjob},{INDEX_LABEL}=0"
        return self.core.list_namespaced_pod(self.namespace, label_selector=selector).items

    def log_targets(self) -> list[tuple[str, str]]:
        return [(p.metadata.name, CONTAINER) for p in self._trainer_pods()
                if p.status and p.status.phase in ("Running", "Succeeded", "Failed")]

    def delete(self) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, self.name,
                                                    propagation_policy="Background")
