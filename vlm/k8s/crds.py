"""The vendored CustomResourceDefinitions (data under ``crds/``) and what we do with them offline.

- ``kubeflow.org_pytorchjobs.yaml``: Training Operator v1.9.4 (the ``kubeflow-training`` SDK pin), PyTorchJob;
- ``trainer.kubeflow.org_trainjobs.yaml``: Kubeflow Trainer v2.3.0 (the ``kubeflow-trainer-api`` pin), TrainJob.

Both are byte-for-byte the upstream ``manifests/base/crds`` files at those tags (Apache-2.0). We validate a
manifest against the CRD's openAPIV3Schema before sending it (a cluster would prune unknown fields silently),
and :func:`for_server` adapts a CRD to an older API server: CEL rules (``x-kubernetes-validations``) exist from
Kubernetes 1.25, and v1.20 also refuses the empty-string defaults newer core types carry
(``name: {default: ""}`` in object references: "Invalid value: null", in Trainer's CRDs); below 1.25 both are
stripped (a list-map key that loses its default becomes required instead; the defaults only fill ``""`` into
absent names, and the controllers' webhooks check the rules anyway).
"""

from __future__ import annotations

import copy
import functools
from importlib import resources
from typing import Any

import yaml

FILES = {
    "PyTorchJob": "kubeflow.org_pytorchjobs.yaml",
    "TrainJob": "trainer.kubeflow.org_trainjobs.yaml",
}
CEL_MIN_MINOR = 25  # x-kubernetes-validations: alpha in 1.23 (gated), beta and on by default from 1.25


@functools.lru_cache(maxsize=None)
def _load(kind: str) -> dict[str, Any]:
    text = resources.files("vlm.k8s").joinpath("crds", FILES[kind]).read_text()
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C loader reads the 0.6 MB file in ~0.1 s
    return yaml.load(text, Loader=loader)


def crd(kind: str) -> dict[str, Any]:
    """A copy of the vendored CRD for ``kind`` (``PyTorchJob`` or ``TrainJob``)."""
    return copy.deepcopy(_load(kind))


def schema(kind: str) -> dict[str, Any]:
    """The openAPIV3Schema of the CRD's (only) served version; shared, do not modify."""
    (version,) = [v for v in _load(kind)["spec"]["versions"] if v.get("served", True)]
    return version["schema"]["openAPIV3Schema"]


def for_server(crd_obj: dict[str, Any], minor: int) -> dict[str, Any]:
    """``crd_obj`` for an API server of version 1.<minor>: kept as is from 1.25; below, without CEL rules and
    empty-string defaults."""
    if minor >= CEL_MIN_MINOR:
        return crd_obj
    return _for_old_server(crd_obj)


def _for_old_server(node: Any) -> Any:
    if isinstance(node, dict):
        keys = node.get("x-kubernetes-list-map-keys") or []
        items = node.get("items") if isinstance(node.get("items"), dict) else {}
        defaulted = [k for k in keys if (items.get("properties") or {}).get(k, {}).get("default") == ""]
        if defaulted:  # a list-map key needs a default or to be required: required it is
            items = {**items, "required": sorted({*(items.get("required") or []), *defaulted})}
            node = {**node, "items": items}
        return {k: _for_old_server(v) for k, v in node.items()
                if k != "x-kubernetes-validations" and not (k == "default" and v == "")}
    if isinstance(node, list):
        return [_for_old_server(v) for v in node]
    return node


def problems(manifest: dict[str, Any], kind: str, skip: frozenset[str] = frozenset()) -> list[str]:
    """Schema violations and unknown fields of ``manifest`` against the ``kind`` CRD ([] when valid).

    Fields named in ``skip`` (e.g. pod templates, validated as core Pods instead) are not descended into.
    """
    import jsonschema

    found = [f"{'.'.join(map(str, e.path)) or '<root>'}: {e.message}"
             for e in sorted(jsonschema.Draft7Validator(schema(kind)).iter_errors(manifest), key=lambda e: list(e.path))]
    return found + _unknown_fields(manifest, schema(kind), "", skip)


def _unknown_fields(obj: Any, node: dict[str, Any], path: str, skip: frozenset[str]) -> list[str]:
    """Structural schemas prune unknown fields silently on a cluster; we report them instead."""
    out: list[str] = []
    if isinstance(obj, dict) and "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        props = node["properties"]
        for key, value in obj.items():
            where = f"{path + '.' if path else ''}{key}"
            if key not in props:
                if node.get("additionalProperties") is None:
                    out.append(f"{where}: unknown field")
            elif key not in skip:
                out += _unknown_fields(value, props[key], where, skip)
    elif isinstance(obj, dict) and isinstance(node.get("additionalProperties"), dict):
        for key, value in obj.items():
            out += _unknown_fields(value, node["additionalProperties"], f"{path}.{key}", skip)
    elif isinstance(obj, list) and isinstance(node.get("items"), dict):
        for i, value in enumerate(obj):
            out += _unknown_fields(value, node["items"], f"{path}[{i}]", skip)
    return out
