"""``vlm evaluate MODEL_URI DATA_URI [--tasks caption,vqa,retrieval]``."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("evaluate")
    def evaluate_cmd(
        model_uri: str = typer.Argument(..., help="Model artefact dir (local/s3://) or models:/NAME@alias."),
        data_uri: str = typer.Argument(..., help="Shard folder (manifest.json), COCO captions json or VQAv2 "
                                                 "questions json; local or s3://."),
        tasks: str = typer.Option("", "--tasks", help="Comma-separated: caption,vqa,retrieval (default: config)."),
        output: str = typer.Option("", "--output", "-o", help="Where results + report go (local or s3://)."),
        config: Path | None = typer.Option(None, "--config", help="Pipeline config (eval section, tracking)."),
        max_samples: int | None = typer.Option(None, "--max-samples", help="Images evaluated at most."),
        num_beams: int | None = typer.Option(None, "--num-beams", help="Beam size (default 3)."),
        split: str = typer.Option("", "--split", help="Shard split (default: config, 'test')."),
        annotations: str = typer.Option("", "--annotations", help="VQAv2 annotations json (if not next to it)."),
        image_root: str = typer.Option("", "--image-root", help="COCO/VQAv2: folder with the images."),
        run_id: str = typer.Option("", "--run-id", help="Log into this MLflow run (e.g. the training run)."),
        compare_to: str = typer.Option("", "--compare-to", help="Registered model name: the report shows the "
                                                               "change vs its champion."),
        no_track: bool = typer.Option(False, "--no-track", help="Do not log to MLflow."),
    ) -> None:
        """Generate captions/answers, score them, write per-sample results and a report, log to MLflow."""
        from pydantic import ValidationError

        from vlm.config import ConfigError, PipelineConfig, load_config
        from vlm.eval.runner import evaluate

        try:
            cfg = load_config(config) if config else PipelineConfig()
        except ConfigError as exc:
            typer.secho(str(exc), fg=typer.colors.RED, err=True)
            raise typer.Exit(1) from None
        updates = {"tasks": [t.strip() for t in tasks.split(",") if t.strip()] if tasks else None,
                   "max_samples": max_samples, "num_beams": num_beams, "split": split or None,
                   "vqa_annotations": annotations or None, "image_root": image_root or None,
                   "compare_to": compare_to or None}
        try:
            ecfg = cfg.eval.model_validate({**cfg.eval.model_dump(), **{k: v for k, v in updates.items() if v}})
        except ValidationError as exc:
            typer.secho(f"invalid option: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}", fg=typer.colors.RED,
                        err=True)
            raise typer.Exit(1) from None
        try:
            summary = evaluate(model_uri, data_uri, ecfg, run_id or None, output=output or None,
                               experiment=cfg.experiment_name(), tracking_uri=cfg.tracking.uri,
                               track=not no_track).to_dict()
        except (FileNotFoundError, ValueError) as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(1) from None
        typer.echo(json.dumps({k: summary[k] for k in ("metrics", "n", "rejected", "skipped_tasks", "output",
                                                       "report", "run_id")}, indent=2))
