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


def input_error(exc: BaseException) -> str | None:
    """The one-line message for bad input (a damaged shard or dataset: :class:`vlm.data.format.FormatError`),
    None for anything else. Torch's DataLoader re-raises a worker's error with its traceback in the message:
    only the error's own last line is kept, without its class name."""
    import re

    from vlm.data.format import FormatError

    if not isinstance(exc, FormatError):
        return None
    text = str(exc).strip()
    if "Traceback (most recent call last)" in text:
        text = re.sub(r"^[\w.]+: ", "", text.splitlines()[-1])
    return text
