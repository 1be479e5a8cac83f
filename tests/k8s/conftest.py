"""Fixtures for the tests against a real kube-apiserver (``make test-k8s``; every test here is marked ``k8s``)."""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from tests.deploy.conftest import helm, helm_template  # noqa: F401 - the chart tests' fixtures
from tests.k8s import testenv
from tests.k8s.standins import FakeKubelet

DATA = Path(__file__).parent / "data"
NODE = "fake-node"


def pytest_collection_modifyitems(items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.k8s)
            item.add_marker(pytest.mark.filterwarnings("ignore:Unverified HTTPS request"))  # self-signed server


@pytest.fixture(scope="session")
def k8s(tmp_path_factory):
    """The running control plane (etcd + kube-apiserver), stopped by PID at the end of the session."""
    try:
        env = testenv.start(tmp_path_factory.mktemp("k8s"))
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    print(f"\nk8s test env: kube-apiserver {env.version} from {env.assets}, ready in {env.start_s:.1f}s",
          file=sys.stderr)
    yield env
    env.stop()


@pytest.fixture(scope="session")
def admin(k8s):
    return k8s.api_client()


def apply_server_side(k8s, docs: list[dict], manager: str = "vlm-tests", namespace: str | None = None) -> str:
    """``kubectl apply --server-side`` (field manager ``manager``) of ``docs``; returns kubectl's output."""
    args = ["apply", "--server-side", f"--field-manager={manager}", "--force-conflicts", "-f", "-"]
    if namespace:
        args[1:1] = ["-n", namespace]
    return k8s.kubectl(*args, input=yaml.safe_dump_all(docs)).stdout


def wait_established(admin, names: list[str], timeout_s: float = 60) -> None:
    from kubernetes import client

    api = client.ApiextensionsV1Api(admin)
    deadline = time.monotonic() + timeout_s
    pending = set(names)
    while pending:
        for name in list(pending):
            conds = api.read_custom_resource_definition(name).status.conditions or []
            if any(c.type == "Established" and c.status == "True" for c in conds):
                pending.discard(name)
        if pending and time.monotonic() > deadline:
            raise TimeoutError(f"CRDs not established: {sorted(pending)}")
        time.sleep(0.2)


@pytest.fixture(scope="session")
def crds(k8s, admin):
    """The vendored PyTorchJob and TrainJob CRDs (+ Trainer's ClusterTrainingRuntime CRD and its torch and
    DeepSpeed runtimes), server-side applied; CEL rules kept or stripped by the server's version."""
    from vlm.k8s import crds as vendored

    docs = [vendored.for_server(vendored.crd(kind), k8s.minor) for kind in ("PyTorchJob", "TrainJob")]
    docs.append(vendored.for_server(yaml.safe_load((DATA / "trainer.kubeflow.org_clustertrainingruntimes.yaml")
                                                   .read_text()), k8s.minor))
    apply_server_side(k8s, docs)
    wait_established(admin, [d["metadata"]["name"] for d in docs])
    runtimes = [yaml.safe_load((DATA / f).read_text()) for f in
                ("runtime-torch-distributed.yaml", "runtime-deepspeed-distributed.yaml")]
    apply_server_side(k8s, runtimes)
    return {d["spec"]["names"]["kind"]: d for d in docs}


@pytest.fixture(scope="session")
def kubelet(admin, tmp_path_factory):
    """A stand-in kubelet serving container logs, registered as Node ``fake-node``."""
    from kubernetes import client

    fake = FakeKubelet(tmp_path_factory.mktemp("kubelet"))
    client.CoreV1Api(admin).create_node(fake.node(NODE))
    yield fake
    fake.stop()


def make_namespace(admin, prefix: str = "t") -> str:
    """A fresh namespace with its ``default`` ServiceAccount (no controller here creates it)."""
    from kubernetes import client

    core = client.CoreV1Api(admin)
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name}})
    core.create_namespaced_service_account(name, {"metadata": {"name": "default"}})
    return name


@pytest.fixture
def namespace(admin):
    return make_namespace(admin)


def service_account_token(admin, namespace: str, name: str) -> str:
    """A real, API-server-signed token for ``namespace/name`` (TokenRequest; no token controller needed)."""
    from kubernetes import client

    req = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600))
    return client.CoreV1Api(admin).create_namespaced_service_account_token(name, namespace, req).status.token
