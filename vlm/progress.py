"""Progress bars for every stage: a live tqdm bar on a terminal, plain periodic lines everywhere else.

On a terminal (``stream.isatty()``, ``sys.stderr`` by default) :class:`Progress` is a tqdm bar. Otherwise (a log
file, a pipe, CI) it writes one line when the count passes the next ``every_frac`` of the total or ``every_s``
seconds after the previous line (never within ``min_interval_s`` of it), and a last one at the end (unless
``last_line=False``), e.g. ``pretrain 40/120 step  loss 2.31 6.2 samples/s``; never one line per update.
Inside a step of ``vlm run`` (see :mod:`vlm.events`) it also reports its position to the events file, at most
once a second, so that ``vlm run`` draws one bar on the user's terminal.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from vlm import events

RELAY_EVERY_S = 1.0


class Progress:
    """A tqdm-like bar (``update``, ``set_postfix_str``, ``close``, iteration, ``with``)."""

    def __init__(self, iterable: Iterable | None = None, total: int | None = None, desc: str = "", unit: str = "it",
                 initial: int = 0, disable: bool = False, stream: TextIO | None = None,
                 every_frac: float | None = 0.1, every_s: float | None = 30.0, leave: bool = True,
                 last_line: bool = True, min_interval_s: float = 0.0):
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.n = self._line_n = self._initial = initial
        self.disable = disable
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(self.stream.isatty())
        self.every_frac, self.every_s, self.last_line = every_frac, every_s, last_line
        self.min_interval_s = min_interval_s
        self.postfix = ""
        self._t0 = self._line_t = self._relay_t = time.monotonic()
        self._relay_n = None
        self._closed = False
        self._bar = None
        if self.tty and not disable:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=self.stream,
                             dynamic_ncols=True, leave=leave)

    # -- tqdm's interface
    def __iter__(self) -> Iterator:
        for item in self.iterable or ():
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)

    def update(self, n: int = 1) -> None:
        if self.disable or self._closed:
            return
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif self._line_due():
            self._write_line()
        self._relay()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.disable:
            return
        if self._bar is not None:
            self._bar.close()
        elif self.last_line and self.n != self._line_n:
            self._write_line()
        self._relay(final=True)

    # -- plain lines
    def line(self) -> str:
        count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        rate = ""
        if not self.postfix:
            elapsed = time.monotonic() - self._t0
            done = self.n - self._initial
            rate = f"  {done / elapsed:.1f} {self.unit}/s" if elapsed > 0 and done else ""
        return f"{self.desc} {count} {self.unit}{rate}" + (f"  {self.postfix}" if self.postfix else "")

    def _line_due(self) -> bool:
        if time.monotonic() - self._line_t < self.min_interval_s:
            return False
        if self.every_frac and self.total:
            step = max(1, int(self.total * self.every_frac))
            if self.n // step > self._line_n // step:
                return True
        return bool(self.every_s is not None and time.monotonic() - self._line_t >= self.every_s)

    def _write_line(self) -> None:
        self.stream.write(self.line() + "\n")
        self.stream.flush()
        self._line_n, self._line_t = self.n, time.monotonic()

    def _relay(self, final: bool = False) -> None:
        if not events.enabled() or self.n == self._relay_n:
            return
        now = time.monotonic()
        if not final and self._relay_n is not None and now - self._relay_t < RELAY_EVERY_S:
            return
        self._relay_n, self._relay_t = self.n, now
        events.emit("progress", events.current_stage(self.desc), key=self.desc, n=self.n, total=self.total,
                    unit=self.unit, text=self.postfix)

