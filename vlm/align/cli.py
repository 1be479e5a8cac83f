"""``vlm align curate`` and ``vlm align finetune``: MiniGPT-4 stage two from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from vlm.cli_utils import config_or_exit


def register(app: typer.Typer) -> None:
    align_app = typer.Typer(help="Curated alignment (MiniGPT-4 stage two): generate + curate, then fine-tune.",
                            no_args_is_help=True)
    app.add_typer(align_app, name="align")

    @align_app.command("curate")
    def curate(
        model: str = typer.Option(..., "--model", help="stage-one model artefact URI"),
        config: Path | None = typer.Option(None, "--config", "-c", help="pipeline YAML (its align section)"),
        data: str | None = typer.Option(None, "--data", help="data shards URI; default <root>/data"),
        output: str | None = typer.Option(None, "--output", help="curated set URI; default align.output or <root>/align"),
        num_images: int | None = typer.Option(None, "--num-images", help="override align.num_images"),
        rewrite: bool | None = typer.Option(None, "--rewrite/--no-rewrite", help="override align.rewrite"),
        run_id: str | None = typer.Option(None, "--run-id", help="MLflow run to attach to"),
    ) -> None:
        """Describe sampled images with the stage-one model, clean, filter and write the curated set."""
        from vlm import storage
        from vlm.align.stage import generate_and_curate

        cfg = config_or_exit(config)
        align = cfg.align
        if num_images is not None:
            align = align.model_copy(update={"num_images": num_images})
        if rewrite is not None:
            align = align.model_copy(update={"rewrite": rewrite})
        data_uri = data or cfg.data.output or storage.join(cfg.root, "data")
        out = output or align.output or storage.join(cfg.root, "align")
        try:
            summary = generate_and_curate(model, data_uri, out, align, run_id=run_id,
                                          experiment=cfg.experiment_name() if config else None)
        except (FileNotFoundError, ValueError) as exc:
            typer.secho(f"align curate: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(1) from None
        typer.echo(json.dumps(summary.to_dict(), indent=2))

    @align_app.command("finetune")
    def finetune_cmd(
        init_from: str = typer.Option(..., "--init-from", help="stage-one model artefact URI"),
        config: Path | None = typer.Option(None, "--config", "-c", help="pipeline YAML (its align.finetune section)"),
        data: str | None = typer.Option(None, "--data", help="curated set URI; default align.output or <root>/align"),
        output: str | None = typer.Option(None, "--output", help="model artefact URI; default <root>/finetune/model"),
    ) -> None:
        """Fine-tune the stage-one model on the curated set (tasks=caption, detailed-description requests)."""
        from vlm import storage
        from vlm.align.tune import finetune

        cfg = config_or_exit(config)
        curated = data or cfg.align.output or storage.join(cfg.root, "align")
        out = output or cfg.align.finetune.output or storage.join(cfg.root, "finetune", "model")
        try:
            summary = finetune(cfg, curated, init_from, out)
        except (FileNotFoundError, ValueError) as exc:
            typer.secho(f"align finetune: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(1) from None
        typer.echo(json.dumps(summary.to_dict(), indent=2, default=str))
