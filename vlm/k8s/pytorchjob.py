"""PyTorchJob (kubeflow.org/v1) for the training stages: build with the kubeflow-training SDK, validate
offline against the vendored CRD schema, create, stream logs, wait with a timeout, fail on failure.

The pods run the same entry point as ``torchrun`` does locally (``python -m vlm.train --config ...``); the
Training Operator sets MASTER_ADDR/MASTER_PORT/WORLD_SIZE/RANK, and ``--nproc-per-node`` is carried by
``nprocPerNode`` (torchrun inside each pod).
"""

from __future__ import annotations

import functools
import json
import logging
import re
import time
from importlib import resources
from typing import Any

from vlm.k8s.config import ClusterConfig

log = logging.getLogger(__name__)

API_VERSION = "kubeflow.org/v1"
KIND = "PyTorchJob"


class PyTorchJobError(RuntimeError):
    """The PyTorchJob failed, timed out, or its manifest is invalid."""


def job_name(stage: str, run_tag: str) -> str:
    """A DNS-1123 name (<= 63 chars) for a stage's job in one pipeline run."""
    raw = f"vlm-{stage}-{run_tag}".lower()
    name = re.sub(r"[^a-z0-9-]+", "-", raw).strip("-")
    return name[:63].rstrip("-")


def build_pytorchjob(name: str, command_args: list[str], cluster: ClusterConfig,
                     env: dict[str, str] | None = None, labels: dict[str, str] | None = None) -> dict[str, Any]:
    """The PyTorchJob manifest (a plain dict) for ``python -m vlm.train <command_args>``."""
    from kubernetes import client as k8s
    from kubeflow.training import models as m
    from kubeflow.training.api_client import ApiClient

    resources_ = {"cpu": cluster.cpu, "memory": cluster.memory}
    limits = dict(resources_)
    if cluster.gpus_per_node:
        limits["nvidia.com/gpu"] = str(cluster.gpus_per_node)
    env_vars = [k8s.V1EnvVar(name=k, value=str(v)) for k, v in sorted((env or {}).items())]
    env_vars.append(k8s.V1EnvVar(name="PYTHONUNBUFFERED", value="1"))
    env_from = [k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=s)) for s in cluster.env_from_secrets]
    env_from += [k8s.V1EnvFromSource(config_map_ref=k8s.V1ConfigMapEnvSource(name=c)) for c in cluster.env_from_config_maps]
    container = k8s.V1Container(
        name="pytorch",  # the Training Operator requires this container name
        image=cluster.training_image,
        command=["python", "-m", "vlm.train"],
        args=list(command_args),
        env=env_vars,
        env_from=env_from or None,
        resources=k8s.V1ResourceRequirements(requests=resources_, limits=limits),
        volume_mounts=[k8s.V1VolumeMount(name="dshm", mount_path="/dev/shm")],
        security_context=k8s.V1SecurityContext(run_as_non_root=True, allow_privilege_escalation=False),
    )
    pod_spec = k8s.V1PodSpec(
        containers=[container],
        node_selector=cluster.node_selector or None,
        tolerations=[k8s.V1Toleration(**t.model_dump(exclude_none=True)) for t in cluster.tolerations] or None,
        service_account_name=cluster.service_account or None,
        volumes=[k8s.V1Volume(name="dshm", empty_dir=k8s.V1EmptyDirVolumeSource(medium="Memory", size_limit=cluster.shm_size))],
        restart_policy=None,
    )
    template = k8s.V1PodTemplateSpec(metadata=k8s.V1ObjectMeta(labels=labels or None,
                                                               annotations={"sidecar.istio.io/inject": "false"}),
                                     spec=pod_spec)
    replicas = {"Master": m.KubeflowOrgV1ReplicaSpec(replicas=1, restart_policy="OnFailure", template=template)}
    if cluster.workers:
        replicas["Worker"] = m.KubeflowOrgV1ReplicaSpec(replicas=cluster.workers, restart_policy="OnFailure",
                                                        template=template)
    job = m.KubeflowOrgV1PyTorchJob(
        api_version=API_VERSION,
        kind=KIND,
        metadata=k8s.V1ObjectMeta(name=name, namespace=cluster.namespace, labels=labels or None),
        spec=m.KubeflowOrgV1PyTorchJobSpec(
            pytorch_replica_specs=replicas,
            nproc_per_node=str(cluster.nproc_per_node),
            run_policy=m.KubeflowOrgV1RunPolicy(clean_pod_policy="None", backoff_limit=3,
                                                active_deadline_seconds=cluster.timeout_s),
        ),
    )
    return ApiClient().sanitize_for_serialization(job)


