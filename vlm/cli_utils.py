"""Small helpers shared by the stage CLIs."""

from __future__ import annotations

from pathlib import Path

import typer


def config_or_exit(path: Path | None):
    """The pipeline config at ``path`` (defaults when None); on an invalid config print why and exit 1."""
    from vlm.config import ConfigError, PipelineConfig, load_config

    if path is None:
        return PipelineConfig()
    try:
        return load_config(path)
    except ConfigError as exc:
        typer.secho(str(exc), fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
