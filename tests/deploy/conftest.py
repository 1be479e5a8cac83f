"""Fixtures for the deployment tests: the chart, its CI values files, a real helm binary, renderings."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.checks import KUBE_VERSION, load_manifests
from tests.deploy.helmbin import REPO_ROOT, HelmUnavailable, helm_binary

CHART = REPO_ROOT / "charts" / "vlm-platform"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
RELEASE, NAMESPACE = "vlm", "ml"


def ci_values(name: str) -> dict:
    return yaml.safe_load((CHART / "ci" / name).read_text()) or {}


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory):
    """Run the real helm binary with isolated config/cache dirs: helm("lint", ...) -> CompletedProcess."""
    try:
        exe = helm_binary()
    except HelmUnavailable as exc:
        pytest.fail(f"the helm binary is needed for the chart tests and could not be fetched: {exc}")
    home = tmp_path_factory.mktemp("helm-home")
    env = {"HELM_CACHE_HOME": str(home / "cache"), "HELM_CONFIG_HOME": str(home / "config"),
           "HELM_DATA_HOME": str(home / "data"), "PATH": "/usr/bin:/bin", "HOME": str(home)}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(exe), *args], capture_output=True, text=True, env=env, timeout=120)

    return run


@pytest.fixture(scope="session")
def helm_template(helm):
    """Render the chart with `helm template` and one CI values file: values name -> manifests (cached)."""
    cache: dict[str, list[dict]] = {}

    def render(values_name: str, *extra: str) -> list[dict]:
        key = "|".join((values_name, *extra))
        if key not in cache:
            proc = helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION,
                        "-f", str(CHART / "ci" / values_name), *extra)
            assert proc.returncode == 0, f"helm template failed with {values_name}:\n{proc.stderr}"
            cache[key] = load_manifests([proc.stdout])
        return cache[key]

    return render


@pytest.fixture(scope="session")
def chart():
    """The chart loaded through helm-python-sdk (embedded Helm)."""
    import helm_python

    with helm_python.Chart.load(CHART) as loaded:
        yield loaded


def render_sdk(chart, values: dict) -> dict[str, str]:
    """Render with helm-python-sdk: template path -> text."""
    return chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def find(docs: list[dict], kind: str, suffix: str = "") -> list[dict]:
    return [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(suffix)]


def one(docs: list[dict], kind: str, suffix: str = "") -> dict:
    found = find(docs, kind, suffix)
    assert len(found) == 1, f"expected one {kind} named *{suffix}, found {[d['metadata']['name'] for d in found]}"
    return found[0]


def env_of(container: dict) -> dict[str, object]:
    """A container's env as name -> value (or the valueFrom dict)."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}
