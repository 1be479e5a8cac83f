"""Where and how training runs on a cluster (used when the pipeline's launcher is ``pytorchjob``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from vlm.configbase import Section


class Toleration(Section):
    key: str
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None


class ClusterConfig(Section):
    """PyTorchJob settings: one master + ``workers`` workers, ``nproc_per_node`` processes each."""

    launcher: Literal["local", "pytorchjob"] = Field("local", description="local = torchrun on this machine")
    namespace: str = "kubeflow"
    image: str = Field("ghcr.io/vlm-platform/vlm-platform:0.1.0-cpu", description="image for data/eval/registry steps")
    training_image: str = Field("ghcr.io/vlm-platform/vlm-platform:0.1.0-cuda", description="image for PyTorchJob pods")
    workers: int = Field(1, ge=0, description="worker replicas besides the master")
    nproc_per_node: int = Field(1, ge=1)
    gpus_per_node: int = Field(1, ge=0)
    cpu: str = "8"
    memory: str = "64Gi"
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=lambda: [Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")])
    env_from_secrets: list[str] = Field(default_factory=lambda: ["vlm-s3-credentials"],
                                        description="Secrets whose keys become env vars (S3 credentials...)")
    env_from_config_maps: list[str] = Field(default_factory=lambda: ["vlm-vlm-platform-env"],
                                            description="ConfigMaps whose keys become env vars (endpoints)")
    config_map_keys: list[str] = Field(
        default_factory=lambda: ["MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL", "AWS_DEFAULT_REGION"],
        description="ConfigMap keys given to every kfp step (kfp-kubernetes needs them listed)")
    secret_keys: list[str] = Field(default_factory=lambda: ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"],
                                   description="Secret keys given to every kfp step")
    service_account: str = ""
    timeout_s: int = Field(24 * 3600, ge=60)
    shm_size: str = Field("16Gi", description="size of the /dev/shm emptyDir for dataloader workers and NCCL")
