"""``vlm model ...``: warm the default model cache, inspect a model, caption images."""

from __future__ import annotations

import json
from pathlib import Path

import typer

model_app = typer.Typer(help="Vision-language models: prepare, inspect, caption.", no_args_is_help=True)


@model_app.command("prepare")
def prepare() -> None:
    """Dequantise SmolLM2-135M-Instruct once into $VLM_CACHE_DIR and check EfficientNet-Lite0 loads."""
    from vlm.models.tasks import prepare_default_models

    typer.echo(json.dumps(prepare_default_models(), indent=2))


@model_app.command("info")
def info(config: Path | None = typer.Option(None, "--config", "-c", help="Pipeline config YAML (its model section)."),
         model: str = typer.Option("", "--model", "-m", help="Model artefact URI (overrides --config).")) -> None:
    """Build a model and print its components and trainable/frozen parameter counts."""
    from vlm.models.tasks import describe_model

    typer.echo(json.dumps(describe_model(str(config or ""), model), indent=2))


@model_app.command("caption")
def caption(images: list[str] = typer.Argument(..., help="Image files or s3:// URIs."),
            model: str = typer.Option("", "--model", "-m", help="Model artefact URI; empty = untrained from --config."),
            config: Path | None = typer.Option(None, "--config", "-c", help="Pipeline config YAML."),
            instruction: str = typer.Option("", "--instruction", "-i", help="Instruction instead of the caption one."),
            question: str = typer.Option("", "--question", "-q", help="Answer this question about each image."),
            num_beams: int = typer.Option(0, "--num-beams", help="0 = from the model config."),
            max_new_tokens: int = typer.Option(0, "--max-new-tokens", help="0 = from the model config.")) -> None:
    """Caption images (or follow --instruction, or answer --question about them)."""
    from vlm.models.tasks import caption_images

    typer.echo(json.dumps(caption_images(images, model, str(config or ""), instruction, num_beams, max_new_tokens,
                                         question=question),
                          indent=2))


def register(app: typer.Typer) -> None:
    app.add_typer(model_app, name="model")
