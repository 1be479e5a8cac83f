"""The ``vlm`` command line: one command per pipeline stage, over plain functions in ``vlm.*``.

Stage commands live next to their stage (``vlm/<stage>/cli.py``) and are listed in ``COMMAND_MODULES``;
each such module exposes ``register(app)``. Heavy imports (torch, mlflow) happen inside commands so that
``vlm --help`` stays fast.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import typer

from vlm import __version__

app = typer.Typer(name="vlm", help="Train vision-language models: shard -> experts -> pretrain -> align -> evaluate -> register.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
config_app = typer.Typer(help="Validate config files and print the config JSON Schema.", no_args_is_help=True)
app.add_typer(config_app, name="config")

# Modules that add stage commands; each defines register(app: typer.Typer).
COMMAND_MODULES: list[str] = [
    "vlm.pipeline_cli",
    "vlm.train.cli",
    "vlm.align.cli",
    "vlm.data.cli",
    "vlm.experts.cli",
    "vlm.registry.cli",
    "vlm.eval.cli",
    "vlm.models.cli",
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"vlm-platform {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    log_level: str = typer.Option("INFO", "--log-level", envvar="VLM_LOG_LEVEL", help="DEBUG, INFO, WARNING or ERROR."),
) -> None:
    from vlm.logs import setup_logging

    setup_logging(log_level.upper())


@config_app.command("validate")
def config_validate(file: Path = typer.Argument(..., help="YAML config file (local path or s3:// URI).")) -> None:
    """Validate a config file: exit 0 when valid, 1 with each bad field's path and allowed values otherwise."""
    from vlm.config import ConfigError, load_config

    try:
        cfg = load_config(file)
    except ConfigError as exc:
        typer.secho(str(exc), fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    typer.secho(f"{file}: valid (pipeline {cfg.name!r}, adapter {cfg.model.adapter.type!r})", fg=typer.colors.GREEN)


@config_app.command("schema")
def config_schema(output: Path | None = typer.Option(None, "--output", "-o", help="Write to this file instead of stdout.")) -> None:
    """Print the JSON Schema of the pipeline config (for editors and CI)."""
    from vlm.config import json_schema

    text = json.dumps(json_schema(), indent=2)
    if output:
        output.write_text(text + "\n")
    else:
        typer.echo(text)


@config_app.command("show")
def config_show(file: Path = typer.Argument(..., help="YAML config file.")) -> None:
    """Print a config with every default filled in."""
    from vlm.config import ConfigError, dump_config, load_config

    try:
        typer.echo(dump_config(load_config(file)))
    except ConfigError as exc:
        typer.secho(str(exc), fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None


def _register_all() -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(app)


_register_all()


def main() -> None:
    from vlm.train import threads

    threads.wait_policy()  # before torch loads: OpenMP threads of every command, and of the steps it starts, sleep
    try:
        app()
    except KeyboardInterrupt:
        typer.secho("interrupted", fg=typer.colors.YELLOW, err=True)
        sys.exit(130)
    except Exception as exc:
        from vlm.cli_utils import input_error

        message = input_error(exc)
        if message is None:
            raise
        typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
