"""The Helm chart: rendered by a real Helm with every CI values file, linted strictly, each manifest
validated offline (kubernetes-validate strict; no schema = failure), and its wiring checked."""

from __future__ import annotations

import json
import subprocess

import jsonschema
import pytest
import yaml

from tests.deploy.checks import KUBE_VERSION, load_manifests, manifest_problems, secret_refs
from tests.deploy.conftest import CHART, CI_VALUES, NAMESPACE, ci_values, env_of, find, one, render_sdk

CI_NAMES = [p.name for p in CI_VALUES]
PIPELINE_RULES = [
    {"apiGroups": ["kubeflow.org"], "resources": ["pytorchjobs"], "verbs": ["create", "get", "list", "watch", "delete"]},
    {"apiGroups": ["trainer.kubeflow.org"], "resources": ["trainjobs"], "verbs": ["create", "get", "list", "watch", "delete"]},
    {"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list", "watch"]},
]
ARGO_EXECUTOR_RULE = {"apiGroups": ["argoproj.io"], "resources": ["workflowtaskresults"], "verbs": ["create", "patch"]}


def test_ci_values_cover_the_main_setups():
    assert {"default-values.yaml", "external-values.yaml", "ingress-values.yaml", "existing-rbac-values.yaml",
            "kfp-runner-values.yaml"} <= set(CI_NAMES)


def test_values_schema_is_a_valid_schema_that_accepts_every_ci_file():
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.Draft202012Validator(schema).validate(defaults)


@pytest.mark.parametrize("values_name", CI_NAMES)
def test_helm_lint_strict(values_name, helm):
    import helm_python

    proc = helm("lint", str(CHART), "--strict", "--kube-version", KUBE_VERSION, "--namespace", NAMESPACE,
                "-f", str(CHART / "ci" / values_name))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in proc.stdout
    report = helm_python.lint(CHART, ci_values(values_name), strict=True, kube_version=f"v{KUBE_VERSION}",
                              namespace=NAMESPACE)
    bad = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert not bad, bad


@pytest.mark.parametrize("values_name", CI_NAMES)
def test_every_manifest_validates(values_name, helm_template):
    docs = helm_template(values_name)
    assert len(docs) >= 5
    assert manifest_problems(docs) == []


@pytest.mark.parametrize("values_name", CI_NAMES)
def test_embedded_helm_renders_the_same_objects(values_name, chart, helm_template):
    rendered = render_sdk(chart, ci_values(values_name))
    sdk_docs = load_manifests(t for path, t in rendered.items() if not path.endswith("NOTES.txt"))
    key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
    assert sorted(map(key, sdk_docs)) == sorted(map(key, helm_template(values_name)))


@pytest.mark.parametrize("values_name", CI_NAMES)
def test_secrets_by_reference_only(values_name, helm_template):
    values = ci_values(values_name)
    docs = helm_template(values_name)
    assert not find(docs, "Secret")
    allowed = {values.get("s3", {}).get("existingSecret", "vlm-s3-credentials"), *values.get("imagePullSecrets", [])}
    if values.get("minio", {}).get("enabled", True):
        allowed.add("vlm-minio-root")
    if values.get("postgresql", {}).get("enabled", True):
        allowed.add("vlm-db-credentials")
    else:
        allowed.add(values["externalDatabase"]["existingSecret"])
    if values.get("mlflow", {}).get("ingress", {}).get("tlsSecret"):
        allowed.add(values["mlflow"]["ingress"]["tlsSecret"])
    used = set().union(*(secret_refs(d) for d in docs))
    assert used == allowed
    # No credential ever appears as a literal value.
    for d in docs:
        for spec in [d.get("spec", {}).get("template", {}).get("spec"), d.get("spec")]:
            for c in (spec or {}).get("containers", []) if isinstance(spec, dict) else []:
                for name, value in env_of(c).items():
                    if any(s in name for s in ("PASSWORD", "SECRET_ACCESS_KEY", "ACCESS_KEY_ID")):
                        assert isinstance(value, dict) and "secretKeyRef" in value, (d["metadata"]["name"], name)


