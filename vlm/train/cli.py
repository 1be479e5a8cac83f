"""``vlm train``: run a training stage in this process or launch N local processes with torchrun."""

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
                                  "(default train.nproc; ignored when already under torchrun)"),
        set_: list[str] = typer.Option([], "--set", help="override, e.g. --set train.steps=20"),
    ) -> None:
        """Train a stage (resumes automatically from the latest checkpoint)."""
        import os

        from vlm.train import threads

        threads.wait_policy()  # takes effect only if torch is not loaded yet
        from vlm.config import ConfigError
        from vlm.train.launch import launch_local, load

        try:
            cfg = load(config, set_)
        except ConfigError as exc:
            typer.secho(str(exc), fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None
        from vlm.train.loop import stage_config

        n = nproc or stage_config(cfg, stage).nproc
        if n > 1 and "LOCAL_RANK" not in os.environ:
            args = ["--stage", stage] + [a for f, v in (("--data", data), ("--output", output),
                                                         ("--init-from", init_from), ("--labels", labels))
                                     if v for a in (f, v)]
            args += [a for s in set_ for a in ("--set", s)]
            raise typer.Exit(launch_local(config, n, args))
        threads.apply()
        from vlm.train.labels import ExpertLabelsError
        from vlm.train.loop import train

        try:
            summary = train(cfg, stage, data or None, output or None, init_from or None, labels_uri=labels or None)
        except ExpertLabelsError as exc:
            typer.secho(str(exc), fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None
        if int(os.environ.get("RANK", "0")) == 0:
            typer.echo(json.dumps(summary, indent=2, default=str))
