"""Register model artefacts as MLflow pyfunc models and promote versions through a gate.

Naming on a registered model version:

- alias ``challenger``: the newest registered version; alias ``champion``: the one serving;
- tags ``vlm.metric.<name>``: the evaluation metrics the gate compares;
- lineage tags ``vlm.model_uri``, ``vlm.data_manifest_sha256``, ``vlm.labels_version``,
  ``vlm.training_run_id``, ``vlm.model_config`` ... (see :func:`lineage_tags`);
- tags ``vlm.gate.*``: the outcome of the last promotion decision and why.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from vlm import storage, tracking
from vlm.registry.config import GateConfig

log = logging.getLogger(__name__)

CHALLENGER = "challenger"
CHAMPION = "champion"
METRIC_TAG = "vlm.metric."
GATE_TAG = "vlm.gate."
TAG_MAX = 5000  # MLflow's limit on a tag value

# Distributions the pyfunc needs at load time; pinned to the versions installed here.
RUNTIME_PACKAGES = ("mlflow", "torch", "transformers", "safetensors", "accelerate", "gguf", "peft", "pillow", "numpy",
                    "pandas", "pydantic", "pyyaml", "minio", "einops")


class RegistryError(RuntimeError):
    """A registration or promotion request cannot be carried out (unknown version, bad artefact...)."""


@dataclass(frozen=True)
class Champion:
    """The version holding alias ``champion`` and its ``vlm.metric.*`` tags."""

    name: str
    version: str
    metrics: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Registration:
    """A newly registered version (alias ``challenger``) and the promotion gate's dry run on it
    (``registration.json`` beside the run's config; ``version`` is "" when the registry is off)."""

    name: str
    version: str
    gate_passed: bool
    reasons: list[str]
    comparison: dict[str, Any] = field(default_factory=dict)  # see :func:`evaluate_gate`

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Promotion:
    """A promotion decision: whether ``version`` became champion, why, and who holds the alias now.
    ``mode``: ``gate`` or ``forced``; ``comparison`` is :func:`evaluate_gate`'s plus ``champion_version``."""

    name: str
    version: str
    promoted: bool
    reasons: list[str]
    previous_champion: str | None
    champion: str | None
    comparison: dict[str, Any]
    mode: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------- helpers
def pip_requirements(extra: list[str] | None = None) -> list[str]:
    """Explicit, pinned requirements of the logged pyfunc (no slow inference by MLflow)."""
    reqs = []
    for dist in RUNTIME_PACKAGES:
        try:
            reqs.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            continue
    try:
        reqs.append(f"vlm-platform=={metadata.version('vlm-platform')}")
    except metadata.PackageNotFoundError:
        from vlm import __version__

        reqs.append(f"vlm-platform=={__version__}")
    return reqs + list(extra or [])


def _clean_metrics(metrics: Mapping[str, Any] | None) -> dict[str, float]:
    out = {}
    for k, v in (metrics or {}).items():
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise RegistryError(f"metric {k!r} is not a number: {v!r}") from None
        if not math.isfinite(f):
            raise RegistryError(f"metric {k!r} is not finite: {v!r}")
        out[str(k)] = f
    return out


def metrics_from_tags(tags: Mapping[str, str]) -> dict[str, float]:
    """The ``vlm.metric.*`` tags of a model version as floats."""
    out = {}
    for k, v in tags.items():
        if k.startswith(METRIC_TAG):
            try:
                out[k[len(METRIC_TAG):]] = float(v)
            except ValueError:
                log.warning("ignoring non-numeric metric tag %s=%r", k, v)
    return out


def _fetch_artefact(model_uri: str, dest: Path) -> Path:
    """A local copy of a model artefact directory (validated: it must hold vlm_config.json)."""
    local = storage.local_copy(model_uri, cache_dir=dest) if storage.is_s3(model_uri) else Path(storage._local(model_uri))
    if not local.is_dir():
        raise RegistryError(f"model artefact {model_uri!r} is not a directory (expected vlm_config.json + "
                            "adapter.safetensors)")
    if not (local / "vlm_config.json").exists():
        raise RegistryError(f"model artefact {model_uri!r} has no vlm_config.json; is it a model directory?")
    return local


def _truncate(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, separators=(",", ":"))
    return text if len(text) <= TAG_MAX else text[: TAG_MAX - 3] + "..."


def lineage_tags(model_uri: str, data_uri: str | None = None, labels_uri: str | None = None,
                 training_run_id: str | None = None, config_uri: str | None = None) -> dict[str, str]:
    """Tags tying a model version to what produced it.

    ``data_uri``: a dataset URI (its ``manifest.json`` is hashed) or the manifest itself; ``labels_uri``: an
    expert-labels URI (its ``labels.json`` gives the experts' versions); ``config_uri``: the pipeline config.
    """
    tags: dict[str, str] = {"vlm.model_uri": model_uri}
    cfg_uri = storage.join(model_uri, "vlm_config.json")
    if storage.exists(cfg_uri):
        tags["vlm.model_config"] = _truncate(json.loads(storage.read_text(cfg_uri)))
    if data_uri:
        manifest = data_uri if data_uri.endswith(".json") else storage.join(data_uri, "manifest.json")
        if not storage.exists(manifest):
            raise RegistryError(f"no data manifest at {manifest}")
        tags["vlm.data_uri"] = data_uri
        tags["vlm.data_manifest_sha256"] = storage.sha256_uri(manifest)
    if labels_uri:
        labels = labels_uri if labels_uri.endswith(".json") else storage.join(labels_uri, "labels.json")
        if not storage.exists(labels):
            raise RegistryError(f"no labels.json at {labels}")
        info = json.loads(storage.read_text(labels))
        experts = info.get("experts", info) if isinstance(info, dict) else info
        items = experts.items() if isinstance(experts, dict) else enumerate(experts if isinstance(experts, list) else [])
        versions = []
        for key, e in items:
            if isinstance(e, dict):
                versions.append(f"{e.get('name', key)}:{e.get('version', '?')}")
        tags["vlm.labels_uri"] = labels_uri
        tags["vlm.labels_sha256"] = storage.sha256_uri(labels)
        tags["vlm.labels_version"] = _truncate(",".join(sorted(versions)) or tags["vlm.labels_sha256"][:12])
    if training_run_id:
        tags["vlm.training_run_id"] = training_run_id
    if config_uri:
        text = storage.read_text(config_uri)
        tags["vlm.pipeline_config_sha256"] = storage.sha256_bytes(text.encode())
        tags["vlm.pipeline_config"] = _truncate(text)
    return tags


# --------------------------------------------------------------------------------------- registration
def register_model(model_uri: str, name: str, metrics: Mapping[str, float] | None = None,
                   tags: Mapping[str, str] | None = None, run_id: str | None = None, *,
                   experiment: str = "vlm-registry", tracking_uri: str | None = None,
                   extra_pip_requirements: list[str] | None = None) -> str:
    """Log ``model_uri`` (a model artefact dir, local or S3) as a pyfunc and register a new version of ``name``.

    The pyfunc is logged into ``run_id`` (e.g. the training run) or a new ``register`` stage run; the version
    gets alias ``challenger``, tags ``vlm.metric.<k>`` for ``metrics`` and the given (lineage) ``tags``.
    Returns the new version number as a string.
    """
    import mlflow
    from mlflow import MlflowClient

    from vlm.models import pyfunc

    if not name or not name.strip():
        raise RegistryError("a registered model name is required")
    tracking.configure(tracking_uri)
    clean = _clean_metrics(metrics)
    client = MlflowClient()
    if run_id is None:
        run_id = tracking.create_stage_run("register", experiment, run_name=f"register-{name}")
    with tempfile.TemporaryDirectory(prefix="vlm-register-") as tmp:
        local = _fetch_artefact(model_uri, Path(tmp))
        # start_run(run_id) refuses a run of another experiment than the process's active one
        mlflow.set_experiment(experiment_id=client.get_run(run_id).info.experiment_id)
        active = mlflow.active_run()
        ctx = (mlflow.start_run(run_id=run_id, nested=active is not None)
               if active is None or active.info.run_id != run_id else _nullcontext())
        with ctx:
            info = mlflow.pyfunc.log_model(
                name="model", python_model=str(Path(__file__).with_name("pyfunc_model.py")),
                artifacts={pyfunc.ARTIFACT_KEY: str(local)}, pip_requirements=pip_requirements(extra_pip_requirements),
                signature=pyfunc.signature(), input_example=pyfunc.input_example(),
                metadata={"vlm_model_uri": model_uri, "vlm_input": pyfunc.INPUT_CONTRACT})
    version_tags = {**{f"{METRIC_TAG}{k}": repr(v) for k, v in clean.items()},
                    **{str(k): _truncate(str(v)) for k, v in (tags or {}).items()}, "vlm.source_run_id": run_id}
    mv = mlflow.register_model(info.model_uri, name, tags=version_tags)
    version = str(mv.version)
    client.set_registered_model_alias(name, CHALLENGER, version)
    usage = (f"Use: mlflow.pyfunc.load_model('models:/{name}/{version}').predict({{'image': ['photo.jpg'], "
             f"'question': ['What colour is the shape?']}}); input: {pyfunc.INPUT_CONTRACT}.")
    metrics_line = ("metrics: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(clean.items())) + "\n\n") if clean else ""
    client.update_model_version(name, version, description=metrics_line + usage)
    client.set_tag(run_id, "vlm.registered_model", f"{name}/{version}")
    log.info("registered %s version %s (alias %s) from %s", name, version, CHALLENGER, model_uri)
    return version


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


# --------------------------------------------------------------------------------------- promotion
def _alias_version(client, name: str, alias: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def _get_version(client, name: str, version: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, str(version))
    except MlflowException as exc:
        raise RegistryError(f"model {name!r} has no version {version!r}: {exc.message}") from None


def evaluate_gate(candidate: Mapping[str, float], champion: Mapping[str, float] | None, gate: GateConfig
                  ) -> tuple[bool, list[str], dict[str, Any]]:
    """Pure gate decision: ``(passed, reasons, comparison)``; ``champion=None`` means there is none."""
    reasons: list[str] = []
    passed = True
    for metric, minimum in gate.thresholds.items():
        if metric not in candidate:
            passed = False
            reasons.append(f"{metric} missing (needs >= {minimum})")
        elif candidate[metric] < minimum:
            passed = False
            reasons.append(f"{metric}={candidate[metric]:.6g} below minimum {minimum:.6g}")
    for metric, maximum in gate.maximums.items():
        if metric not in candidate:
            passed = False
            reasons.append(f"{metric} missing (needs <= {maximum})")
        elif candidate[metric] > maximum:
            passed = False
            reasons.append(f"{metric}={candidate[metric]:.6g} above maximum {maximum:.6g}")
    primary = gate.primary_metric
    comparison: dict[str, Any] = {"primary_metric": primary, "candidate": candidate.get(primary)}
    if primary not in candidate:
        passed = False
        reasons.append(f"primary metric {primary} missing")
    elif champion is None:
        reasons.append("no current champion")
    elif primary not in champion:
        reasons.append(f"champion has no {primary}; not compared")
    else:
        sign = 1.0 if gate.higher_is_better else -1.0
        delta = sign * (candidate[primary] - champion[primary])
        comparison.update(champion=champion[primary], delta=delta)
        beats = delta >= gate.min_delta and delta > 0
        if not beats:
            passed = False
            reasons.append(f"{primary}={candidate[primary]:.6g} does not beat champion {champion[primary]:.6g} "
                           f"by {gate.min_delta:g} (delta {delta:+.6g})")
        else:
            reasons.append(f"{primary} beats champion by {delta:+.6g}")
    return passed, reasons, comparison


def _set_champion(client, name: str, version: str, previous) -> None:
    client.set_registered_model_alias(name, CHAMPION, version)
    if previous is not None and str(previous.version) != version:
        client.set_model_version_tag(name, str(previous.version), f"{GATE_TAG}replaced_by", version)


def _record(client, decision: Promotion) -> None:
    tags = {"passed": str(decision.promoted).lower(), "reasons": "; ".join(decision.reasons),
            "previous_champion": decision.previous_champion or "", "mode": decision.mode,
            "decision": decision.to_dict()}
    for key, value in tags.items():
        client.set_model_version_tag(decision.name, decision.version, f"{GATE_TAG}{key}", _truncate(value))


def promote_if_better(name: str, version: str | int, gate: GateConfig, *,
                      tracking_uri: str | None = None) -> Promotion:
    """Move alias ``champion`` to ``version`` when the gate passes; record the comparison in ``vlm.gate.*`` tags."""
    from mlflow import MlflowClient

    tracking.configure(tracking_uri)
    client = MlflowClient()
    version = str(version)
    candidate = _get_version(client, name, version)
    champion = _alias_version(client, name, CHAMPION)
    previous = str(champion.version) if champion is not None else None
    if previous == version:
        return Promotion(name=name, version=version, promoted=False, reasons=["already champion"],
                         previous_champion=previous, champion=version, comparison={}, mode="gate")
    cand_metrics = metrics_from_tags(candidate.tags)
    champ_metrics = metrics_from_tags(champion.tags) if champion is not None else None
    passed, reasons, comparison = evaluate_gate(cand_metrics, champ_metrics, gate)
    comparison["champion_version"] = previous
    decision = Promotion(name=name, version=version, promoted=passed, reasons=reasons, previous_champion=previous,
                         champion=version if passed else previous, comparison=comparison, mode="gate")
    if passed:
        _set_champion(client, name, version, champion)
    _record(client, decision)
    log.info("%s v%s %s: %s", name, version, "promoted to champion" if passed else "not promoted", "; ".join(reasons))
    return decision


def promote(name: str, version: str | int, gate: GateConfig | None = None, force: bool = False, *,
            tracking_uri: str | None = None) -> Promotion:
    """Promote by hand: through the gate (default config when ``gate`` is None), or unconditionally with ``force``."""
    if not force:
        return promote_if_better(name, version, gate or GateConfig(), tracking_uri=tracking_uri)
    from mlflow import MlflowClient

    tracking.configure(tracking_uri)
    client = MlflowClient()
    version = str(version)
    _get_version(client, name, version)
    champion = _alias_version(client, name, CHAMPION)
    previous = str(champion.version) if champion is not None else None
    decision = Promotion(name=name, version=version, promoted=True, reasons=["forced by hand (gate skipped)"],
                         previous_champion=previous, champion=version, comparison={}, mode="forced")
    _set_champion(client, name, version, champion)
    _record(client, decision)
    return decision


def champion(name: str, *, tracking_uri: str | None = None) -> Champion | None:
    """The version holding alias ``champion``, or None (no such model or alias)."""
    from mlflow import MlflowClient

    tracking.configure(tracking_uri)
    found = _alias_version(MlflowClient(), name, CHAMPION)
    if found is None:
        return None
    return Champion(name=name, version=str(found.version), metrics=metrics_from_tags(found.tags))


def list_versions(name: str, *, tracking_uri: str | None = None) -> list[dict[str, Any]]:
    """Versions of ``name`` (newest first) with their aliases, metrics, gate outcome and source run."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    tracking.configure(tracking_uri)
    client = MlflowClient()
    try:
        registered = client.get_registered_model(name)
    except MlflowException:
        raise RegistryError(f"no registered model named {name!r}") from None
    aliases: dict[str, list[str]] = {}
    for alias, v in (registered.aliases or {}).items():
        aliases.setdefault(str(v), []).append(alias)
    rows = []
    for mv in client.search_model_versions(f"name='{name}'"):
        rows.append({"version": str(mv.version), "aliases": sorted(aliases.get(str(mv.version), [])),
                     "metrics": metrics_from_tags(mv.tags), "gate_passed": mv.tags.get(f"{GATE_TAG}passed"),
                     "run_id": mv.run_id or mv.tags.get("vlm.source_run_id"), "created": mv.creation_timestamp,
                     "model_uri": mv.tags.get("vlm.model_uri")})
    return sorted(rows, key=lambda r: int(r["version"]), reverse=True)