@pytest.mark.parametrize("values_name", CI_NAMES)
def test_pipeline_rbac_is_least_privilege(values_name, helm_template):
    values = ci_values(values_name)
    docs = helm_template(values_name)
    cm = one(docs, "ConfigMap", "-env")
    account = values.get("pipelines", {}).get("serviceAccount", {})
    rbac = values.get("pipelines", {}).get("rbac", {})
    assert not find(docs, "ClusterRole") and not find(docs, "ClusterRoleBinding")
    if account.get("create", True):
        sa_name = one(docs, "ServiceAccount", account.get("name") or "-pipeline")["metadata"]["name"]
    else:
        assert not find(docs, "ServiceAccount", account["name"])
        sa_name = account["name"]
    assert cm["data"]["VLM_SERVICE_ACCOUNT"] == sa_name
    if not rbac.get("create", True):
        assert not find(docs, "Role") and not find(docs, "RoleBinding")
        return
    role, binding = one(docs, "Role"), one(docs, "RoleBinding")
    expected = PIPELINE_RULES + ([ARGO_EXECUTOR_RULE] if rbac.get("argoExecutor", True) else [])
    assert role["rules"] == expected
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa_name, "namespace": NAMESPACE}]


@pytest.mark.parametrize("values_name", CI_NAMES)
def test_servers_get_no_api_token(values_name, helm_template):
    """Only the pipeline account may talk to the API server; MLflow, MinIO, PostgreSQL and Jobs may not."""
    docs = helm_template(values_name)
    (server_sa,) = [d for d in docs if d["kind"] == "ServiceAccount" and d.get("automountServiceAccountToken") is False]
    pods = 0
    for d in docs:
        spec = d["spec"] if d["kind"] == "Pod" else d.get("spec", {}).get("template", {}).get("spec")
        if spec is not None:
            pods += 1
            assert spec["automountServiceAccountToken"] is False, d["metadata"]["name"]
            assert spec["serviceAccountName"] == server_sa["metadata"]["name"], d["metadata"]["name"]
    assert pods >= 1


def test_mlflow_uses_postgres_minio_and_allowed_hosts(helm_template):
    from mlflow.server.security_utils import is_allowed_host_header

    docs = helm_template("default-values.yaml")
    dep = one(docs, "Deployment", "-mlflow")
    svc = one(docs, "Service", "-mlflow")
    spec = dep["spec"]["template"]["spec"]
    (server,) = spec["containers"]
    (migrate,) = spec["initContainers"]
    assert server["command"] == ["mlflow", "server"]
    args = dict(a.split("=", 1) if "=" in a else (a, "") for a in server["args"])
    assert args["--artifacts-destination"] == "s3://mlflow/artifacts"
    assert "--serve-artifacts" in args
    env = env_of(server)
    pg = one(docs, "StatefulSet", "-postgresql")["metadata"]["name"]
    minio = one(docs, "StatefulSet", "-minio")["metadata"]["name"]
    assert env["MLFLOW_BACKEND_STORE_URI"] == (
        f"postgresql+psycopg2://$(DB_USER):$(DB_PASSWORD)@{pg}.{NAMESPACE}.svc.cluster.local:5432/mlflow?sslmode=disable")
    names = [e["name"] for e in server["env"]]
    assert names.index("DB_PASSWORD") < names.index("MLFLOW_BACKEND_STORE_URI")  # $(VAR) expands only earlier vars
    assert env["MLFLOW_S3_ENDPOINT_URL"] == f"http://{minio}.{NAMESPACE}.svc.cluster.local:9000"
    assert env_of(migrate)["MLFLOW_BACKEND_STORE_URI"] == env["MLFLOW_BACKEND_STORE_URI"]
    assert "mlflow db upgrade" in " ".join(migrate["command"])
    # --allowed-hosts, checked with MLflow's own matcher: every in-cluster form and port-forward pass, others 403.
    allowed = args["--allowed-hosts"].split(",")
    name, port = svc["metadata"]["name"], svc["spec"]["ports"][0]["port"]
    for host in (name, f"{name}:{port}", f"{name}.{NAMESPACE}:{port}", f"{name}.{NAMESPACE}.svc.cluster.local:{port}",
                 "localhost:5000"):
        assert is_allowed_host_header(allowed, host), host
    for host in ("evil.example.com", f"{name}.other-ns:{port}", "attacker.localhost:5000"):
        assert not is_allowed_host_header(allowed, host), host
    # The ConfigMap pipeline steps read points at the same services.
    cm = one(docs, "ConfigMap", "-env")["data"]
    assert cm["MLFLOW_TRACKING_URI"] == f"http://{name}.{NAMESPACE}.svc.cluster.local:{port}"
    assert cm["AWS_ENDPOINT_URL"] == env["AWS_ENDPOINT_URL"]
    assert cm["VLM_IMAGE"] == server["image"] == "ghcr.io/vlm-platform/vlm-platform:0.1.0-cpu"
    assert cm["VLM_TRAINING_IMAGE"] == "ghcr.io/vlm-platform/vlm-platform:0.1.0-cuda"


