"""A small MLflow layer: one experiment per pipeline, a parent run per pipeline run, a child run per stage.

Only rank 0 of a distributed job talks to MLflow; other ranks get a :class:`NullRun` whose methods do
nothing. The parent run id travels to later stages through ``VLM_PARENT_RUN_ID`` (or an explicit
argument, which kfp components pass along), and a stage can attach to an existing run (``run_id``), which
is how evaluation and registration attach to the training run.

A training run is *buffered* (``stage_run(..., buffered=True)``): its metrics, params and tags go through an
:class:`Outbox`, a bounded queue that a background thread sends to MLflow. While the server is unreachable
the queue holds the batches and retries, so training goes on; the gap is logged as a warning when it starts
and when it ends. Closing the run waits up to ``VLM_TRACKING_FLUSH_TIMEOUT`` seconds for the server; if it
is still away, :class:`TrackingUnavailable` names the tracking URI and what could not be logged. (MLflow's
own async logging is no substitute: its worker logs an error and drops a batch whose request failed.)
The MLflow HTTP client's own retries are bounded by :func:`configure` so that a dead server does not stall
each call for minutes.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

from vlm.redact import redact

log = logging.getLogger(__name__)

PARENT_ENV = "VLM_PARENT_RUN_ID"
STAGE_TAG = "vlm.stage"
PIPELINE_TAG = "vlm.pipeline"
# MLflow 3 marks what an experiment is for with this tag (the UI's experiment-kind selector writes it);
# without it an experiment counts as GenAI. MLflow 3.17's UI picks its view from the GenAI / Model training
# switch, which the ``workflowType`` parameter of a link sets: see :func:`experiment_url`.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"
RUN_TAG = "vlm.run_tag"
# MLflow's HTTP client retries 7 times with a backoff up to 2 minutes and a 120 s timeout per request: against
# a dead server each call would stall for minutes. These defaults give up on one call after ~10-40 s.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
FLUSH_TIMEOUT_ENV = "VLM_TRACKING_FLUSH_TIMEOUT"  # seconds a buffered run waits for MLflow at its end
BUFFER_ENV = "VLM_TRACKING_BUFFER"  # most batches an Outbox holds (the oldest are dropped beyond)


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_rank0() -> bool:
    return rank() == 0


def configure(tracking_uri: str | None = None, experiment: str | None = None) -> None:
    """Point MLflow at ``MLFLOW_TRACKING_URI`` (wins) or ``tracking_uri``, and select the experiment."""
    import mlflow

    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    uri = os.environ.get("MLFLOW_TRACKING_URI") or tracking_uri
    if uri:
        mlflow.set_tracking_uri(uri)
    if experiment:
        mlflow.set_experiment(experiment_id=ensure_experiment(experiment))


def _flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            out[name] = ",".join(map(str, value))[:6000]
        else:
            out[name] = value
    return out


def current_uri() -> str:
    import mlflow

    return str(mlflow.get_tracking_uri())


class TrackingUnavailable(RuntimeError):
    """MLflow stayed unreachable: the message names the tracking URI and what could not be logged."""


def _transient(exc: BaseException) -> bool:
    """Whether a failed MLflow call may succeed later (connection, timeout, 5xx), unlike a rejected request."""
    from mlflow.exceptions import MlflowException

    return not isinstance(exc, MlflowException) or exc.get_http_status_code() >= 500


def _training_steps(metrics: list) -> list[int]:
    return [m.step for m in metrics if not m.key.startswith("system/")]  # system samples count on their own


def _clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t))


class Outbox:
    """A bounded queue of ``log_batch`` calls for one run, sent in order by a background thread.

    A call that fails with a transient error stays at the head and is retried every ``retry_s`` seconds
    (plus the HTTP client's own bounded retries); meanwhile new batches queue up (at most ``max_batches``;
    beyond, the oldest are dropped and counted). A batch the server rejects (4xx) is dropped with a warning.
    """

    MAX_METRICS, MAX_OTHERS = 1000, 100  # MLflow's log_batch limits

    def __init__(self, run_id: str, max_batches: int | None = None, retry_s: float = 1.0):
        self.run_id, self.uri, self.retry_s = run_id, current_uri(), retry_s
        self.max_batches = max_batches or int(os.environ.get(BUFFER_ENV, "100000"))
        self._queue: collections.deque[tuple[list, list, list]] = collections.deque()
        self._cond = threading.Condition()
        self._inflight: list[tuple[list, list, list]] = []  # taken off the queue, being sent
        self._single = 0  # after a rejected merged call, send this many batches one per call
        self._closed = False
        self.down_since: float | None = None
        self.last_error = ""
        self.waited = self.dropped = 0
        self._steps: list[int] = []  # steps of the metrics that waited in the current gap
        self.gaps: list[dict[str, Any]] = []  # one entry per recovered outage
        self._thread = threading.Thread(target=self._loop, name=f"vlm-tracking-{run_id[:8]}", daemon=True)
        self._thread.start()

    # -- producer side
    def put(self, metrics: list | None = None, params: list | None = None, tags: list | None = None) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError(f"run {self.run_id}: logging after close")
            if len(self._queue) >= self.max_batches:
                self._queue.popleft()
                self.dropped += 1
                if self.dropped == 1:
                    log.warning("MLflow buffer for run %s is full (%d batches): dropping the oldest (%s=...)",
                                self.run_id, self.max_batches, BUFFER_ENV)
            self._queue.append((metrics or [], params or [], tags or []))
            if self.down_since is not None:
                self._note_waiting(metrics or [])
            self._cond.notify_all()

    def pending(self) -> int:
        with self._cond:
            return len(self._queue) + len(self._inflight)

    def flush(self, timeout: float) -> bool:
        """Wait until every queued batch is logged; False if ``timeout`` seconds pass first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue or self._inflight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 1.0))
            return True

    def close(self, timeout: float) -> None:
        """Flush, then stop the thread; raises :class:`TrackingUnavailable` if the batches cannot be sent."""
        delivered = self.flush(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if not delivered:
            raise TrackingUnavailable(self.describe_failure())
        self._thread.join(5)

    def describe_failure(self) -> str:
        with self._cond:
            batches = self._inflight + list(self._queue)
            n = len(batches)
        steps = sorted({step for b in batches for step in _training_steps(b[0])})
        since = (f" since {_clock(self.down_since)} ({time.time() - self.down_since:.0f} s)"
                 if self.down_since else "")
        what = f"{n} batch(es) of metrics/params/tags"
        if steps:
            what += f" (metrics of steps {steps[0]}..{steps[-1]})"
        return (f"MLflow tracking server {self.uri} unreachable{since}: could not log {what} to run {self.run_id}; "
                f"last error: {self.last_error[:300]}")

    # -- the sender thread
    def _note_waiting(self, metrics: list) -> None:
        self.waited += 1
        self._steps.extend(_training_steps(metrics))

    def _take(self) -> list[tuple[list, list, list]]:
        """Batches from the head that fit in one ``log_batch`` call (caller holds the lock)."""
        if self._single:
            self._single -= 1
            return [self._queue.popleft()]
        taken, counts = [], [0, 0, 0]
        while self._queue:
            batch = self._queue[0]
            sizes = [len(part) for part in batch]
            if taken and (counts[0] + sizes[0] > self.MAX_METRICS or counts[1] + sizes[1] > self.MAX_OTHERS
                          or counts[2] + sizes[2] > self.MAX_OTHERS):
                break
            taken.append(self._queue.popleft())
            counts = [c + n for c, n in zip(counts, sizes)]
        return taken

    def _loop(self) -> None:
        from mlflow import MlflowClient

        client = MlflowClient(self.uri)
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                taken = self._inflight = self._take()
            metrics, params, tags = ([x for b in taken for x in b[i]] for i in range(3))
            try:
                client.log_batch(self.run_id, metrics=metrics, params=params, tags=tags)
            except Exception as exc:  # noqa: BLE001 - classified below: retried, or dropped with a warning
                if _transient(exc):
                    self._went_down(exc, taken)
                    time.sleep(self.retry_s)
                    continue
                if len(taken) > 1:  # find the one the server refuses: send these one per call
                    with self._cond:
                        self._queue.extendleft(reversed(taken))
                        self._inflight, self._single = [], len(taken)
                    continue
                log.warning("MLflow rejected %d metric(s), %d param(s), %d tag(s) for run %s; dropped: %s",
                            len(metrics), len(params), len(tags), self.run_id, exc)
            with self._cond:
                self._inflight = []
                if self.down_since is not None:
                    self._recovered()
                self._cond.notify_all()

    def _went_down(self, exc: BaseException, taken: list) -> None:
        with self._cond:
            for batch in reversed(taken):  # back to the head, in order
                self._queue.appendleft(batch)
            self._inflight = []
            self.last_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if self.down_since is None:
                self.down_since = time.time()
                self.waited, self._steps = 0, []
                for batch in self._queue:
                    self._note_waiting(batch[0])
                log.warning("MLflow tracking server %s unreachable since %s (%s); training goes on, metrics are "
                            "buffered and retried", self.uri, _clock(self.down_since), self.last_error[:200])
            self._cond.notify_all()

    def _recovered(self) -> None:
        now = time.time()
        gap = {"start": self.down_since, "end": now, "seconds": round(now - self.down_since, 1),
               "batches": self.waited, "first_step": min(self._steps, default=None),
               "last_step": max(self._steps, default=None)}
        self.gaps.append(gap)
        log.warning("MLflow tracking server %s is back at %s after %.1f s unreachable (from %s): %d batch(es) "
                    "waited (steps %s..%s) and are now logged", self.uri, _clock(now), gap["seconds"],
                    _clock(gap["start"]), gap["batches"], gap["first_step"], gap["last_step"])
        self.down_since = None


class SystemMetrics:
    """CPU, memory, disk, network (and GPU when present) as ``system/*`` metrics of a buffered run.

    Uses MLflow's system-metrics collectors, sampled here every ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL``
    seconds (default 10) and sent through the run's :class:`Outbox`, so that they survive an outage (MLflow's
    own monitor thread stops at the first failed request). Needs psutil; without it nothing is logged.
    """

    def __init__(self, outbox: Outbox):
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        self.outbox = outbox
        self.monitor = SystemMetricsMonitor(outbox.run_id)
        self.interval = float(self.monitor.sampling_interval)
        self.every = int(self.monitor.samples_before_logging)
        self.step = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="vlm-system-metrics", daemon=True)
        self._thread.start()

    def _publish(self) -> None:
        from mlflow.entities import Metric

        values = self.monitor.aggregate_metrics()
        for m in self.monitor.monitors:
            m.clear_metrics()
        ts = int(time.time() * 1000)
        metrics = [Metric(f"system/{k}", float(v), ts, self.step) for k, v in values.items()]
        if metrics:
            self.outbox.put(metrics=metrics)
            self.step += 1

    def _loop(self) -> None:
        samples = 0
        while True:
            try:
                self.monitor.collect_metrics()
                samples += 1
                if samples % self.every == 0:
                    self._publish()
                    samples = 0
            except Exception as exc:  # noqa: BLE001 - monitoring must never stop training
                log.warning("system metrics: %s; no more samples", exc)
                return
            if self._stop.wait(self.interval):
                break
        if samples:
            with contextlib.suppress(Exception):
                self._publish()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


