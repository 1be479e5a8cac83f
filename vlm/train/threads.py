"""Thread policy of training processes on CPU: ``cores / local processes`` threads, OpenMP threads that sleep.

OpenMP's default (GNU libgomp: spin, then sleep) lets a thread that waits at a barrier burn its core; next
to another busy process the waiting thread steals time from the one it waits for, and each op's barrier
waits on a descheduled thread. ``OMP_WAIT_POLICY=PASSIVE`` makes waiting threads sleep at once. libgomp
reads it when it loads, so it must be in the environment before ``import torch``: :func:`env` is what a
launcher gives its children, :func:`apply` is what an entry point calls first. Explicit settings win.
"""

from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger(__name__)


def cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def threads_per_process(nproc: int) -> int:
    return max(1, cores() // max(1, nproc))


def env(nproc: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """The policy's variables for ``nproc`` local processes, without overriding those already in ``base``."""
    base = dict(os.environ if base is None else base)
    return {"OMP_NUM_THREADS": base.get("OMP_NUM_THREADS") or str(threads_per_process(nproc)),
            "OMP_WAIT_POLICY": base.get("OMP_WAIT_POLICY") or "PASSIVE"}


def wait_policy() -> None:
    """Set ``OMP_WAIT_POLICY`` (unless set) for this process; a warning if torch is loaded already (too late)."""
    if os.environ.get("OMP_WAIT_POLICY"):
        return
    if "torch" in sys.modules:
        log.warning("torch was imported before the thread policy: OMP_WAIT_POLICY=PASSIVE not applied "
                    "(set it in the environment)")
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


def apply() -> dict[str, str]:
    """The whole policy for this process, one of ``LOCAL_WORLD_SIZE`` on this machine. Call it before torch
    is imported; if torch is loaded already its thread count is still set."""
    wait_policy()
    policy = env(int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    os.environ.update(policy)
    if "torch" in sys.modules:
        import torch

        torch.set_num_threads(int(policy["OMP_NUM_THREADS"]))
    return policy
