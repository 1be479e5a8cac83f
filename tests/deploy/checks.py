"""Static checks for the deployment artefacts: rendered Kubernetes manifests and Dockerfiles.

Each check returns a list of human-readable problems (empty = fine), so a failing test says exactly
what is wrong and the checks themselves can be tested against deliberately broken inputs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import yaml

KUBE_VERSION = "1.31.0"
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet"}
# Long-running containers need these probes; Jobs and test Pods do not.
PROBES = ("readinessProbe", "livenessProbe")


def load_manifests(texts: Iterable[str]) -> list[dict]:
    """Parse rendered templates (one string per file, possibly multi-document) into objects."""
    docs: list[dict] = []
    for text in texts:
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append(doc)
    return docs


def kubernetes_problems(doc: dict, version: str = KUBE_VERSION) -> list[str]:
    """kubernetes-validate in strict mode; a kind without a bundled schema is a problem, not a pass."""
    import kubernetes_validate
    from kubernetes_validate.utils import SchemaNotFoundError

    name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except SchemaNotFoundError as exc:
        return [f"{name}: no schema to validate against ({exc})"]
    except kubernetes_validate.ValidationError as exc:
        path = "/".join(map(str, exc.path))
        return [f"{name}: {path}: {exc.message}"]
    return []


def pod_spec(doc: dict) -> dict | None:
    """The pod spec of a Pod, a workload or a Job (None for other kinds)."""
    kind = doc.get("kind")
    if kind == "Pod":
        return doc.get("spec")
    if kind in WORKLOAD_KINDS or kind == "Job":
        return doc.get("spec", {}).get("template", {}).get("spec")
    return None


def containers(spec: dict) -> Iterator[tuple[str, dict]]:
    for key in ("initContainers", "containers"):
        for c in spec.get(key) or []:
            yield key, c


def pod_problems(doc: dict) -> list[str]:
    """Requests/limits, non-root, hardened security context, pinned images, probes on long-running servers."""
    spec = pod_spec(doc)
    if spec is None:
        return []
    name = f"{doc['kind']}/{doc['metadata']['name']}"
    out: list[str] = []
    psc = spec.get("securityContext") or {}
    if not psc.get("runAsNonRoot"):
        out.append(f"{name}: pod securityContext.runAsNonRoot is not true")
    if psc.get("runAsUser", 1) == 0:
        out.append(f"{name}: pod runs as uid 0")
    for key, c in containers(spec):
        cname = f"{name}/{c.get('name')}"
        res = c.get("resources") or {}
        for part in ("requests", "limits"):
            for r in ("cpu", "memory"):
                if r not in (res.get(part) or {}):
                    out.append(f"{cname}: resources.{part}.{r} missing")
        sc = c.get("securityContext") or {}
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{cname}: allowPrivilegeEscalation is not false")
        if sc.get("privileged"):
            out.append(f"{cname}: privileged")
        if sc.get("runAsUser") == 0:
            out.append(f"{cname}: runs as uid 0")
        if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
            out.append(f"{cname}: capabilities are not all dropped")
        image = c.get("image", "")
        if "@sha256:" not in image:
            tag = image.rsplit("/", 1)[-1].partition(":")[2]
            if not tag or tag == "latest":
                out.append(f"{cname}: image {image!r} is not pinned")
        if doc["kind"] in WORKLOAD_KINDS and key == "containers":
            for probe in PROBES:
                if probe not in c:
                    out.append(f"{cname}: {probe} missing")
    return out


def secret_refs(doc: dict) -> set[str]:
    """Names of the Secrets a manifest references (env, envFrom, volumes, pull secrets, TLS)."""
    found: set[str] = set()

    def walk(node) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("secretKeyRef", "secretRef") and isinstance(value, dict):
                    found.add(value["name"])
                elif key == "secret" and isinstance(value, dict) and "secretName" in value:
                    found.add(value["secretName"])
                elif key == "imagePullSecrets":
                    found.update(v["name"] for v in value)
                elif key == "tls" and isinstance(value, list):
                    found.update(t["secretName"] for t in value if "secretName" in t)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(doc)
    return found


def manifest_problems(docs: list[dict], version: str = KUBE_VERSION) -> list[str]:
    """Every check over a rendered release."""
    out: list[str] = []
    seen: set[tuple[str, str]] = set()
    for doc in docs:
        key = (doc.get("kind", "?"), doc.get("metadata", {}).get("name", "?"))
        if key in seen:
            out.append(f"{key[0]}/{key[1]}: rendered twice")
        seen.add(key)
        if doc.get("kind") == "Secret":
            out.append(f"Secret/{key[1]}: the chart must reference Secrets, not create them")
        out += kubernetes_problems(doc, version)
        out += pod_problems(doc)
    return out


# ------------------------------------------------------------------------------------- Dockerfiles

# An exact tag carries a full major.minor.patch version (python:3.11.14-slim, not python:3.11); a digest always pins.
_PINNED_TAG = re.compile(r"^[^@\s]+:[\w.-]*\d+\.\d+\.\d+[\w.-]*(@sha256:[a-f0-9]{64})?$|^[^@\s]+@sha256:[a-f0-9]{64}$")
_SECRETISH = re.compile(r"(PASSWORD|SECRET|ACCESS_KEY|API_KEY|PRIVATE_KEY|CREDENTIAL|(^|_)TOKEN($|_))", re.I)


def dockerfile_problems(path: str | Path) -> list[str]:
    """Multi-stage, pinned bases, non-root final USER, exec-form ENTRYPOINT, no secrets, package from the repo."""
    from dockerfile_parse import DockerfileParser

    parser = DockerfileParser(path=str(path))
    instructions = parser.structure
    out: list[str] = []
    stages: list[str] = []
    final_user: str | None = None
    entrypoint: str | None = None
    for ins in instructions:
        cmd, value = ins["instruction"], ins["value"].strip()
        if cmd == "FROM":
            parts = value.split()
            image = parts[0]
            if image not in stages and not _PINNED_TAG.match(image):
                out.append(f"line {ins['startline'] + 1}: base image {image!r} is not pinned to an exact tag or digest")
            if len(parts) >= 3 and parts[1].upper() == "AS":
                stages.append(parts[2])
            else:
                stages.append(image)
            final_user, entrypoint = None, None  # USER/ENTRYPOINT are per stage
        elif cmd == "USER":
            final_user = value
        elif cmd == "ENTRYPOINT":
            entrypoint = value
        elif cmd in ("ENV", "ARG"):
            for name in re.findall(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)(?==|\s|$)", value):
                if _SECRETISH.search(name):
                    out.append(f"line {ins['startline'] + 1}: {cmd} {name} looks like a secret baked into the image")
    if len(stages) < 2:
        out.append("not a multi-stage build")
    user = (final_user or "root").split(":")[0]
    if user in ("root", "0"):
        out.append(f"final stage runs as {user!r} (needs a non-root USER)")
    if entrypoint is None:
        out.append("final stage has no ENTRYPOINT")
    else:
        try:
            parsed = json.loads(entrypoint)
            if not (isinstance(parsed, list) and parsed and all(isinstance(p, str) for p in parsed)):
                raise ValueError
        except ValueError:
            out.append(f"ENTRYPOINT {entrypoint!r} is not exec form (a JSON list of strings)")
    runs = " ".join(i["value"] for i in instructions if i["instruction"] == "RUN")
    copies = [i["value"] for i in instructions if i["instruction"] == "COPY"]
    if not any(re.search(r"(^|\s)vlm/?(\s|$)", c) for c in copies):
        out.append("the vlm package source is not copied from the repository")
    if not re.search(r"pip install [^&]*--no-deps \.(\s|$)", runs):
        out.append("the package is not installed from the repository (pip install --no-deps .)")
    if "requirements/lock.txt" not in runs:
        out.append("dependencies are not installed from requirements/lock.txt")
    if "requirements/nodeps.txt" not in runs:
        out.append("requirements/nodeps.txt is not installed")
    return out


def dockerfile_copy_sources(path: str | Path) -> list[str]:
    """Paths a Dockerfile copies from the build context (not from other stages)."""
    from dockerfile_parse import DockerfileParser

    sources: list[str] = []
    for ins in DockerfileParser(path=str(path)).structure:
        if ins["instruction"] != "COPY":
            continue
        parts = [p for p in ins["value"].split() if not p.startswith("--")]
        if any(p.startswith("--from") for p in ins["value"].split()):
            continue
        sources += parts[:-1]
    return sources
