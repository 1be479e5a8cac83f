"""Registration + promotion with simple-typed arguments, for a kfp component to wrap."""

from __future__ import annotations

import json
from typing import Any

from vlm.registry.config import GateConfig


def register_stage(model_uri: str, name: str, metrics_json: str = "{}", run_id: str = "", data_uri: str = "",
                   labels_uri: str = "", config_uri: str = "", gate_json: str = "", promote: bool = True,
                   experiment: str = "vlm-registry", tracking_uri: str = "") -> dict[str, Any]:
    """Register ``model_uri`` as a new version of ``name`` (alias ``challenger``) and, with ``promote``, run the gate.

    ``metrics_json``: flat ``{metric: value}`` or an evaluation summary with a ``metrics`` key; ``gate_json``:
    the ``registry.gate`` config section. Returns ``{name, version, promoted, reasons, champion, ...}``.
    """
    from vlm.registry.mlflow_registry import lineage_tags, promote_if_better, register_model

    metrics = json.loads(metrics_json or "{}")
    metrics = metrics.get("metrics", metrics) if isinstance(metrics, dict) else {}
    metrics = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    tags = lineage_tags(model_uri, data_uri or None, labels_uri or None, run_id or None, config_uri or None)
    version = register_model(model_uri, name, metrics, tags, run_id or None, experiment=experiment,
                             tracking_uri=tracking_uri or None)
    out: dict[str, Any] = {"name": name, "version": version, "promoted": False, "reasons": [], "champion": None}
    if promote:
        gate = GateConfig.model_validate(json.loads(gate_json) if gate_json else {})
        out.update(promote_if_better(name, version, gate, tracking_uri=tracking_uri or None).to_dict())
    return out
