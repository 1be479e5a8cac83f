"""``vlm experts DATA_URI LABELS_URI --experts edges,ocr,...``: precompute expert labels."""

from __future__ import annotations

import json

import typer


def _parse_sources(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, uri = item.partition("=")
        if not sep or not name or not uri:
            raise typer.BadParameter(f"expected EXPERT=PATH_OR_S3_URI, got {item!r}", param_hint="--source")
        out[name.strip()] = uri.strip()
    return out


def _list_experts(value: bool) -> None:
    if not value:
        return
    from vlm.experts.registry import _DEFAULT, _REGISTRY, available

    for name, backends in available().items():
        for b in backends:
            cls = _REGISTRY[name][b]
            default = " (default)" if _DEFAULT[name] == b else ""
            deps = [f"requires {', '.join(cls.requires)}"] if cls.requires else []
            deps += [f"after {', '.join(cls.after)}"] if cls.after else []
            weights = "needs weights (--source)" if cls.needs_weights else "offline"
            typer.echo(f"{name:13s} {b:11s}{default:10s} {cls.kind:8s} {weights:25s} {'; '.join(deps)}")
    raise typer.Exit()


def register(app: typer.Typer) -> None:
    @app.command("experts")
    def experts_cmd(
        data_uri: str = typer.Argument(..., help="Data shards (folder or s3:// prefix with manifest.json)."),
        labels_uri: str = typer.Argument(..., help="Where label shards and labels.json go (folder or s3://)."),
        experts: str = typer.Option(None, "--experts", "-e", help="Comma-separated experts; default: the config's."),
        config: str = typer.Option(None, "--config", "-c", help="Pipeline YAML; its `experts` section is used."),
        source: list[str] = typer.Option([], "--source", help="EXPERT=PATH_OR_S3_URI of a Hugging Face checkpoint (repeatable)."),
        backend: list[str] = typer.Option([], "--backend", help="EXPERT=BACKEND, e.g. ocr=tesseract (repeatable)."),
        shards: str = typer.Option(None, "--shards", help="Comma-separated shard names (default: all)."),
        batch_size: int = typer.Option(None, "--batch-size", min=1),
        workers: int = typer.Option(None, "--workers", min=1, help="Processes over shards."),
        device: str = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:N."),
        resolution: int = typer.Option(None, "--resolution", min=16, help="Long side of the label maps."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Recompute shards that are already done."),
        list_experts: bool = typer.Option(False, "--list", callback=_list_experts, is_eager=True,
                                          help="List the registered experts and exit."),
    ) -> None:
        """Run frozen experts over data shards; write label shards aligned 1:1 plus labels.json (resumable)."""
        from vlm.experts.base import ExpertError
        from vlm.experts.config import ExpertsConfig
        from vlm.experts.runner import run_experts

        if config:
            from vlm.config import ConfigError, load_config

            try:
                cfg = load_config(config).experts
            except ConfigError as exc:
                typer.secho(str(exc), fg=typer.colors.RED, err=True)
                raise typer.Exit(1) from None
        else:
            cfg = ExpertsConfig()
        updates = {k: v for k, v in {"batch_size": batch_size, "workers": workers, "device": device,
                                     "resolution": resolution}.items() if v is not None}
        cfg = cfg.model_copy(update={**updates, "sources": {**cfg.sources, **_parse_sources(source)},
                                     "backends": {**cfg.backends, **_parse_sources(backend)}})
        cfg = ExpertsConfig.model_validate(cfg.model_dump())
        names = [e.strip() for e in experts.split(",") if e.strip()] if experts else list(cfg.experts)
        shard_list = [s.strip() for s in shards.split(",") if s.strip()] if shards else None
        try:
            summary = run_experts(data_uri, labels_uri, names, cfg, shards=shard_list, overwrite=overwrite)
        except (ExpertError, ValueError, FileNotFoundError) as exc:
            typer.secho(f"experts failed: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(1) from None
        typer.echo(json.dumps(summary.to_dict(), indent=2))
