"""Logging set-up shared by the CLI and the stages: rich console output, rank prefix under torchrun."""

from __future__ import annotations

import logging
import os


def setup_logging(level: str | int | None = None) -> None:
    from rich.logging import RichHandler

    from vlm.redact import RedactingFilter

    level = level or os.environ.get("VLM_LOG_LEVEL", "INFO")
    rank = os.environ.get("RANK")
    fmt = f"[rank {rank}] %(message)s" if rank is not None and os.environ.get("WORLD_SIZE", "1") != "1" else "%(message)s"
    root = logging.getLogger()
    if any(getattr(h, "_vlm", False) for h in root.handlers):
        root.setLevel(level)
        return
    from rich.console import Console

    # logs go to stderr, so commands that print JSON/YAML on stdout stay parseable
    handler = RichHandler(console=Console(stderr=True), show_path=False, rich_tracebacks=False, markup=False)
    handler.setFormatter(logging.Formatter(fmt))
    handler._vlm = True  # type: ignore[attr-defined]
    handler.addFilter(RedactingFilter())  # no credential in a log line
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("urllib3", "botocore", "filelock", "httpx", "alembic", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
