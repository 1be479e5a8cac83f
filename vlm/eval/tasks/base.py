from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

TASKS: dict[str, Callable[..., TaskResult]] = {}


@dataclass
class TaskResult:
    """What a task hands back: corpus metrics, per-sample records (JSON-able), and why samples were skipped."""

    metrics: dict[str, float]
    records: list[dict[str, Any]] | dict[str, Any]
    skipped: dict[str, int] = field(default_factory=dict)
    n: int = 0


def register_task(name: str):
    def wrap(fn):
        TASKS[name] = fn
        return fn

    return wrap
