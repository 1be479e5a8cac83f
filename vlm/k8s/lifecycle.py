"""create -> wait (status, logs) -> delete for one training job, whatever its kind.

:func:`run_job` drives an ``ops`` object (``PyTorchJobOps``, ``TrainJobOps``) that knows its kind's API:
``dry_run()`` / ``create()`` / ``get()`` / ``phase(job)`` / ``log_targets()`` / ``delete()``, plus ``core`` (a
``CoreV1Api``), ``kind``, ``name``, ``namespace`` and ``manifest``.

- Before creating, a server-side dry run: every field we send must come back; a CRD older than our manifest
  prunes unknown fields silently, and the job would then run without them.
- A job of the same name that already exists (a retried step) is adopted, unless it failed: then it is
  replaced (training resumes from its last checkpoint).
- Pod logs are followed in background threads from the moment the trainer pod has started, each line
  redacted, while the main loop polls the status with a deadline; the step fails on Failed and on timeout.
- The job is deleted after it ran according to ``cluster.delete_job`` (never / on_success / always).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from vlm.redact import redact

log = logging.getLogger(__name__)

PENDING, RUNNING, SUCCEEDED, FAILED = "Pending", "Running", "Succeeded", "Failed"


class ClusterJobError(RuntimeError):
    """The job failed, timed out, was refused by the API server, or its manifest is invalid."""


def run_job(ops: Any, timeout_s: float, poll_s: float = 15, delete_job: str = "on_success",
            drain_s: float = 10) -> dict[str, Any]:
    """Run the job to completion; returns ``{"name", "namespace", "kind", "status"}`` or raises ClusterJobError."""
    what = f"{ops.kind} {ops.namespace}/{ops.name}"
    _submit(ops, what)
    streams = LogStreams(ops.core, ops.namespace)
    deadline = time.monotonic() + timeout_s
    succeeded = False
    try:
        while True:
            job = ops.get()
            if job is None:
                raise ClusterJobError(f"{what} disappeared while it was running (deleted by someone else?)")
            phase, message = ops.phase(job)
            streams.follow(ops.log_targets())
            if phase == FAILED:
                raise ClusterJobError(f"{what} failed: {redact(message) or 'no condition message'}")
            if phase == SUCCEEDED:
                log.info("%s succeeded", what)
                succeeded = True
                return {"name": ops.name, "namespace": ops.namespace, "kind": ops.kind, "status": SUCCEEDED}
            left = deadline - time.monotonic()
            if left <= 0:
                raise ClusterJobError(f"{what} did not finish within {timeout_s:g}s (last status: {phase}); "
                                      f"raise cluster.timeout_s, or look at `kubectl -n {ops.namespace} describe "
                                      f"{ops.kind.lower()} {ops.name}`")
            time.sleep(min(poll_s, left))
    finally:
        streams.close(drain_s)
        if delete_job == "always" or (delete_job == "on_success" and succeeded):
            _delete(ops, what)
        else:
            log.info("%s kept (cluster.delete_job=%s)", what, delete_job)


def _submit(ops: Any, what: str) -> None:
    from kubernetes.client.exceptions import ApiException

    try:
        returned = ops.dry_run()
    except ApiException as exc:
        if exc.status != 409:
            raise ClusterJobError(f"the API server refused {what}: {_reason(exc)}") from exc
        existing = ops.get()
        if existing is not None and ops.phase(existing)[0] != FAILED:
            log.info("%s already exists (a retried step?); following it", what)
            return
        log.info("%s exists and failed; replacing it", what)
        _delete(ops, what)
        _wait_gone(ops, what)
        returned = ops.dry_run()
    dropped = dropped_fields(ops.manifest, returned)
    if dropped:
        raise ClusterJobError(f"the API server drops fields of {what} (is the installed CRD older than the "
                              "manifest?):\n  " + "\n  ".join(dropped))
    try:
        ops.create()
    except Exception as exc:  # the SDKs wrap the ApiException in RuntimeError
        raise ClusterJobError(f"could not create {what}: {_reason(exc)}") from exc
    log.info("created %s", what)


def _reason(exc: BaseException) -> str:
    cause = exc if getattr(exc, "status", None) else (exc.__cause__ or exc)
    body = getattr(cause, "body", None)
    return redact(str(body or cause))


def _delete(ops: Any, what: str) -> None:
    try:
        ops.delete()
        log.info("deleted %s", what)
    except Exception as exc:  # noqa: BLE001 - never hide the job's own outcome behind a clean-up failure
        log.warning("could not delete %s: %s", what, redact(str(exc)))


def _wait_gone(ops: Any, what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while ops.get() is not None:
        if time.monotonic() > deadline:
            raise ClusterJobError(f"{what} was not deleted within {timeout_s:g}s (finalizers?)")
        time.sleep(1)


def dropped_fields(sent: Any, returned: Any, path: str = "") -> list[str]:
    """Paths of what ``sent`` has and ``returned`` lacks or changed (fields the server only added are fine)."""
    if isinstance(sent, dict):
        if not isinstance(returned, dict):
            return [f"{path or '<root>'}: sent an object, got {type(returned).__name__}"]
        out = []
        for key, value in sent.items():
            where = f"{path}.{key}" if path else key
            if key not in returned:
                out.append(f"{where}: dropped")
            else:
                out += dropped_fields(value, returned[key], where)
        return out
    if isinstance(sent, list):
        if not isinstance(returned, list) or len(returned) != len(sent):
            return [f"{path}: sent {len(sent)} items, got {len(returned) if isinstance(returned, list) else returned!r}"]
        return [p for i, (a, b) in enumerate(zip(sent, returned)) for p in dropped_fields(a, b, f"{path}[{i}]")]
    return [] if sent == returned else [f"{path}: sent {redact(sent)!r}, got {redact(returned)!r}"]


class LogStreams:
    """Follows pod logs in daemon threads; each line goes to this module's logger, credentials redacted."""

    def __init__(self, core: Any, namespace: str):
        self.core, self.namespace = core, namespace
        self._threads: dict[tuple[str, str], threading.Thread] = {}
        self._responses: list[Any] = []
        self._lock = threading.Lock()
        self._closed = False

    def follow(self, targets: list[tuple[str, str]]) -> None:
        for target in targets:
            if target not in self._threads:
                thread = threading.Thread(target=self._stream, args=target, daemon=True, name=f"logs-{target[0]}")
                self._threads[target] = thread
                thread.start()

    def _stream(self, pod_name: str, container: str) -> None:
        try:
            resp = self.core.read_namespaced_pod_log(pod_name, self.namespace, container=container, follow=True,
                                                     _preload_content=False)
            with self._lock:
                self._responses.append(resp)
            for raw in resp:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                log.info("[%s] %s", pod_name, redact(line))
        except Exception as exc:  # noqa: BLE001 - logs are best effort; the job's status decides
            if not self._closed:
                log.warning("could not stream the logs of %s/%s: %s", self.namespace, pod_name,
                            redact(str(exc)))

    def close(self, drain_s: float = 10) -> None:
        """Wait up to ``drain_s`` for the streams to end (the containers exited), then cut them."""
        deadline = time.monotonic() + drain_s
        for thread in self._threads.values():
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            self._closed = True
            for resp in self._responses:
                resp.close()
