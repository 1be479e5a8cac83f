"""Where and how training runs on a cluster (the pipeline's launcher ``pytorchjob`` or ``trainjob``)."""

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
    """Cluster training: ``1 + workers`` nodes, ``nproc_per_node`` processes each, as a Training Operator v1
    PyTorchJob (launcher ``pytorchjob``) or a Kubeflow Trainer v2 TrainJob (launcher ``trainjob``)."""

    launcher: Literal["local", "pytorchjob", "trainjob"] = Field(
        "local", description="local = torchrun on this machine; pytorchjob = Training Operator v1; trainjob = Trainer v2")
    runtime: str = Field("torch-distributed", description="trainjob: the ClusterTrainingRuntime (torchrun)")
    deepspeed_runtime: str = Field(
        "deepspeed-distributed",
        description="trainjob with strategy deepspeed: an MPI ClusterTrainingRuntime (its image needs OpenMPI and "
                    "sshd); set it to the value of `runtime` to run DeepSpeed under torchrun as the PyTorchJob does")
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
    timeout_s: int = Field(24 * 3600, ge=1, description="the step fails when the job has not finished by then")
    poll_s: int = Field(15, ge=1, description="seconds between two status reads of the job")
    delete_job: Literal["never", "on_success", "always"] = Field(
        "on_success", description="delete the job (and so its pods) after it ran; failed jobs are kept by default")
    shm_size: str = Field("16Gi", description="size of the /dev/shm emptyDir for dataloader workers and NCCL")
