"""The Helm chart against a real API server: every CI values file rendered and server-side applied to its own
namespace, then the pipeline ServiceAccount's permissions checked with SelfSubjectAccessReviews impersonating it
(what ``kubectl auth can-i --as=system:serviceaccount:NS:SA`` sends).

The chart says ``kubeVersion: >=1.27.0-0``; the test server (Debian's v1.20.2) is older, so the chart is
rendered with ``helm template --kube-version 1.31.0`` (the version the static checks use) and applied with
kubectl. Nothing in it needs an API newer than 1.20.
"""

from __future__ import annotations

import pytest

from tests.deploy.conftest import CI_VALUES, ci_values
from tests.k8s.conftest import apply_server_side, make_namespace

CI_NAMES = [p.name for p in CI_VALUES]

JOBS = [("kubeflow.org", "pytorchjobs"), ("trainer.kubeflow.org", "trainjobs")]
JOB_VERBS = ["create", "get", "list", "watch", "delete"]
# (verb, resource, namespace or "" for this one or "*" for all/cluster scope): what a training step does
NEEDED = ([(v, f"{r}.{g}", "") for g, r in JOBS for v in JOB_VERBS]
          + [(v, "pods", "") for v in ("get", "list", "watch")] + [("get", "pods/log", "")])
ARGO = [("create", "workflowtaskresults.argoproj.io", ""), ("patch", "workflowtaskresults.argoproj.io", "")]
REFUSED = [
    ("get", "secrets", ""), ("list", "secrets", ""), ("create", "pods", ""), ("delete", "pods", ""),
    ("create", "pods/exec", ""), ("get", "configmaps", ""), ("create", "deployments.apps", ""),
    ("update", "pytorchjobs.kubeflow.org", ""), ("patch", "pytorchjobs.kubeflow.org", ""),
    ("patch", "trainjobs.trainer.kubeflow.org", ""), ("update", "pytorchjobs.kubeflow.org/status", ""),
    ("create", "roles.rbac.authorization.k8s.io", ""), ("create", "rolebindings.rbac.authorization.k8s.io", ""),
    ("create", "serviceaccounts/token", ""),
    ("create", "pytorchjobs.kubeflow.org", "other"), ("create", "trainjobs.trainer.kubeflow.org", "other"),
    ("get", "pods/log", "other"),
    ("list", "pytorchjobs.kubeflow.org", "*"), ("list", "trainjobs.trainer.kubeflow.org", "*"),
    ("get", "clustertrainingruntimes.trainer.kubeflow.org", "*"), ("list", "nodes", "*"),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io", "*"), ("list", "namespaces", "*"),
]


def _sa_name(docs: list[dict]) -> str:
    """The pipeline ServiceAccount, as the chart publishes it in its ConfigMap (created by the chart or not)."""
    return next(d["data"]["VLM_SERVICE_ACCOUNT"] for d in docs
                if d["kind"] == "ConfigMap" and "VLM_SERVICE_ACCOUNT" in (d.get("data") or {}))


def can_i(k8s, sa: str, namespace: str, verb: str, resource: str, where: str) -> bool:
    """A SelfSubjectAccessReview impersonating the ServiceAccount (the API server adds its groups, as for a
    real token); exact group/resource/subresource, no discovery needed (Argo's CRDs are not installed here)."""
    from kubernetes import client

    api = k8s.api_client()
    api.set_default_header("Impersonate-User", f"system:serviceaccount:{namespace}:{sa}")
    res, _, sub = resource.partition("/")
    name, _, group = res.partition(".")
    attrs = client.V1ResourceAttributes(verb=verb, resource=name, group=group, subresource=sub or None,
                                        namespace=None if where == "*" else (where or namespace))
    review = client.V1SelfSubjectAccessReview(spec=client.V1SelfSubjectAccessReviewSpec(resource_attributes=attrs))
    return client.AuthorizationV1Api(api).create_self_subject_access_review(review).status.allowed


@pytest.mark.parametrize("values_name", CI_NAMES)
def test_chart_applies_and_pipeline_account_gets_exactly_what_it_needs(values_name, k8s, admin, crds,
                                                                         helm_template):
    namespace = make_namespace(admin, "chart")
    make_namespace_named(admin, "other")
    docs = helm_template(values_name, "--namespace", namespace)
    out = apply_server_side(k8s, docs, manager="helm-template", namespace=namespace)
    assert out.count("serverside-applied") == len(docs), out
    values = ci_values(values_name)
    sa = _sa_name(docs)
    rbac = values.get("pipelines", {}).get("rbac", {})
    granted = NEEDED + (ARGO if rbac.get("argoExecutor", True) else [])
    allowed = {(v, r, w): can_i(k8s, sa, namespace, v, r, w) for v, r, w in granted + REFUSED + ARGO}
    if not rbac.get("create", True):  # the cluster admin brings the Role: the chart grants nothing
        assert not any(allowed.values()), {k for k, v in allowed.items() if v}
        return
    assert [k for k in granted if not allowed[k]] == [], "needed but refused"
    assert [k for k in REFUSED + [a for a in ARGO if a not in granted] if allowed[k]] == [], "granted but not needed"


def make_namespace_named(admin, name: str) -> None:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    try:
        client.CoreV1Api(admin).create_namespace({"metadata": {"name": name}})
    except ApiException as exc:
        if exc.status != 409:
            raise