def test_external_services_replace_minio_and_postgres(helm_template):
    values = ci_values("external-values.yaml")
    docs = helm_template("external-values.yaml")
    assert not find(docs, "StatefulSet") and not find(docs, "Job")
    server = one(docs, "Deployment", "-mlflow")["spec"]["template"]["spec"]["containers"][0]
    env = env_of(server)
    db = values["externalDatabase"]
    assert env["MLFLOW_BACKEND_STORE_URI"] == (
        f"postgresql+psycopg2://$(DB_USER):$(DB_PASSWORD)@{db['host']}:5432/mlflow?sslmode=verify-full")
    assert env["DB_USER"] == "mlflow_app"
    assert env["DB_PASSWORD"] == {"secretKeyRef": {"name": "vlm-rds-mlflow", "key": "db-password"}}
    assert env["AWS_ENDPOINT_URL"] == env["MLFLOW_S3_ENDPOINT_URL"] == "https://s3.eu-west-1.amazonaws.com"
    assert env["AWS_DEFAULT_REGION"] == "eu-west-1"
    assert "--artifacts-destination=s3://acme-vlm-mlflow/prod/artifacts" in server["args"]
    sa = one(docs, "ServiceAccount", "vlm-pipeline-runner")
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")


def test_ingress_tls_digests_and_scheduling(helm_template):
    docs = helm_template("ingress-values.yaml")
    ing = one(docs, "Ingress")
    assert ing["spec"]["rules"][0]["host"] == "mlflow.example.com"
    assert ing["spec"]["tls"] == [{"hosts": ["mlflow.example.com"], "secretName": "mlflow-example-com-tls"}]
    assert ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] == "vlm-mlflow"
    dep = one(docs, "Deployment", "-mlflow")
    spec = dep["spec"]["template"]["spec"]
    server = spec["containers"][0]
    assert server["image"].startswith("registry.example.com/ml/vlm-platform@sha256:")
    args = server["args"]
    hosts = next(a for a in args if a.startswith("--allowed-hosts=")).split("=", 1)[1].split(",")
    assert {"mlflow.example.com", "mlflow.internal.example.com"} <= set(hosts)
    assert "--cors-allowed-origins=https://mlflow.example.com" in args and "--expose-prometheus=/tmp/metrics" in args
    assert dep["spec"]["replicas"] == 2 and spec["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    minio = one(docs, "StatefulSet", "-minio")
    assert minio["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"] == "fast-ssd"
    assert minio["spec"]["template"]["spec"]["containers"][0]["image"].endswith(
        "@sha256:14cea493d9a34af32f524e538b8346cf79f3321eff8e708c1e2960462bd8936e")
    assert not find(docs, "Pod")  # tests.enabled=false


def test_minio_setup_job_policy_and_script(helm_template, tmp_path):
    docs = helm_template("default-values.yaml")
    job = one(docs, "Job", "-setup")
    assert set(job["metadata"]["annotations"]["helm.sh/hook"].split(",")) == {"post-install", "post-upgrade"}
    cm = one(docs, "ConfigMap", "-minio-setup")["data"]
    policy = json.loads(cm["policy.json"])
    resources = {r for st in policy["Statement"] for r in st["Resource"]}
    assert resources == {"arn:aws:s3:::vlm", "arn:aws:s3:::mlflow", "arn:aws:s3:::vlm/*", "arn:aws:s3:::mlflow/*"}
    assert not any("admin" in a or a == "s3:*" for st in policy["Statement"] for a in st["Action"])
    script = tmp_path / "setup.sh"
    script.write_text(cm["setup.sh"])
    check = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert "mc mb --ignore-existing \"vlm/$bucket\"" in cm["setup.sh"] and "for bucket in vlm mlflow;" in cm["setup.sh"]


def test_notes_say_how_to_reach_the_uis(chart):
    notes = render_sdk(chart, {})["vlm-platform/templates/NOTES.txt"]
    assert "port-forward svc/vlm-vlm-platform-mlflow 5000:5000" in notes
    assert "port-forward svc/vlm-vlm-platform-minio 9001:9001" in notes
    assert "ml-pipeline-ui" in notes and "vlm submit --host" in notes and "helm test vlm" in notes
    ingress = render_sdk(chart, ci_values("ingress-values.yaml"))["vlm-platform/templates/NOTES.txt"]
    assert "https://mlflow.example.com/" in ingress and "port-forward svc/vlm-mlflow" not in ingress


BAD_VALUES = {
    "wrong type": ({"mlflow": {"replicas": "two"}}, "replicas"),
    "unknown key": ({"mlflow": {"replica": 2}}, "replica"),
    "unknown top-level key": ({"minoi": {"enabled": False}}, "minoi"),
    "unpinned image": ({"minio": {"image": {"tag": "latest"}}}, "tag"),
    "limits removed": ({"mlflow": {"resources": {"limits": None}}}, "limits"),
    "secret name": ({"s3": {"existingSecret": "My_Secret"}}, "existingSecret"),
    "external S3 without endpoint": ({"minio": {"enabled": False}}, "endpoint"),
    "external DB without host": ({"postgresql": {"enabled": False}}, "host"),
    "bad sslmode": ({"externalDatabase": {"sslmode": "on"}}, "sslmode"),
    "ingress without host": ({"mlflow": {"ingress": {"enabled": True}}}, "host"),
}


@pytest.mark.parametrize("values, field", BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_schema_violation_fails_rendering(chart, values, field):
    import helm_python

    with pytest.raises(helm_python.HelmError) as err:
        render_sdk(chart, values)
    assert "schema" in str(err.value).lower() and field in str(err.value)


def test_schema_violation_fails_the_helm_cli(helm):
    proc = helm("template", "vlm", str(CHART), "--set", "mlflow.workers=0")
    assert proc.returncode != 0
    assert "workers" in proc.stderr and "schema" in proc.stderr.lower()
    assert proc.stdout == ""


def test_validators_catch_broken_manifests():
    """The manifest checks are not vacuous: each kind of mistake is reported."""
    good = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
            "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {
                "metadata": {"labels": {"a": "b"}},
                "spec": {"securityContext": {"runAsNonRoot": True}, "containers": [{
                    "name": "c", "image": "repo/img:1.2.3",
                    "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
                    "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
                    "readinessProbe": {"tcpSocket": {"port": 80}}, "livenessProbe": {"tcpSocket": {"port": 80}}}]}}}}
    assert manifest_problems([good]) == []
    bad = json.loads(json.dumps(good))
    c = bad["spec"]["template"]["spec"]["containers"][0]
    c["imagePullPolicyy"] = "Always"
    c["image"] = "repo/img:latest"
    del c["resources"]["limits"], c["livenessProbe"]
    bad["spec"]["template"]["spec"]["securityContext"] = {}
    problems = "\n".join(manifest_problems([bad, {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob",
                                                  "metadata": {"name": "j"}, "spec": {}},
                                            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}}]))
    for expected in ("imagePullPolicyy", "not pinned", "resources.limits.cpu missing", "livenessProbe missing",
                     "runAsNonRoot", "PyTorchJob/j: no schema", "must reference Secrets"):
        assert expected in problems, expected
