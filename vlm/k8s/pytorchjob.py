"""PyTorchJob (kubeflow.org/v1, Training Operator v1) for the training stages: built with the
``kubeflow-training`` SDK models, validated offline against the vendored CRD, run through its ``TrainingClient``.

Each replica (one Master + ``workers`` Workers) runs ``torchrun -m vlm.train`` (``pod.TORCHRUN``); the operator
sets the PET_* variables torchrun reads, ``nprocPerNode`` carries ``cluster.nproc_per_node``.
"""

from __future__ import annotations

from typing import Any

from vlm.k8s import crds, pod
from vlm.k8s.config import ClusterConfig
from vlm.k8s.lifecycle import FAILED, PENDING, RUNNING, SUCCEEDED, ClusterJobError

GROUP, VERSION, PLURAL = "kubeflow.org", "v1", "pytorchjobs"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "PyTorchJob"
CONTAINER = "pytorch"  # the Training Operator requires this container name


def pytorchjob_model(name: str, command_args: list[str], cluster: ClusterConfig,
                     env: dict[str, str] | None = None, labels: dict[str, str] | None = None) -> Any:
    """The ``KubeflowOrgV1PyTorchJob`` for ``torchrun -m vlm.train <command_args>``."""
    from kubeflow.training import models as m

    container = {
        "name": CONTAINER, "image": cluster.training_image, "command": pod.TORCHRUN, "args": list(command_args),
        "env": pod.env(env), "envFrom": pod.env_from(cluster) or None, "resources": pod.resources(cluster),
        "volumeMounts": [pod.SHM_MOUNT], "securityContext": pod.SECURITY_CONTEXT,
    }
    spec = {"containers": [_drop_none(container)], "volumes": [pod.shm_volume(cluster)],
            "nodeSelector": cluster.node_selector or None, "tolerations": pod.tolerations(cluster) or None,
            "serviceAccountName": cluster.service_account or None}
    template = {"metadata": _drop_none({"labels": labels or None, "annotations": pod.POD_ANNOTATIONS}),
                "spec": _drop_none(spec)}
    replicas = {"Master": m.KubeflowOrgV1ReplicaSpec(replicas=1, restart_policy="OnFailure", template=template)}
    if cluster.workers:
        replicas["Worker"] = m.KubeflowOrgV1ReplicaSpec(replicas=cluster.workers, restart_policy="OnFailure",
                                                        template=template)
    from kubernetes import client as k8s

    return m.KubeflowOrgV1PyTorchJob(
        api_version=API_VERSION, kind=KIND,
        metadata=k8s.V1ObjectMeta(name=name, namespace=cluster.namespace, labels=labels or None),
        spec=m.KubeflowOrgV1PyTorchJobSpec(
            pytorch_replica_specs=replicas, nproc_per_node=str(cluster.nproc_per_node),
            run_policy=m.KubeflowOrgV1RunPolicy(clean_pod_policy="None", backoff_limit=3,
                                                active_deadline_seconds=cluster.timeout_s)))


def to_manifest(model: Any) -> dict[str, Any]:
    from kubeflow.training.api_client import ApiClient

    return ApiClient().sanitize_for_serialization(model)


def build_pytorchjob(name: str, command_args: list[str], cluster: ClusterConfig,
                     env: dict[str, str] | None = None, labels: dict[str, str] | None = None) -> dict[str, Any]:
    """The PyTorchJob manifest (a plain dict) for ``torchrun -m vlm.train <command_args>``."""
    return to_manifest(pytorchjob_model(name, command_args, cluster, env, labels))


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def validate_pytorchjob(manifest: dict[str, Any]) -> None:
    """Validate a PyTorchJob manifest against the CRD schema and its pod templates as core/v1 Pods.

    Raises :class:`ClusterJobError` listing every problem.
    """
    problems = crds.problems(manifest, KIND, skip=frozenset({"template"}))
    if manifest.get("apiVersion") != API_VERSION or manifest.get("kind") != KIND:
        problems.append(f"apiVersion/kind must be {API_VERSION}/{KIND}")
    for rtype, spec in (manifest.get("spec", {}).get("pytorchReplicaSpecs") or {}).items():
        pod_obj = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"{rtype.lower()}-0"},
                   "spec": spec.get("template", {}).get("spec", {})}
        problems += [f"pytorchReplicaSpecs.{rtype}.template: {p}" for p in validate_core_manifest(pod_obj)]
        names = [c.get("name") for c in pod_obj["spec"].get("containers", [])]
        if CONTAINER not in names:
            problems.append(f"pytorchReplicaSpecs.{rtype}: the Training Operator needs a container named '{CONTAINER}'")
    if problems:
        raise ClusterJobError("invalid PyTorchJob manifest:\n  " + "\n  ".join(problems))


def validate_core_manifest(manifest: dict[str, Any], kube_version: str = "1.31.0") -> list[str]:
    """Problems reported by kubernetes-validate (strict) for a core manifest; [] when valid."""
    import kubernetes_validate

    try:
        kubernetes_validate.validate(manifest, kube_version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{'.'.join(map(str, exc.path))}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError as exc:  # treat "no schema" as a failure
        return [f"no schema: {exc}"]
    return []


class PyTorchJobOps:
    """The lifecycle calls :func:`vlm.k8s.lifecycle.run_job` makes, through the SDK's ``TrainingClient``."""

    kind = KIND

    def __init__(self, model: Any, api_client: Any = None):
        from kubeflow.training import TrainingClient
        from kubernetes import client as k8s

        self.model = model
        self.manifest = to_manifest(model)
        self.name, self.namespace = self.manifest["metadata"]["name"], self.manifest["metadata"]["namespace"]
        kwargs = {"client_configuration": api_client.configuration} if api_client is not None else {}
        self.client = TrainingClient(namespace=self.namespace, job_kind=KIND, **kwargs)
        self.core = self.client.core_api if api_client is None else k8s.CoreV1Api(api_client)

    def dry_run(self) -> dict[str, Any]:
        return self.client.custom_api.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, self.manifest, dry_run="All")

    def create(self) -> None:
        self.client.create_job(job=self.model, namespace=self.namespace)

    def get(self) -> Any | None:
        try:
            return self.client.get_job(self.name, self.namespace)
        except RuntimeError as exc:  # the SDK wraps the ApiException
            if getattr(exc.__cause__, "status", None) == 404:
                return None
            raise

    def phase(self, job: Any) -> tuple[str, str]:
        conds = {c.type: c for c in ((job.status.conditions or []) if job.status else []) if c.status == "True"}
        for ctype, phase in (("Failed", FAILED), ("Succeeded", SUCCEEDED), ("Running", RUNNING)):
            if ctype in conds:
                return phase, conds[ctype].message or ""
        return PENDING, ""

    def log_targets(self) -> list[tuple[str, str]]:
        pods = self.client.get_job_pods(self.name, self.namespace, is_master=True)
        return [(p.metadata.name, CONTAINER) for p in pods
                if p.status and p.status.phase in ("Running", "Succeeded", "Failed")]

    def delete(self) -> None:
        self.client.delete_job(self.name, self.namespace)
