"""Stage events of a local pipeline run: the one owner of the events file (``<run folder>/events.jsonl``).

``vlm run`` sets ``VLM_EVENTS_FILE`` (every step process inherits it) and names each kfp task in ``VLM_TASK``;
steps append one JSON line per event and ``vlm run`` prints them as they come (``pipelines/console.py``).
Outside ``vlm run`` (a cluster, a test calling a step) nothing is written.

An event: ``{"t": epoch seconds, "event": "start" | "end" | "done" | "fail" | "progress", "stage": name,
"task": kfp task}`` plus ``summary`` (the key figure, as text) and ``run_id`` (the MLflow run the task logged to)
on ``end``/``done``, ``error`` on ``fail``, and ``n``/``total``/``unit``/``text`` on ``progress``. ``done`` ends
one task of a stage that goes on (a fan-out item); ``end`` ends the stage.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

EVENTS_ENV = "VLM_EVENTS_FILE"
TASK_ENV = "VLM_TASK"
STAGE_ENV = "VLM_STAGE"


def enabled() -> bool:
    """True inside a step of ``vlm run`` (an events file and a task name are set)."""
    return bool(os.environ.get(EVENTS_ENV) and os.environ.get(TASK_ENV))


def emit(event: str, stage: str, **fields: Any) -> None:
    """Append one event (a single ``write`` of one line, so concurrent tasks do not interleave)."""
    if not enabled():
        return
    record = {"t": round(time.time(), 3), "event": event, "stage": stage, "task": os.environ[TASK_ENV], **fields}
    line = json.dumps(record, default=str) + "\n"
    fd = os.open(os.environ[EVENTS_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def read(path: str | os.PathLike, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """The complete events after byte ``offset``, and the offset to read on from."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1  # a line being written is read next time
    out = []
    for line in data[:end].splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # not ours; never stop the run for it
    return out, offset + end


def current_stage(default: str = "") -> str:
    return os.environ.get(STAGE_ENV) or default


def stage(name: str, summary: Callable[[Any], str] | None = None, start: bool = True, end: bool = True,
          run_key: str = "run_id", run_arg: str | None = None) -> Callable:
    """Decorate a step: ``start`` before it, ``end`` (or ``done`` when ``end=False``) after it, ``fail`` on error.

    ``name`` may use the step's arguments (``"{stage}"``); ``summary(result)`` gives the key figure; the MLflow
    run is the result's ``run_key`` item, else the argument ``run_arg``. The step's process (and the torchrun
    workers it starts) see the stage name in ``VLM_STAGE``, which progress bars report with.
    """
    def wrap(fn: Callable) -> Callable:
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def step(*args: Any, **kwargs: Any) -> Any:
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            label = name.format(**bound.arguments)
            previous = os.environ.get(STAGE_ENV)
            os.environ[STAGE_ENV] = label
            if start:
                emit("start", label)
            try:
                out = fn(*args, **kwargs)
            except BaseException as exc:
                emit("fail", label, error=f"{type(exc).__name__}: {exc}"[:1000])
                raise
            finally:
                if previous is None:
                    os.environ.pop(STAGE_ENV, None)
                else:
                    os.environ[STAGE_ENV] = previous
            run_id = (out.get(run_key) if isinstance(out, dict) else None) or (
                bound.arguments.get(run_arg) if run_arg else None)
            emit("end" if end else "done", label, summary=summary(out) if summary else "", run_id=run_id or None)
            return out

        return step

    return wrap


def task_run_id(path: str | os.PathLike, task: str, offset: int = 0) -> str | None:
    """The MLflow run that ``task`` reported (its last ``end``/``done`` event with a run id)."""
    found = None
    for e in read(path, offset)[0]:
        if e.get("task") == task and e.get("run_id"):
            found = e["run_id"]
    return found


def symbols(stream: Any) -> dict[str, str]:
    """Marks for start/end/fail lines; plain ASCII where the stream cannot encode the others."""
    try:
        "→✓✗".encode(getattr(stream, "encoding", None) or "ascii")
        return {"start": "→", "end": "✓", "fail": "✗"}
    except (UnicodeEncodeError, LookupError):
        return {"start": "->", "end": "ok", "fail": "x"}


def format_line(event: dict[str, Any], seconds: float | None, marks: dict[str, str]) -> str:
    """The terminal line of a ``start``/``end``/``fail`` event, e.g. ``✓ pretrain     212 s  loss 3.2 -> 1.1``."""
    kind = event["event"]
    head = f"{marks[kind]} {event['stage']:<10}"
    if kind == "start":
        return head.rstrip()
    secs = f"{seconds:6.0f} s" if seconds is not None else " " * 8
    text = event.get("summary", "") if kind == "end" else f"failed: {event.get('error', '')}"
    return f"{head} {secs}  {text}".rstrip()


def events_path(run_folder: str | os.PathLike) -> Path:
    return Path(run_folder) / "events.jsonl"