def _system_metrics(outbox: Outbox) -> SystemMetrics | None:
    try:
        import psutil  # noqa: F401 - MLflow's CPU monitor needs it
    except ImportError:
        log.info("psutil is not installed: no system metrics")
        return None
    return SystemMetrics(outbox)


def unlogged_params(run_id: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` (flattened) less those run ``run_id`` already has: MLflow params are write-once, so a re-run
    logs only new ones and warns about changed values."""
    from mlflow import MlflowClient

    logged = MlflowClient().get_run(run_id).data.params
    flat = _flatten(params)
    if not logged:
        return flat
    shown = redact(flat)
    changed = sorted(k for k, v in shown.items() if k in logged and logged[k] != str(v)[:6000])
    if changed:
        log.warning("re-run with changed settings (%s): MLflow run %s keeps the first values", ", ".join(changed[:20]),
                    run_id)
    return {k: v for k, v in flat.items() if k not in logged}


class Run:
    """A live MLflow run (rank 0); with ``buffered=True`` metrics, params and tags go through an :class:`Outbox`
    and artefacts wait for it first (``system_metrics=True`` adds ``system/*`` samples)."""

    def __init__(self, run_id: str, buffered: bool = False, system_metrics: bool = False):
        self.run_id = run_id
        self.outbox = Outbox(run_id) if buffered else None
        self.system = _system_metrics(self.outbox) if self.outbox and system_metrics else None

    @property
    def active(self) -> bool:
        return True

    def _log_batch(self, metrics: list | None = None, params: list | None = None, tags: list | None = None) -> None:
        if self.outbox is not None:
            self.outbox.put(metrics, params, tags)
            return
        from mlflow import MlflowClient

        MlflowClient().log_batch(self.run_id, metrics=metrics or [], params=params or [], tags=tags or [])

    def flush(self, what: str = "") -> None:
        """Wait for the buffered batches (``VLM_TRACKING_FLUSH_TIMEOUT``, default 120 s) or raise
        :class:`TrackingUnavailable`, adding ``what`` (e.g. an artefact) to the list of what was not logged."""
        if self.outbox is None or self.outbox.flush(float(os.environ.get(FLUSH_TIMEOUT_ENV, "120"))):
            return
        raise TrackingUnavailable(self.outbox.describe_failure() + (f"; nor {what}" if what else ""))

    def close(self, timeout: float | None = None) -> None:
        """Stop the system metrics and send what is buffered (see :meth:`flush`)."""
        if self.system is not None:
            self.system.stop()
            self.system = None
        if self.outbox is not None:
            outbox, self.outbox = self.outbox, None
            outbox.close(float(os.environ.get(FLUSH_TIMEOUT_ENV, "120")) if timeout is None else timeout)

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        flat = redact(_flatten(params))
        batch = [Param(k, str(v)[:6000]) for k, v in flat.items()]
        for i in range(0, len(batch), Outbox.MAX_OTHERS):
            self._log_batch(params=batch[i : i + Outbox.MAX_OTHERS])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        batch = [Metric(k, float(v), ts, step or 0) for k, v in metrics.items() if v is not None]
        for i in range(0, len(batch), Outbox.MAX_METRICS):
            self._log_batch(metrics=batch[i : i + Outbox.MAX_METRICS])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        batch = [RunTag(k, redact(str(v))) for k, v in tags.items()]
        for i in range(0, len(batch), Outbox.MAX_OTHERS):
            self._log_batch(tags=batch[i : i + Outbox.MAX_OTHERS])

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        from mlflow import MlflowClient

        self.flush(f"the artefact {artifact_path or os.path.basename(str(path))!r} from {path}")
        client = MlflowClient()
        if os.path.isdir(path):
            client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        from mlflow import MlflowClient

        self.flush(f"the artefact {artifact_file!r}")
        MlflowClient().log_text(self.run_id, text, artifact_file)

    def log_dict(self, data: Any, artifact_file: str) -> None:
        from mlflow import MlflowClient

        self.flush(f"the artefact {artifact_file!r}")
        MlflowClient().log_dict(self.run_id, data, artifact_file)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        from mlflow import MlflowClient

        self.flush(f"the artefact {artifact_file!r}")
        MlflowClient().log_figure(self.run_id, figure, artifact_file)


class NullRun(Run):
    """What non-zero ranks (and disabled tracking) get: every call is a no-op."""

    def __init__(self, run_id: str | None = None):
        self.run_id = run_id or ""
        self.outbox = self.system = None

    @property
    def active(self) -> bool:
        return False

    def log_params(self, params: Mapping[str, Any]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...
    def set_tags(self, tags: Mapping[str, Any]) -> None: ...
    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None: ...
    def log_text(self, text: str, artifact_file: str) -> None: ...
    def log_dict(self, data: Any, artifact_file: str) -> None: ...
    def log_figure(self, figure: Any, artifact_file: str) -> None: ...
    def flush(self, what: str = "") -> None: ...
    def close(self, timeout: float | None = None) -> None: ...


def ensure_experiment(name: str) -> str:
    """The id of experiment ``name``, created (or restored) if needed and marked as model training."""
    from mlflow import MlflowClient

    client = MlflowClient()
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING})
        except Exception:  # created concurrently by another process
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    if EXPERIMENT_KIND_TAG not in exp.tags:
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
    return exp.experiment_id


def experiment_url(ui: str, experiment_id: str) -> str:
    """Link to an experiment in the MLflow UI at ``ui`` (``http://host:port``) that opens on its runs table
    (MLflow 3's "Model training" view, not the GenAI one)."""
    return f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def _finish(run_id: str, failed: bool) -> None:
    """Close a run; when closing it as FAILED, a tracking error is only logged (the original error matters)."""
    from mlflow import MlflowClient

    try:
        MlflowClient().set_terminated(run_id, status="FAILED" if failed else "FINISHED")
    except Exception as exc:
        if not failed:
            raise
        log.warning("could not mark MLflow run %s FAILED at %s: %s", run_id, current_uri(),
                    str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


@contextlib.contextmanager
def pipeline_run(experiment: str, run_name: str | None = None, tags: Mapping[str, Any] | None = None,
                 tracking_uri: str | None = None, run_id: str | None = None) -> Iterator[Run]:
    """The parent run of one pipeline run. Sets ``VLM_PARENT_RUN_ID`` for stages started inside it."""
    if not is_rank0():
        yield NullRun(run_id or os.environ.get(PARENT_ENV))
        return
    configure(tracking_uri)
    from mlflow import MlflowClient

    client = MlflowClient()
    if run_id is None:
        run = client.create_run(ensure_experiment(experiment), run_name=run_name,
                                tags={PIPELINE_TAG: experiment, **{k: str(v) for k, v in (tags or {}).items()}})
        run_id = run.info.run_id
    previous = os.environ.get(PARENT_ENV)
    os.environ[PARENT_ENV] = run_id
    failed = False
    try:
        yield Run(run_id)
    except BaseException:
        failed = True
        raise
    finally:
        _finish(run_id, failed)
        if previous is None:
            os.environ.pop(PARENT_ENV, None)
        else:
            os.environ[PARENT_ENV] = previous


def create_stage_run(stage: str, experiment: str, parent_run_id: str | None = None,
                     run_name: str | None = None, tracking_uri: str | None = None,
                     tags: dict[str, str] | None = None) -> str:
    """Create a child run (status RUNNING) with ``tags`` and return its id; rank 0 only."""
    configure(tracking_uri)
    from mlflow import MlflowClient

    parent = parent_run_id or os.environ.get(PARENT_ENV)
    tags = {**(tags or {}), STAGE_TAG: stage, PIPELINE_TAG: experiment}
    if parent:
        tags["mlflow.parentRunId"] = parent
    run = MlflowClient().create_run(ensure_experiment(experiment), run_name=run_name or stage, tags=tags)
    return run.info.run_id


@contextlib.contextmanager
def stage_run(stage: str, experiment: str, parent_run_id: str | None = None, run_id: str | None = None,
              run_name: str | None = None, tracking_uri: str | None = None, finish: bool = True,
              resume: bool = False, buffered: bool = False, system_metrics: bool = False) -> Iterator[Run]:
    """A child run for one stage (tag ``vlm.stage``), or the existing ``run_id`` to attach to.

    Non-zero ranks get a :class:`NullRun`. On an exception the run is marked FAILED and re-raised.
    With ``finish=False`` an attached run is left open (for a stage that only adds to another's run).
    With ``resume=True`` the ``run_id`` (a training run its caller opened or found) is reopened as RUNNING
    and closed like a run of its own; a new run is created if the tracking store does not know it.
    ``buffered`` and ``system_metrics``: see :class:`Run`; leaving the block flushes the buffer and raises
    :class:`TrackingUnavailable` (marking the run FAILED if it can) when MLflow stays away.
    """
    if not is_rank0():
        yield NullRun(run_id)
        return
    configure(tracking_uri)
    if run_id and resume:
        run_id = reopen_run(run_id)
    attached = run_id is not None and not resume
    if run_id is None:
        run_id = create_stage_run(stage, experiment, parent_run_id, run_name, tracking_uri)
    run = Run(run_id, buffered=buffered, system_metrics=system_metrics)
    failed = False
    try:
        yield run
        run.close()
    except BaseException:
        failed = True
        with contextlib.suppress(TrackingUnavailable):
            run.close(timeout=5)
        raise
    finally:
        if failed or (finish and not attached):
            _finish(run_id, failed)


def reopen_run(run_id: str) -> str | None:
    """Set an existing run back to RUNNING (a re-run resuming it); ``None`` if the store does not know it."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        client.update_run(run_id, status="RUNNING")
    except MlflowException as exc:
        if exc.get_http_status_code() != 404:
            raise
        log.warning("MLflow run %s is not in %s: starting a new run", run_id, current_uri())
        return None
    log.info("MLflow run %s: RUNNING", run_id)
    return run_id


def find_pipeline_run(experiment_id: str, run_tag: str):
    """The newest parent run (no ``mlflow.parentRunId``) tagged ``vlm.run_tag=<run_tag>``, or None."""
    from mlflow import MlflowClient

    runs = MlflowClient().search_runs([experiment_id], f"tags.`{RUN_TAG}` = '{run_tag}'",
                                      order_by=["attributes.start_time DESC"])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    return parents[0] if parents else None


def reopen_pipeline_run(run) -> int:
    """Reopen a pipeline's parent run for a re-run: RUNNING again, and every child still RUNNING (left by a
    killed attempt) marked KILLED (a training run resumed from its checkpoint is reopened by its stage).
    Returns the number of children marked KILLED."""
    from mlflow import MlflowClient

    client = MlflowClient()
    run_id = run.info.run_id
    client.update_run(run_id, status="RUNNING")
    orphans = client.search_runs([run.info.experiment_id],
                                 f"tags.`mlflow.parentRunId` = '{run_id}' and attributes.status = 'RUNNING'")
    for child in orphans:
        client.set_tag(child.info.run_id, "vlm.interrupted", "the pipeline run was interrupted and re-run")
        client.set_terminated(child.info.run_id, status="KILLED")
    log.info("re-run of pipeline run %s: parent run %s reopened, %d interrupted stage run(s) marked KILLED",
             run.data.tags.get(RUN_TAG), run_id, len(orphans))
    return len(orphans)


def mark_failed(run_id: str, reason: str = "", tracking_uri: str | None = None) -> None:
    """Mark a run (e.g. the pipeline's parent run from an exit handler) as FAILED."""
    configure(tracking_uri)
    from mlflow import MlflowClient

    client = MlflowClient()
    if reason:
        client.set_tag(run_id, "vlm.failure", reason[:5000])
    client.set_terminated(run_id, status="FAILED")
