"""The pipeline config: one YAML file per run, validated by pydantic v2.

Each stage owns its section (``vlm/<stage>/config.py``); this module composes them, loads YAML, applies
the few environment overrides (endpoints and secrets only) and turns validation errors into messages that
name the field path and the allowed values.
"""

from __future__ import annotations

import difflib
import json
import os
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError

from vlm.align.config import AlignConfig
from vlm.configbase import Section
from vlm.data.config import ShardConfig
from vlm.eval.config import EvalConfig
from vlm.experts.config import ExpertsConfig
from vlm.k8s.config import ClusterConfig
from vlm.models.config import ModelConfig
from vlm.registry.config import GateConfig, RegistryConfig
from vlm.train.config import TrainConfig

__all__ = ["PipelineConfig", "ConfigError", "load_config", "parse_config", "TrackingConfig", "RegistryConfig",
           "GateConfig", "Section"]


class TrackingConfig(Section):
    """Where runs are tracked. ``MLFLOW_TRACKING_URI`` in the environment overrides ``uri``."""

    uri: str = Field("sqlite:///mlflow.db", description="MLflow tracking URI (local sqlite by default)")
    experiment: str = Field("", description="MLflow experiment; empty = the pipeline name")


class PipelineConfig(Section):
    """Everything one pipeline run needs."""

    name: str = Field("vlm-quickstart", pattern=r"^[a-z0-9][a-z0-9-]*$")
    root: str = Field("runs", description="run root URI: local folder or s3://bucket/prefix")
    tracking: TrackingConfig = TrackingConfig()
    data: ShardConfig = ShardConfig()
    experts: ExpertsConfig = ExpertsConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    align: AlignConfig = AlignConfig()
    eval: EvalConfig = EvalConfig()
    registry: RegistryConfig = RegistryConfig()
    cluster: ClusterConfig = ClusterConfig()

    def registered_model_name(self) -> str:
        return self.registry.model_name or f"vlm-{self.model.adapter.type}"

    def experiment_name(self) -> str:
        return self.tracking.experiment or self.name


class ConfigError(ValueError):
    """A config file is missing, unparsable or invalid. The message names each offending field."""


# Environment variables that may override config values: endpoints and secrets only.
ENV_OVERRIDES: dict[str, tuple[str, ...]] = {
    "MLFLOW_TRACKING_URI": ("tracking", "uri"),
}


def _allowed_values(model: type[Section], loc: tuple[Any, ...]) -> list[str] | None:
    """Walk the pydantic model along ``loc`` and list a Literal field's allowed values, if any."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return None
        current = _unwrap(fields[part].annotation)
    if typing.get_origin(current) is Literal:
        return [repr(v) for v in typing.get_args(current)]
    return None


def _unwrap(annotation: Any) -> Any:
    """Strip Optional / list[...] so nested models and Literals can be inspected."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _unwrap(args[0]) if len(args) == 1 else annotation
    if origin in (list, tuple, set):
        args = typing.get_args(annotation)
        return _unwrap(args[0]) if args else annotation
    return annotation


def _field_names(model: type[Section], loc: tuple[Any, ...]) -> list[str]:
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return []
        current = _unwrap(fields[part].annotation)
    return list(getattr(current, "model_fields", {}) or {})


def format_errors(exc: ValidationError, model: type[Section] = PipelineConfig, source: str = "config") -> str:
    lines = [f"{source}: {exc.error_count()} invalid field(s)"]
    for err in exc.errors():
        loc = tuple(err["loc"])
        path = ".".join(str(p) for p in loc) or "<root>"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            known = _field_names(model, loc[:-1])
            hint = difflib.get_close_matches(str(loc[-1]), known, n=1)
            msg = "unknown field" + (f" (did you mean {hint[0]!r}?)" if hint else "")
            if known:
                msg += f"; allowed fields: {', '.join(known)}"
        else:
            allowed = _allowed_values(model, loc)
            if allowed and err["type"] != "literal_error":
                msg += f"; allowed values: {', '.join(allowed)}"
            if "input" in err and err["type"] != "missing":
                msg += f" (got {err['input']!r})"
        lines.append(f"  {path}: {msg}")
    return "\n".join(lines)


def set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``data["a"]["b"]["c"] = value`` for ``dotted`` "a.b.c", creating the missing levels."""
    *parents, leaf = dotted.split(".")
    node = data
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value


def parse_config(data: dict[str, Any] | None, source: str = "config") -> PipelineConfig:
    """Validate a dict (e.g. parsed YAML) into a PipelineConfig, applying environment overrides."""
    data = json.loads(json.dumps(data or {}))  # deep copy, plain types only
    for env, path in ENV_OVERRIDES.items():
        value = os.environ.get(env)
        if value:
            set_path(data, ".".join(path), value)
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_errors(exc, PipelineConfig, source)) from None


def load_config(path: str | os.PathLike) -> PipelineConfig:
    """Load and validate a YAML config file (local path or S3 URI)."""
    from vlm import storage

    try:
        text = storage.read_text(path)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    return parse_config(data, source=str(path))


def dump_config(cfg: PipelineConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def json_schema() -> dict[str, Any]:
    return PipelineConfig.model_json_schema()


def default_config_path() -> Path:
    return Path(__file__).resolve().parent.parent / "configs" / "quickstart.yaml"