@functools.lru_cache(maxsize=1)
def crd_schema() -> dict[str, Any]:
    """The PyTorchJob CRD's openAPIV3Schema (vendored from the Training Operator v1.9 manifests)."""
    text = resources.files("vlm.k8s").joinpath("schemas/pytorchjob-v1.json").read_text()
    return json.loads(text)["schema"]


def validate_pytorchjob(manifest: dict[str, Any]) -> None:
    """Validate a PyTorchJob manifest against the CRD schema and its pod templates as core/v1 Pods.

    Raises :class:`PyTorchJobError` listing every problem.
    """
    import jsonschema

    problems: list[str] = []
    validator = jsonschema.Draft7Validator(crd_schema())
    for err in sorted(validator.iter_errors(manifest), key=lambda e: list(e.path)):
        problems.append(f"{'.'.join(map(str, err.path)) or '<root>'}: {err.message}")
    problems += _unknown_fields(manifest, crd_schema(), "")
    if manifest.get("apiVersion") != API_VERSION or manifest.get("kind") != KIND:
        problems.append(f"apiVersion/kind must be {API_VERSION}/{KIND}")
    for rtype, spec in (manifest.get("spec", {}).get("pytorchReplicaSpecs") or {}).items():
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"{rtype.lower()}-0"},
               "spec": spec.get("template", {}).get("spec", {})}
        problems += [f"pytorchReplicaSpecs.{rtype}.template: {p}" for p in validate_core_manifest(pod)]
        names = [c.get("name") for c in pod["spec"].get("containers", [])]
        if "pytorch" not in names:
            problems.append(f"pytorchReplicaSpecs.{rtype}: the Training Operator needs a container named 'pytorch'")
    if problems:
        raise PyTorchJobError("invalid PyTorchJob manifest:\n  " + "\n  ".join(problems))


def _unknown_fields(obj: Any, schema: dict[str, Any], path: str) -> list[str]:
    """Structural schemas prune unknown fields silently on a cluster; we report them instead."""
    out: list[str] = []
    if isinstance(obj, dict) and "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        props = schema["properties"]
        for key, value in obj.items():
            if key not in props:
                if schema.get("additionalProperties") is None:
                    out.append(f"{path + '.' if path else ''}{key}: unknown field")
                continue
            if key == "template":  # pod templates are checked as core Pods
                continue
            out += _unknown_fields(value, props[key], f"{path + '.' if path else ''}{key}")
    elif isinstance(obj, dict) and isinstance(schema.get("additionalProperties"), dict):
        for key, value in obj.items():
            out += _unknown_fields(value, schema["additionalProperties"], f"{path}.{key}")
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for i, value in enumerate(obj):
            out += _unknown_fields(value, schema["items"], f"{path}[{i}]")
    return out


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


def run_pytorchjob(manifest: dict[str, Any], timeout_s: int, poll_s: int = 15, delete_after: bool = False,
                   client: Any = None) -> dict[str, Any]:
    """Create the job, stream the master's logs, wait for Succeeded/Failed with a timeout.

    Raises :class:`PyTorchJobError` when the job fails or times out (so the kfp step fails).
    """
    from kubeflow.training import TrainingClient

    validate_pytorchjob(manifest)
    name, namespace = manifest["metadata"]["name"], manifest["metadata"]["namespace"]
    tc = client or TrainingClient(namespace=namespace, job_kind=KIND)
    api = tc.custom_api
    api.create_namespaced_custom_object("kubeflow.org", "v1", namespace, "pytorchjobs", manifest)
    log.info("created PyTorchJob %s/%s", namespace, name)
    deadline = time.time() + timeout_s
    streamed = False
    try:
        while True:
            job = tc.get_job(name, namespace)
            conditions = {c.type: c.status for c in (job.status.conditions or [])} if job.status else {}
            if conditions.get("Failed") == "True":
                raise PyTorchJobError(f"PyTorchJob {namespace}/{name} failed: {_last_message(job)}")
            if conditions.get("Succeeded") == "True":
                log.info("PyTorchJob %s/%s succeeded", namespace, name)
                return {"name": name, "namespace": namespace, "status": "Succeeded"}
            if conditions.get("Running") == "True" and not streamed:
                streamed = True
                try:
                    tc.get_job_logs(name, namespace, follow=True, verbose=True)
                except Exception as exc:  # noqa: BLE001 - logs are best effort; status decides
                    log.warning("could not stream logs of %s: %s", name, exc)
            if time.time() > deadline:
                raise PyTorchJobError(f"PyTorchJob {namespace}/{name} did not finish within {timeout_s}s")
            time.sleep(poll_s)
    finally:
        if delete_after:
            tc.delete_job(name, namespace)


def _last_message(job: Any) -> str:
    conds = (job.status.conditions or []) if job.status else []
    return conds[-1].message if conds else "no condition message"
