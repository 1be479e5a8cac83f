"""vlm.progress: a live bar on a terminal (a real pty), plain periodic lines otherwise; the events it relays."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import struct
import termios

from vlm import events
from vlm.progress import Progress


def _read_all(fd: int) -> bytes:
    import select

    out = b""
    while select.select([fd], [], [], 0.5)[0]:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    return out


def test_terminal_gets_a_live_bar():
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    try:
        with os.fdopen(slave, "w", closefd=False) as stream:
            assert stream.isatty()
            with Progress(total=50, desc="pretrain", unit="step", stream=stream) as bar:
                for _ in range(50):
                    bar.update(1)
                    bar.set_postfix_str("loss 1.23")
            assert bar.tty
        text = _read_all(master).decode(errors="replace")
    finally:
        os.close(master)
        os.close(slave)
    assert "\r" in text, "a bar redraws its line in place"
    assert "pretrain" in text and "50/50" in text and "loss 1.23" in text
    assert text.count("\n") <= 2, "updates do not add lines on a terminal"


def test_no_terminal_gets_few_plain_lines():
    stream = io.StringIO()
    with Progress(total=200, desc="pretrain", unit="step", stream=stream, every_s=None) as bar:
        for i in range(200):
            bar.set_postfix_str(f"loss {3 - i / 100:.2f}")
            bar.update(1)
    lines = stream.getvalue().splitlines()
    assert not bar.tty and "\r" not in stream.getvalue()
    assert len(lines) == 10, lines  # one per 10% of the total, the last at 200/200
    assert lines[0] == "pretrain 20/200 step  loss 2.81"
    assert lines[-1] == "pretrain 200/200 step  loss 1.01"


def test_no_terminal_without_total_writes_a_last_line_only_when_it_moved():
    stream = io.StringIO()
    bar = Progress(range(7), desc="merge", unit="chunk", stream=stream, every_frac=None, every_s=None)
    assert list(bar) == list(range(7))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("merge 7/7 chunk")
    quiet = io.StringIO()
    Progress(total=3, stream=quiet, last_line=False, every_frac=None, every_s=None).close()
    with Progress(total=100, stream=quiet, last_line=False, min_interval_s=3600) as spaced:
        spaced.update(100)  # passes every 10% mark, all within the minimum interval
    disabled = io.StringIO()
    with Progress(total=3, stream=disabled, disable=True) as off:
        off.update(3)
    assert quiet.getvalue() == disabled.getvalue() == ""


def test_relays_to_the_events_file_inside_a_run_step(tmp_path, monkeypatch):
    path = tmp_path / "events.jsonl"
    monkeypatch.setenv(events.EVENTS_ENV, str(path))
    monkeypatch.setenv(events.TASK_ENV, "pretrain")
    monkeypatch.setenv(events.STAGE_ENV, "pretrain")
    with Progress(total=100, desc="pretrain", unit="step", stream=io.StringIO()) as bar:
        for _ in range(100):
            bar.update(1)
    found, offset = events.read(path)
    assert offset == path.stat().st_size
    assert all(e["event"] == "progress" and e["stage"] == "pretrain" and e["task"] == "pretrain" for e in found)
    assert 2 <= len(found) < 10, "throttled: the first update and the end, not one event per update"
    assert found[-1]["n"] == 100 and found[-1]["total"] == 100


def test_stage_decorator_events(tmp_path, monkeypatch):
    path = tmp_path / "events.jsonl"
    monkeypatch.setenv(events.EVENTS_ENV, str(path))
    monkeypatch.setenv(events.TASK_ENV, "train")

    @events.stage("{stage}", summary=lambda out: f"loss {out['loss']}", run_arg="run")
    def step(stage: str, run: str = "") -> dict:
        assert os.environ[events.STAGE_ENV] == stage
        if stage == "bad":
            raise ValueError("no data")
        return {"loss": 1.5}

    step("finetune", run="r1")
    try:
        step("bad")
    except ValueError:
        pass
    found = [{k: v for k, v in e.items() if k != "t"} for e in events.read(path)[0]]
    assert found == [
        {"event": "start", "stage": "finetune", "task": "train"},
        {"event": "end", "stage": "finetune", "task": "train", "summary": "loss 1.5", "run_id": "r1"},
        {"event": "start", "stage": "bad", "task": "train"},
        {"event": "fail", "stage": "bad", "task": "train", "error": "ValueError: no data"},
    ]
    assert events.task_run_id(path, "train") == "r1"
    assert events.STAGE_ENV not in os.environ
    line = events.format_line({"event": "end", "stage": "pretrain", "summary": "loss 3.21 -> 1.05"}, 212.4,
                              {"start": "→", "end": "✓", "fail": "✗"})
    assert line == "✓ pretrain      212 s  loss 3.21 -> 1.05"
