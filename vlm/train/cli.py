"""``vlm train``: run a training stage through :func:`vlm.train.launch.launch` (here, torchrun or a cluster job)."""

from __future__ import annotations

import json

import typer


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train_cmd(
        config: str = typer.Option(..., "--config", "-c", help="pipeline YAML (local path or s3:// URI)"),
        stage: str = typer.Option("pretrain", "--stage", help="pretrain | finetune"),
        data: str = typer.Option("", "--data", help="dataset URI; default <root>/data"),
        output: str = typer.Option("", "--output", help="model artefact URI; default <root>/<stage>/model"),
        init_from: str = typer.Option("", "--init-from", help="model artefact URI to start from"),
        labels: str = typer.Option("", "--labels", help="expert labels URI for model.experts; default train.labels"),
        nproc: int = typer.Option(0, "--nproc", help="launch this many local processes with torchrun "
                                  "(default the stage's nproc; ignored when already under torchrun)"),
        set_: list[str] = typer.Option([], "--set", help="override, e.g. --set train.steps=20"),
    ) -> None:
        """Train a stage (resumes automatically from the latest checkpoint)."""
        import os

        from vlm.config import ConfigError
        from vlm.train.checkpoint import CheckpointError
        from vlm.train.labels import ExpertLabelsError
        from vlm.train.launch import LaunchError, launch, load

        try:
            cfg = load(config, set_)
        except ConfigError as exc:
            typer.secho(str(exc), fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None
        try:
            summary = launch(cfg, stage, data, output, init_from, labels, config_uri=config, overrides=set_,
                             nproc=nproc)
        except (ExpertLabelsError, CheckpointError) as exc:
            typer.secho(str(exc), fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None
        except LaunchError as exc:
            raise typer.Exit(exc.returncode) from None
        if int(os.environ.get("RANK", "0")) == 0:
            typer.echo(json.dumps(summary.to_dict(), indent=2, default=str))
