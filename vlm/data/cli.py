"""``vlm shard INPUT OUTPUT [options]``: the data-sharding stage from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command("shard")(shard)


def shard(
    input: str = typer.Argument(..., help="JSONL/CSV/Parquet/Arrow table (image paths, http(s) URLs or embedded "
                                "bytes), image folder, WebDataset tars (folder or glob), s3:// URI, or "
                                "builtin:shapes|photos|easy-vqa"),
    output: str = typer.Argument(..., help="dataset URI: local folder or s3://bucket/prefix"),
    config: Path | None = typer.Option(None, "--config", "-c", help="pipeline YAML; its `data` section is the base"),
    name: str | None = typer.Option(None, help="dataset name"),
    limit: int | None = typer.Option(None, help="stop after this many input records"),
    samples_per_shard: int | None = typer.Option(None, "--samples-per-shard", "-n"),
    workers: int | None = typer.Option(None, "--workers", "-j", help="worker processes per partition"),
    partitions: int | None = typer.Option(None, "--partitions", "-p", help="shard as up to N partitions in parallel"),
    min_partition_records: int | None = typer.Option(None, help="no partition smaller than this many records"),
    max_side: int | None = typer.Option(None, help="resize so the long side is at most this"),
    min_side: int | None = typer.Option(None, help="reject images with a shorter short side"),
    max_pixels: int | None = typer.Option(None, help="reject images with more pixels"),
    jpeg_quality: int | None = typer.Option(None),
    max_caption_chars: int | None = typer.Option(None),
    long_captions: str | None = typer.Option(None, help="truncate or reject"),
    near_duplicates: bool | None = typer.Option(None, "--near-duplicates/--no-near-duplicates"),
    near_duplicate_distance: int | None = typer.Option(None),
    split: str | None = typer.Option(None, help="train,val,test fractions, e.g. 0.9,0.05,0.05"),
    builtin_size: int | None = typer.Option(None, help="samples for generated builtin sources"),
    builtin_image_size: int | None = typer.Option(None),
    image_column: str | None = typer.Option(None),
    caption_column: str | None = typer.Option(None),
    seed: int | None = typer.Option(None),
    set_: list[str] = typer.Option([], "--set", help="any ShardConfig field as key=value (JSON values; nested "
                                   "with dots, e.g. download.threads=32)"),
) -> None:
    """Validate, de-duplicate and shard image-text pairs into WebDataset tars + manifest.json."""
    from pydantic import ValidationError

    from vlm.config import ConfigError, format_errors, load_config
    from vlm.data.config import ShardConfig
    from vlm.data.shard import InputError, shard_dataset

    try:
        data = load_config(config).data.model_dump() if config else {}
    except ConfigError as exc:
        typer.secho(str(exc), fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    options = {k: v for k, v in dict(
        name=name, limit=limit, samples_per_shard=samples_per_shard, workers=workers, partitions=partitions,
        min_partition_records=min_partition_records, max_side=max_side,
        min_side=min_side, max_pixels=max_pixels, jpeg_quality=jpeg_quality, max_caption_chars=max_caption_chars,
        long_captions=long_captions, near_duplicates=near_duplicates,
        near_duplicate_distance=near_duplicate_distance, builtin_size=builtin_size,
        builtin_image_size=builtin_image_size, image_column=image_column, caption_column=caption_column,
        seed=seed).items() if v is not None}
    data.update(options)
    if split:
        try:
            train, val, test = (float(x) for x in split.split(","))
        except ValueError:
            typer.secho(f"--split: expected three comma-separated fractions, got {split!r}", fg="red", err=True)
            raise typer.Exit(2) from None
        data["split"] = {"train": train, "val": val, "test": test}
    for item in set_:
        key, _, value = item.partition("=")
        *parents, leaf = key.strip().split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
        try:
            node[leaf] = json.loads(value)
        except json.JSONDecodeError:
            node[leaf] = value
    try:
        cfg = ShardConfig.model_validate(data)
    except ValidationError as exc:
        typer.secho(format_errors(exc, ShardConfig, "shard options"), fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    try:
        manifest = shard_dataset(input, output, cfg)
    except InputError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    summary = manifest.to_dict()
    typer.echo(json.dumps({"output": output, "num_samples": manifest.num_samples, "splits": summary["splits"],
                           "shards": len(manifest.shards), "partitions": summary.get("partitions", 1),
                           "resumed_shards": summary["resumed_shards"],
                           "rejected": {k: v for k, v in manifest.rejected.items() if v},
                           "elapsed_s": summary["elapsed_s"]}, indent=2))
