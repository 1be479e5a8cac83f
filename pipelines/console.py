"""What ``vlm run`` shows: one line per stage as it starts and ends, one progress bar, the full logs in files.

kfp's local runner (2.17) writes everything to the terminal: each task's log lines (``local_logger_context``
puts a ``StreamHandler(sys.stdout)`` on the root logger per task) and the task's subprocess output with the
executor input/output JSON (``run_local_subprocess`` reads it from a pipe and ``print``s it line by line).
``local.init`` has no option to change that, and ``ParallelFor`` items run in threads. So, while a run lasts:

- ``sys.stdout`` and ``sys.stderr`` are a :class:`_Router` that writes what each thread prints to the log file
  of the task that thread runs (``<run folder>/logs/<task>.log``), the rest to ``logs/pipeline.log``; with
  ``verbose`` it also echoes everything to the terminal. kfp's handler and ``print`` write to whatever
  ``sys.stdout`` is at the time, so nothing of kfp is patched for the output itself.
- one kfp function is wrapped, ``task_dispatcher.run_single_task_implementation`` (called once per task), to
  bind the task's log file to its thread, to name the task in its environment (``VLM_TASK``, added to the
  executor spec's container env, which kfp passes to the subprocess), and, when the task is over and its log
  complete, to log the file to the task's MLflow run as ``logs/<task>.log`` (the parent run when it has none).
- a thread reads the events file (:mod:`vlm.events`) and prints the stage lines, and on a terminal a progress
  bar (:class:`vlm.progress.Progress`); the lines go to stdout, the bar to stderr.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from vlm import events, tracking
from vlm.progress import Progress

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
TAIL_LINES = 20


class _Router(io.TextIOBase):
    """A text stream that writes to the log file bound to the calling thread (else ``default``)."""

    def __init__(self, default: TextIO, echo: TextIO | None):
        self.default, self.echo = default, echo
        self._local = threading.local()
        self._lock = threading.Lock()

    def bind(self, fh: TextIO | None) -> None:
        self._local.fh = fh

    def write(self, text: str) -> int:
        with self._lock:
            (getattr(self._local, "fh", None) or self.default).write(_ANSI.sub("", text))
            if self.echo is not None:
                self.echo.write(text)
                self.echo.flush()
        return len(text)

    def flush(self) -> None:
        if self.echo is not None:
            self.echo.flush()

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:
        return "utf-8"


class _Printer(threading.Thread):
    """Follows the events file: a line per stage start/end/failure, and one bar for the running stage."""

    def __init__(self, path: Path, offset: int, out: TextIO, err: TextIO, bars: bool):
        super().__init__(name="vlm-run-events", daemon=True)
        self.path, self.offset, self.out, self.err, self.bars = path, offset, out, err, bars
        self.marks = events.symbols(out)
        self.started: dict[str, float] = {}
        self.bar: Progress | None = None
        self.bar_key: tuple[str, str] | None = None
        self.sources: dict[tuple[str, str], tuple[int, int]] = {}
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(0.25):
            self.poll()

    def stop(self) -> None:
        self._halt.set()
        self.join(5)
        self.poll()
        self._close_bar()

    def poll(self) -> None:
        found, self.offset = events.read(self.path, self.offset)
        for event in found:
            self.handle(event)

    def handle(self, event: dict[str, Any]) -> None:
        kind, stage = event.get("event"), event.get("stage", "?")
        if kind == "progress":
            if self.bars:
                self._progress(event)
            return
        if kind not in ("start", "end", "fail") or kind == "start" and stage in self.started:
            return
        if kind == "start":
            self.started[stage] = event["t"]
            seconds = None
        else:
            seconds = event["t"] - self.started.get(stage, event["t"])
        self.say(events.format_line(event, seconds, self.marks))

    def say(self, line: str) -> None:
        self._close_bar()
        self.out.write(line + "\n")
        self.out.flush()

    def _progress(self, event: dict[str, Any]) -> None:
        key = (event["stage"], event.get("unit") or "it")
        if key != self.bar_key:
            self._close_bar()
            self.bar_key, self.sources = key, {}
        self.sources[(event.get("task", ""), event.get("key", ""))] = (int(event["n"]), int(event.get("total") or 0))
        n = sum(v[0] for v in self.sources.values())
        total = sum(v[1] for v in self.sources.values()) or None
        if self.bar is not None and self.bar.total != total:
            self._close_bar(keep_key=True)
        if self.bar is None:
            # off a terminal: a line per 10% at most, 30 s apart at least (none for a short stage)
            self.bar = Progress(total=total, initial=n, desc=key[0], unit=key[1], stream=self.err, every_s=None,
                                min_interval_s=30.0, leave=False, last_line=False)
        self.bar.set_postfix_str(event.get("text") or "")
        if n > self.bar.n:
            self.bar.update(n - self.bar.n)

    def _close_bar(self, keep_key: bool = False) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if not keep_key:
            self.bar_key = None


class _Capture:
    """The state of one run's capture: log files, task names, failures."""

    def __init__(self, folder: Path, tracking_uri: str, events_file: Path, offset: int):
        self.logs = folder / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.tracking_uri, self.events_file, self.offset = tracking_uri, events_file, offset
        self.failed: list[str] = []
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def task_name(self, component_name: str) -> str:
        base = component_name.removeprefix("comp-")
        with self._lock:
            self._counts[base] = self._counts.get(base, 0) + 1
            count = self._counts[base]
        return base if count == 1 else f"{base}-{count}"

    def open_log(self, name: str) -> TextIO:
        fh = open(self.logs / f"{name}.log", "a", buffering=1, encoding="utf-8")  # noqa: SIM115
        fh.write(f"===== {time.strftime('%Y-%m-%d %H:%M:%S')} {name}\n")
        return fh

    def log_to_mlflow(self, task: str, path: Path) -> None:
        """Log ``path`` to the task's MLflow run (else the parent run) under ``logs/``."""
        run_id = (events.task_run_id(self.events_file, task, self.offset)
                  or events.task_run_id(self.events_file, "prepare", self.offset))
        if not run_id:
            return
        try:
            tracking.configure(self.tracking_uri)
            tracking.Run(run_id).log_artifact(path, "logs")
        except Exception as exc:  # noqa: BLE001 - a missing log artefact must not fail the run
            logging.getLogger(__name__).warning("could not log %s to MLflow run %s: %s", path, run_id, exc)


