"""One entry for a training stage on a cluster: :func:`run_cluster_job` builds the job ``cluster.launcher``
names (a Training Operator PyTorchJob or a Kubeflow Trainer TrainJob), validates it, and runs it to completion.

Credentials reach the pods only through Secret references (``cluster.env_from_secrets``). Endpoints the
configured ConfigMaps provide are referenced, not copied; other endpoint variables of this process are passed
on as values with any userinfo removed (``http://user:pw@host`` -> ``http://host``), with a warning.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

from vlm.k8s.config import ClusterConfig
from vlm.k8s.lifecycle import run_job
from vlm.redact import has_userinfo, strip_userinfo

log = logging.getLogger(__name__)

# endpoints a training pod needs, copied from this process (the kfp step) when no ConfigMap provides them
PASSTHROUGH = ("MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL", "AWS_DEFAULT_REGION")


def job_name(stage: str, run_tag: str) -> str:
    """A DNS-1123 name (<= 63 chars) for a stage's job in one pipeline run."""
    raw = f"vlm-{stage}-{run_tag}".lower()
    name = re.sub(r"[^a-z0-9-]+", "-", raw).strip("-")
    return name[:63].rstrip("-")


def job_env(cluster: ClusterConfig, env: dict[str, str] | None = None) -> dict[str, str]:
    """Literal env for the job: ``env`` plus the PASSTHROUGH variables no ConfigMap reference covers,
    without credentials."""
    referenced = set(cluster.config_map_keys) if cluster.env_from_config_maps else set()
    values = {k: os.environ[k] for k in PASSTHROUGH if os.environ.get(k) and k not in referenced}
    values.update(env or {})
    out = {}
    for key, value in values.items():
        if has_userinfo(str(value)):
            log.warning("%s carries credentials; the job gets it without them. Give the pods "
                        "MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD (or AWS keys) through a Secret listed "
                        "in cluster.env_from_secrets", key)
        out[key] = strip_userinfo(str(value))
    return out


def prepare_job(cluster: ClusterConfig, name: str, args: list[str], env: dict[str, str] | None = None,
                labels: dict[str, str] | None = None, strategy: str = "ddp", api_client: Any = None) -> Any:
    """The validated job ``cluster.launcher`` calls for, as the ``ops`` object :func:`run_job` drives
    (``ops.manifest`` is what is sent); credentials are stripped from env and args."""
    env_, args_ = job_env(cluster, env), [strip_userinfo(a) for a in args]
    if cluster.launcher == "pytorchjob":
        from vlm.k8s.pytorchjob import PyTorchJobOps, pytorchjob_model, validate_pytorchjob

        ops: Any = PyTorchJobOps(pytorchjob_model(name, args_, cluster, env=env_, labels=labels), api_client)
        validate_pytorchjob(ops.manifest)
    elif cluster.launcher == "trainjob":
        from vlm.k8s.trainjob import TrainJobOps, build_trainjob, runtime_for, validate_trainjob

        manifest = build_trainjob(name, args_, cluster, env=env_, labels=labels, strategy=strategy)
        validate_trainjob(manifest)
        ops = TrainJobOps(manifest, mpi=runtime_for(cluster, strategy)[1], api_client=api_client)
    else:
        raise ValueError(f"cluster.launcher {cluster.launcher!r} does not run on a cluster")
    return ops


def run_cluster_job(cluster: ClusterConfig, name: str, args: list[str], env: dict[str, str] | None = None,
                    labels: dict[str, str] | None = None, strategy: str = "ddp", api_client: Any = None
                    ) -> dict[str, Any]:
    """Run ``vlm.train <args>`` as a PyTorchJob or TrainJob named ``name`` in ``cluster.namespace`` and wait.

    ``strategy`` is the stage's training strategy (``deepspeed`` picks ``cluster.deepspeed_runtime`` for a
    TrainJob); ``api_client`` defaults to the in-cluster config, else ~/.kube/config. Raises
    :class:`vlm.k8s.lifecycle.ClusterJobError` when the job fails, times out or is refused.
    """
    ops = prepare_job(cluster, name, args, env, labels, strategy, api_client)
    return run_job(ops, timeout_s=cluster.timeout_s, poll_s=cluster.poll_s, delete_job=cluster.delete_job)
