"""Downloading image URLs for URL-list inputs (LAION / CC / SBU-style tables), one sample at a time.

:func:`fetch` GETs one URL with a connect timeout, a read timeout (no byte for that long), a total deadline
(a server that trickles bytes), bounded retries with exponential backoff (connection errors, timeouts,
truncated bodies, 5xx and 429, honouring ``Retry-After``), and a maximum size checked against
``Content-Length`` and again while streaming. Every failure is a :class:`~vlm.data.validate.Rejected` with
one reason (``download_failed``, ``http_error``, ``timeout``, ``too_large``), counted per sample in the
manifest with example URLs. Decoding the bytes is the sharding stage's normal image check. Concurrency:
the sharding stage calls :func:`fetch` from ``download.threads`` threads in each worker process; each
thread keeps its own ``requests`` session (connection reuse per host).

Not img2dataset: it would be the obvious library, but it is a whole downloader (its own process/Spark
distribution, resizing and output shards and stats) rather than a per-sample fetch we can put inside our
validation, de-duplication and resumable partitions, and installing it here would downgrade our
``webdataset`` (1.0.2 -> 0.2.x) and pandas and pull wandb, albumentations and the ``dataclasses``
backport (it pulls no other torch). Its per-URL download is ~30 lines of urllib without a size limit
while streaming or retry backoff, so this module is that, with ``requests``.
"""

from __future__ import annotations

import threading
import time
from email.utils import parsedate_to_datetime

from vlm.data.config import DownloadConfig
from vlm.data.validate import Rejected

_local = threading.local()
RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
MAX_RETRY_AFTER = 30.0


def _session():
    import requests

    if getattr(_local, "session", None) is None:
        _local.session = requests.Session()
    return _local.session


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _classify(exc: Exception) -> tuple[str, str]:
    """(reason, detail) for a requests/urllib3/socket exception."""
    import requests
    from urllib3.exceptions import ReadTimeoutError

    text = f"{type(exc).__name__}: {exc}"[:300]
    timed_out = isinstance(exc, (requests.Timeout, ReadTimeoutError, TimeoutError))
    if timed_out or isinstance(getattr(exc, "args", [None])[0], ReadTimeoutError) or "timed out" in str(exc).lower():
        return "timeout", text
    return "download_failed", text


def _get_once(url: str, cfg: DownloadConfig) -> bytes:
    """One attempt. Raises Rejected; ``Rejected.retry_after`` marks it retryable."""
    import requests
    from urllib3.exceptions import HTTPError as Urllib3Error

    start = time.monotonic()
    try:
        resp = _session().get(url, stream=True, timeout=(cfg.connect_timeout, cfg.read_timeout),
                              headers={"User-Agent": cfg.user_agent}, allow_redirects=True)
    except requests.RequestException as exc:
        raise _retryable(*_classify(exc)) from None
    with resp:
        if resp.status_code >= 400:
            exc = Rejected("http_error", f"HTTP {resp.status_code} {resp.reason or ''}".strip())
            if resp.status_code in RETRY_STATUS:
                exc.retry_after = _retry_after(resp.headers.get("Retry-After")) or 0.0  # type: ignore[attr-defined]
            raise exc
        declared = resp.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > cfg.max_bytes:
            raise Rejected("too_large", f"Content-Length {declared} > download.max_bytes {cfg.max_bytes}")
        chunks, size = [], 0
        try:
            while True:
                # read1 returns whatever has arrived (waiting at most read_timeout), so the deadline below
                # also stops a server that trickles bytes, which a fixed-size read would wait out
                chunk = resp.raw.read1(65536, decode_content=True)
                if not chunk:
                    break
                size += len(chunk)
                if size > cfg.max_bytes:
                    raise Rejected("too_large", f"more than download.max_bytes {cfg.max_bytes} bytes")
                if time.monotonic() - start > cfg.total_timeout:
                    raise _retryable("timeout", f"download took longer than download.total_timeout {cfg.total_timeout}s")
                chunks.append(chunk)
        except (requests.RequestException, Urllib3Error, OSError) as exc:
            raise _retryable(*_classify(exc)) from None
    if declared and declared.isdigit() and size < int(declared):
        raise _retryable("download_failed", f"truncated body: {size} of {declared} bytes")
    if not size:
        raise _retryable("download_failed", "empty response body")
    return b"".join(chunks)


def _retryable(reason: str, detail: str) -> Rejected:
    exc = Rejected(reason, detail)
    exc.retry_after = 0.0  # type: ignore[attr-defined]
    return exc


def fetch(url: str, cfg: DownloadConfig) -> bytes:
    """The body of ``url``, or :class:`Rejected` after ``cfg.retries`` retries of the retryable failures."""
    attempt = 0
    while True:
        try:
            return _get_once(url, cfg)
        except Rejected as exc:
            wait = getattr(exc, "retry_after", None)
            if wait is None or attempt >= cfg.retries:
                if attempt:
                    exc.detail = f"{exc.detail} (after {attempt + 1} attempts)"
                raise
            time.sleep(min(MAX_RETRY_AFTER, max(wait, cfg.backoff * 2**attempt)))
            attempt += 1
