"""``vlm register``, ``vlm promote`` and ``vlm models list``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from vlm.cli_utils import config_or_exit

if TYPE_CHECKING:
    from vlm.registry.mlflow_registry import Promotion

models_app = typer.Typer(help="Inspect registered models.", no_args_is_help=True)


def _load_metrics(spec: str | None) -> dict[str, float]:
    """Inline JSON, or a JSON file/URI: a flat dict or an evaluation summary with a ``metrics`` key."""
    if not spec:
        return {}
    from vlm import storage

    text = spec if spec.lstrip().startswith("{") else storage.read_text(spec)
    data = json.loads(text)
    if isinstance(data, dict) and isinstance(data.get("metrics"), dict):
        data = data["metrics"]
    if not isinstance(data, dict):
        raise typer.BadParameter("metrics must be a JSON object of name -> number")
    return {k: v for k, v in data.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _fail(exc: Exception) -> None:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1) from None


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")

    @app.command("register")
    def register_cmd(
        model_uri: str = typer.Argument(..., help="Model artefact dir (local or s3://): vlm_config.json + adapter."),
        name: str = typer.Option("", "--name", help="Registered model name (default: from config, vlm-<adapter>)."),
        metrics: str = typer.Option("", "--metrics", help="Inline JSON or a JSON file/URI (e.g. the eval summary)."),
        run_id: str = typer.Option("", "--run-id", help="Log the pyfunc into this run (e.g. the training run)."),
        data_uri: str = typer.Option("", "--data", help="Dataset URI (its manifest.json is hashed into a tag)."),
        labels_uri: str = typer.Option("", "--labels", help="Expert labels URI (labels.json versions -> tag)."),
        config: Path | None = typer.Option(None, "--config", help="Pipeline config (name, gate, tracking)."),
        promote: bool | None = typer.Option(None, "--promote/--no-promote", help="Run the gate (default: config)."),
    ) -> None:
        """Log MODEL_URI as an MLflow pyfunc, register a new version with alias 'challenger' (and gate it)."""
        from vlm import tracking
        from vlm.registry import mlflow_registry as reg

        cfg = config_or_exit(config)
        tracking.configure(cfg.tracking.uri)
        model_name = name or cfg.registered_model_name()
        try:
            tags = reg.lineage_tags(model_uri, data_uri or None, labels_uri or None, run_id or None,
                                    str(config) if config else None)
            version = reg.register_model(model_uri, model_name, _load_metrics(metrics), tags, run_id or None,
                                         experiment=cfg.experiment_name(),
                                         extra_pip_requirements=cfg.registry.extra_pip_requirements)
        except (reg.RegistryError, FileNotFoundError, ValueError) as exc:
            _fail(exc)
        typer.secho(f"registered {model_name} version {version} (alias {reg.CHALLENGER})", fg=typer.colors.GREEN)
        if promote if promote is not None else cfg.registry.auto_promote:
            _show_decision(reg.promote_if_better(model_name, version, cfg.registry.gate))

    @app.command("promote")
    def promote_cmd(
        name: str = typer.Argument(..., help="Registered model name."),
        version: str = typer.Option(..., "--version", help="Version to promote to 'champion'."),
        force: bool = typer.Option(False, "--force", help="Skip the gate."),
        config: Path | None = typer.Option(None, "--config", help="Pipeline config with the registry.gate section."),
    ) -> None:
        """Move alias 'champion' to VERSION if the gate passes (or unconditionally with --force)."""
        from vlm import tracking
        from vlm.registry import mlflow_registry as reg

        cfg = config_or_exit(config)
        tracking.configure(cfg.tracking.uri)
        try:
            decision = reg.promote(name, version, cfg.registry.gate, force=force)
        except reg.RegistryError as exc:
            _fail(exc)
        _show_decision(decision)
        if not decision.promoted and decision.reasons != ["already champion"]:
            raise typer.Exit(2)


def _show_decision(decision: Promotion) -> None:
    color = typer.colors.GREEN if decision.promoted else typer.colors.YELLOW
    verb = "promoted to champion" if decision.promoted else "not promoted"
    typer.secho(f"{decision.name} v{decision.version} {verb} (champion: v{decision.champion}): "
                + "; ".join(decision.reasons), fg=color)


@models_app.command("list")
def models_list(
    name: str = typer.Argument(..., help="Registered model name."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    config: Path | None = typer.Option(None, "--config", help="Pipeline config (tracking URI)."),
) -> None:
    """Show the versions of NAME with their aliases and key metrics."""
    from rich.console import Console
    from rich.table import Table

    from vlm import tracking
    from vlm.registry import mlflow_registry as reg

    cfg = config_or_exit(config)
    tracking.configure(cfg.tracking.uri)
    try:
        rows = reg.list_versions(name)
    except reg.RegistryError as exc:
        _fail(exc)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    keys = sorted({k for r in rows for k in r["metrics"]})[:8]
    table = Table(title=f"{name}: {len(rows)} version(s)")
    for col in ["version", "aliases", *keys, "gate", "run"]:
        table.add_column(col)
    for r in rows:
        table.add_row(r["version"], ",".join(r["aliases"]), *[f"{r['metrics'][k]:.4g}" if k in r["metrics"] else ""
                                                               for k in keys],
                      r["gate_passed"] or "", (r["run_id"] or "")[:12])
    Console(width=200).print(table)