def _wrap(original: Any, cap: _Capture, router: _Router) -> Any:
    def run_task(**kwargs: Any) -> Any:
        task = cap.task_name(kwargs["component_name"])
        spec = type(kwargs["executor_spec"])()
        spec.CopyFrom(kwargs["executor_spec"])
        spec.container.env.add(name=events.TASK_ENV, value=task)
        status = None
        with cap.open_log(task) as fh:
            router.bind(fh)
            try:
                outputs, status = original(**{**kwargs, "executor_spec": spec})
            finally:
                router.bind(None)
                if getattr(status, "name", "") != "SUCCESS":
                    cap.failed.append(task)
        cap.log_to_mlflow(task, Path(fh.name))
        return outputs, status

    return run_task


@contextlib.contextmanager
def capture(folder: str | os.PathLike, tracking_uri: str, verbose: bool = False) -> Iterator[None]:
    """Run kfp's local runner inside: stage lines and a bar on the terminal, everything else in ``folder/logs``."""
    from kfp.local import task_dispatcher

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = events.events_path(folder)
    offset = path.stat().st_size if path.exists() else 0
    cap = _Capture(folder, tracking_uri, path, offset)
    out, err = sys.stdout, sys.stderr
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, builtins.print, task_dispatcher.run_single_task_implementation,
             os.environ.get(events.EVENTS_ENV))
    printer = _Printer(path, offset, out, err, bars=not verbose)
    pipeline_log = cap.open_log("pipeline")
    router = _Router(pipeline_log, echo=out if verbose else None)
    shown = folder.relative_to(Path.cwd()) if folder.is_relative_to(Path.cwd()) else folder
    out.write(f"run folder {shown}" + ("" if verbose else " (logs in logs/, --verbose shows them here)") + "\n")
    out.flush()
    os.environ[events.EVENTS_ENV] = str(path)
    task_dispatcher.run_single_task_implementation = _wrap(saved[3], cap, router)
    sys.stdout = sys.stderr = router
    printer.start()
    try:
        yield
    except BaseException:
        printer.stop()
        for task in cap.failed:
            _show_tail(cap.logs / f"{task}.log", err)
        raise
    else:
        printer.stop()
    finally:
        sys.stdout, sys.stderr = out, err
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        builtins.print, task_dispatcher.run_single_task_implementation = saved[2], saved[3]
        if saved[4] is None:
            os.environ.pop(events.EVENTS_ENV, None)
        else:
            os.environ[events.EVENTS_ENV] = saved[4]
        pipeline_log.close()
        cap.log_to_mlflow("pipeline", Path(pipeline_log.name))


def _show_tail(path: Path, stream: TextIO) -> None:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return
    stream.write(f"--- last {min(TAIL_LINES, len(lines))} lines of {path}:\n")
    stream.write("\n".join(lines[-TAIL_LINES:]) + "\n")
    stream.flush()
