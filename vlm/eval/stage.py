"""The evaluation stage with simple-typed arguments, for a kfp component to wrap."""

from __future__ import annotations

import json
from typing import Any

from vlm.eval.config import EvalConfig


def evaluate_stage(model_uri: str, data_uri: str, tasks: str = "", output: str = "", run_id: str = "",
                   eval_config_json: str = "", experiment: str = "vlm-eval", tracking_uri: str = "") -> dict[str, Any]:
    """Evaluate and return the JSON-able summary (``metrics``, ``n``, ``report`` (HTML URI), ``output``, ``run_id``).

    ``eval_config_json``: the pipeline config's ``eval`` section as JSON; ``tasks`` (comma-separated) overrides it.
    A component emits ``summary["metrics"]`` as kfp Metrics and copies ``summary["report"]`` (a self-contained
    HTML file; ``report.md`` sits next to it) into its HTML/Markdown output artefact.
    """
    from vlm.eval.runner import evaluate

    cfg = EvalConfig.model_validate(json.loads(eval_config_json) if eval_config_json else {})
    if tasks:
        cfg = cfg.model_copy(update={"tasks": EvalConfig(tasks=[t.strip() for t in tasks.split(",") if t.strip()]).tasks})
    return evaluate(model_uri, data_uri, cfg, run_id or None, output=output or None, experiment=experiment,
                    tracking_uri=tracking_uri or None).to_dict()
