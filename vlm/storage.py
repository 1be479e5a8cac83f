"""One interface over local paths and ``s3://bucket/prefix`` URIs.

Every artefact in vlm-platform is addressed by a URI. Local paths (or ``file://`` URIs) go to the
filesystem; ``s3://`` URIs go to any S3-compatible store (MinIO, SeaweedFS, AWS) through the ``minio``
client. The endpoint, credentials and time limits come only from the environment:

- ``AWS_ENDPOINT_URL`` (or ``MLFLOW_S3_ENDPOINT_URL``), e.g. ``http://127.0.0.1:9000``; default AWS.
- ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (and optional ``AWS_SESSION_TOKEN``, ``AWS_REGION``).
- ``VLM_STORAGE_CONNECT_TIMEOUT_S`` (default 10): the longest wait for a TCP connection to the endpoint.
- ``VLM_STORAGE_READ_TIMEOUT_S`` (default 60): the longest wait for the server's next bytes (an answer,
  or more of a body being streamed); a stalled server trips it.
- ``VLM_STORAGE_DEADLINE_S`` (default 180, at most 840): the longest one S3 request may keep failing,
  retries included, before the operation raises ``StorageUnavailable``. Each request has its own:
  one GET/PUT/HEAD/DELETE/copy, one page of a listing, one part of a multipart upload, one resume of a
  streamed read. So any operation fails about this long after the server stops answering, while a
  10 GB upload or a slow reader that keeps making progress is never cut off. (At most 840 s because
  a retry re-sends the signed request and S3 rejects signatures older than 15 minutes.)

Writes are atomic: a local write goes to a temporary file in the same folder and is renamed into place;
an S3 object becomes visible only when its (multipart) upload completes, so a failed write never leaves
a partial object (a timed-out write may still complete on the server: readers see the old object or the
whole new one). Failures that a retry can fix (connection refused or reset, connect/read timeouts,
HTTP 429/500/502/503/504, S3 ``RequestTimeout``) are retried with full-jitter exponential backoff inside
the deadline; other errors (access denied, missing object) are raised at once. Retries live in the HTTP
layer handed to ``minio`` (``_DeadlineHTTP``), the one place every request goes through, so urllib3's own
retries are off and nothing retries twice. A streamed read (``open_read``, ``read_bytes``) that breaks or
stalls mid-body resumes with a ranged GET pinned to the object's ETag (``If-Match``), so it never splices
two versions. Giving up raises ``StorageUnavailable`` naming the endpoint, bucket/key, attempts and time.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import io
import logging
import os
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import unquote, urlparse

log = logging.getLogger(__name__)

CHUNK = 8 * 1024 * 1024
PART_SIZE = 16 * 1024 * 1024  # multipart part size for streamed uploads (S3 minimum is 5 MiB)


class StorageError(RuntimeError):
    """A storage operation failed for a reason that retrying will not fix."""


def is_s3(uri: str | os.PathLike) -> bool:
    return str(uri).startswith("s3://")


def join(uri: str | os.PathLike, *parts: str) -> str:
    """Join path segments onto a URI (local or S3) with ``/``."""
    base = str(uri)
    if not is_s3(base):
        return str(Path(_local(base), *parts))
    for part in parts:
        base = base.rstrip("/") + "/" + str(part).lstrip("/")
    return base


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise StorageError(f"not an S3 URI: {uri!r} (expected s3://bucket/prefix)")
    return parsed.netloc, parsed.path.lstrip("/")


def _local(uri: str | os.PathLike) -> str:
    s = str(uri)
    return s[len("file://") :] if s.startswith("file://") else s


# --------------------------------------------------------------------------------------- time limits
@dataclass(frozen=True)
class Timeouts:
    """Connect/read timeouts of one attempt and the deadline of one request, retries included (seconds)."""

    connect_s: float = 10.0
    read_s: float = 60.0
    deadline_s: float = 180.0

    @classmethod
    def from_env(cls) -> Timeouts:
        return cls(connect_s=_seconds("VLM_STORAGE_CONNECT_TIMEOUT_S", cls.connect_s),
                   read_s=_seconds("VLM_STORAGE_READ_TIMEOUT_S", cls.read_s),
                   deadline_s=_seconds("VLM_STORAGE_DEADLINE_S", cls.deadline_s, limit=MAX_DEADLINE_S))


MAX_DEADLINE_S = 840.0  # a retry re-sends the signed request; S3 refuses signatures older than 15 min
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 8.0
MIN_ATTEMPT_S = 0.5  # no attempt starts with less time than this left
ABORT_BUDGET_S = 5.0  # one best-effort try to abort a failed multipart upload


def _seconds(name: str, default: float, limit: float | None = None) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0 or (limit is not None and value > limit):
        bound = f" and at most {limit:g}" if limit is not None else ""
        raise StorageError(f"{name} must be a number of seconds > 0{bound}, got {raw!r}")
    return value


class StorageUnavailable(StorageError):
    """An S3 request kept failing (no answer, timeouts, 5xx) until its deadline ran out."""

    def __init__(self, method: str, endpoint: str, bucket: str, key: str, attempts: int, elapsed_s: float,
                 deadline_s: float, cause: str, detail: str = ""):
        self.method, self.endpoint, self.bucket, self.key = method, endpoint, bucket, key
        self.attempts, self.elapsed_s, self.deadline_s, self.cause = attempts, elapsed_s, deadline_s, cause
        target = f"s3://{bucket}/{key}" if bucket else "(service)"
        self.uri = _SUBJECT.get() or target  # what the caller asked for (a write may fail on its bucket check)
        during = f" while working on {self.uri}" if self.uri != target else ""
        super().__init__(
            f"S3 {method} {target}{detail} at {endpoint}{during} failed after {attempts} attempt(s) in "
            f"{elapsed_s:.1f}s (deadline {deadline_s:g}s, VLM_STORAGE_DEADLINE_S); last error: {cause}")

    def __reduce__(self):  # picklable as it is, so that a worker process can hand it to its parent
        return Exception.__new__, (type(self),), {**self.__dict__, "args": self.args}


_SUBJECT: contextvars.ContextVar[str | None] = contextvars.ContextVar("vlm_storage_subject", default=None)


@contextlib.contextmanager
def _about(uri: str | os.PathLike) -> Iterator[None]:
    """Name ``uri`` in any StorageUnavailable raised inside, whichever request failed."""
    token = _SUBJECT.set(str(uri))
    try:
        yield
    finally:
        _SUBJECT.reset(token)


class _Clock:
    """One request's deadline: ``deadline_s`` from now, or sooner if an enclosing operation's ends first."""

    def __init__(self, deadline_s: float, start: float | None = None):
        self.start = time.monotonic() if start is None else start
        outer = _OUTER_DEADLINE.get()
        self.end = min(self.start + deadline_s, outer) if outer is not None else self.start + deadline_s
        self.deadline_s = self.end - self.start

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def remaining(self) -> float:
        return self.end - time.monotonic()

    def backoff(self, attempt: int) -> float | None:
        """Seconds to sleep before attempt ``attempt + 1`` (full jitter), or None when no useful attempt fits."""
        room = self.remaining() - MIN_ATTEMPT_S
        if room <= 0:
            return None
        return min(random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (attempt - 1))), room)


_OUTER_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("vlm_storage_deadline", default=None)
_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


def _transient_errors() -> tuple[type[BaseException], ...]:
    from urllib3.exceptions import NewConnectionError, ProtocolError
    from urllib3.exceptions import TimeoutError as Urllib3Timeout

    return (Urllib3Timeout, NewConnectionError, ProtocolError)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------------------- S3 client
@dataclass(frozen=True)
class S3Settings:
    endpoint: str
    secure: bool
    access_key: str | None
    secret_key: str | None
    session_token: str | None
    region: str | None
    timeouts: Timeouts = Timeouts()

    @property
    def url(self) -> str:
        return f"{'https' if self.secure else 'http'}://{self.endpoint}"

    @classmethod
    def from_env(cls) -> S3Settings:
        url = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("MLFLOW_S3_ENDPOINT_URL") or "https://s3.amazonaws.com"
        parsed = urlparse(url if "://" in url else f"http://{url}")
        return cls(
            endpoint=parsed.netloc,
            secure=parsed.scheme == "https",
            access_key=os.environ.get("AWS_ACCESS_KEY_ID"),
            secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
            session_token=os.environ.get("AWS_SESSION_TOKEN"),
            region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"),
            timeouts=Timeouts.from_env(),
        )


def _deadline_http(settings: S3Settings):
    import urllib3

    class _DeadlineHTTP(urllib3.PoolManager):
        """The HTTP layer ``minio`` sends every request through: per-attempt timeouts, retries to a deadline."""

        def urlopen(self, method, url, redirect=True, **kw):
            if method == "DELETE" and "uploadId=" in url:
                return self._abort_upload(method, url, **kw)
            t = settings.timeouts
            clock = _Clock(t.deadline_s)
            # A server-side copy sends nothing until it is done: let it use the whole deadline.
            copying = "x-amz-copy-source" in {str(h).lower() for h in (kw.get("headers") or {})}
            attempt = 0
            while True:
                attempt += 1
                left = max(clock.remaining(), 0.01)
                timeout = urllib3.Timeout(total=left, connect=min(t.connect_s, left),
                                          read=left if copying else min(t.read_s, left))
                try:
                    resp = super().urlopen(method, url, redirect=False, retries=False, timeout=timeout, **kw)
                except _transient_errors() as exc:
                    cause = _describe(exc)
                else:
                    if not _retryable(resp, kw.get("preload_content", True)):
                        return resp
                    cause = f"HTTP {resp.status} {_s3_code(resp) or ''}".rstrip()
                    resp.drain_conn()
                    resp.release_conn()
                delay = clock.backoff(attempt)
                if delay is None:
                    raise self._gave_up(method, url, attempt, clock, cause)
                log.warning("S3 %s %s: attempt %d failed (%s); retrying in %.1fs, %.0fs left of the %.0fs deadline",
                            method, _resource(url), attempt, cause, delay, clock.remaining(), clock.deadline_s)
                time.sleep(delay)

        def _abort_upload(self, method, url, **kw):
            """Abort a failed multipart upload: one short try, logged (not raised) when it fails.

            The upload has already failed and minio re-raises that error after aborting; an upload that
            was never completed is invisible to readers, and its parts are removed by the store's
            AbortIncompleteMultipartUpload lifecycle rule (or ``mc``/``aws s3api abort-multipart-upload``).
            """
            t = settings.timeouts
            budget = min(ABORT_BUDGET_S, t.connect_s + t.read_s)
            timeout = urllib3.Timeout(total=budget, connect=min(t.connect_s, budget), read=min(t.read_s, budget))
            try:
                return super().urlopen(method, url, redirect=False, retries=False, timeout=timeout, **kw)
            except _transient_errors() as exc:
                log.warning("could not abort the failed multipart upload %s (%s); it stays invisible, its parts "
                            "wait for the bucket's AbortIncompleteMultipartUpload rule", _resource(url), _describe(exc))
                return urllib3.HTTPResponse(body=b"", status=204, preload_content=True)

        def _gave_up(self, method, url, attempts, clock, cause) -> StorageUnavailable:
            parsed = urlparse(url)
            bucket, key = _bucket_key(parsed, settings.endpoint)
            return StorageUnavailable(method, settings.url, bucket, key, attempts, clock.elapsed(), clock.deadline_s,
                                      cause, _query_detail(parsed.query))

    return _DeadlineHTTP(maxsize=16)


def _retryable(resp, preloaded: bool) -> bool:
    if resp.status in _RETRY_STATUS:
        return True
    return resp.status == 400 and preloaded and _s3_code(resp) == "RequestTimeout"


def _s3_code(resp) -> str | None:
    """The ``<Code>`` of an S3 error response (reads the body unless preloaded: only for responses we drop)."""
    data = resp.data
    if not data or b"<Code>" not in data:
        return None
    return data.split(b"<Code>", 1)[1].split(b"</Code>", 1)[0].decode(errors="replace")


def _bucket_key(parsed, endpoint: str) -> tuple[str, str]:
    path = unquote(parsed.path).lstrip("/")
    if parsed.netloc != endpoint and parsed.netloc.endswith(endpoint.split(".", 1)[-1]):  # virtual-host style
        return parsed.netloc.split(".", 1)[0], path
    bucket, _, key = path.partition("/")
    return bucket, key


def _query_detail(query: str) -> str:
    params = dict(p.partition("=")[::2] for p in query.split("&") if p)
    if "partNumber" in params:
        return f" (part {params['partNumber']} of a multipart upload)"
    if "uploads" in params or "uploadId" in params:
        return " (multipart upload)"
    if "list-type" in params or "prefix" in params:
        return " (listing)"
    if "location" in params:
        return " (looking up the bucket's region: set AWS_REGION to skip this)"
    return ""


def _resource(url: str) -> str:
    parsed = urlparse(url)
    return unquote(parsed.path) + _query_detail(parsed.query)


@functools.lru_cache(maxsize=8)
def _client_for(settings: S3Settings):
    from minio import Minio

    return Minio(settings.endpoint, access_key=settings.access_key, secret_key=settings.secret_key,
                 session_token=settings.session_token, secure=settings.secure, region=settings.region,
                 http_client=_deadline_http(settings))


def s3_client():
    """A ``minio.Minio`` client for the endpoint, credentials and time limits in the environment."""
    return _client_for(S3Settings.from_env())


# --------------------------------------------------------------------------------------- operations
def exists(uri: str | os.PathLike) -> bool:
    if not is_s3(uri):
        return os.path.exists(_local(uri))
    from minio.error import S3Error

    bucket, key = split_s3(str(uri))
    try:
        with _about(uri):
            s3_client().stat_object(bucket, key)
        return True
    except S3Error as exc:
        if exc.code in {"NoSuchKey", "NoSuchBucket", "NoSuchObject", "ResourceNotFound"}:
            return False
        raise


def read_bytes(uri: str | os.PathLike) -> bytes:
    if not is_s3(uri):
        path = _local(uri)
        if not os.path.exists(path):
            raise FileNotFoundError(path)
        return Path(path).read_bytes()
    with open_read(uri) as fh:
        return fh.read()


def read_text(uri: str | os.PathLike, encoding: str = "utf-8") -> str:
    return read_bytes(uri).decode(encoding)


def _get_object(bucket: str, key: str, offset: int = 0, etag: str | None = None):
    from minio.error import S3Error

    try:
        return s3_client().get_object(bucket, key, offset=offset,
                                      request_headers={"If-Match": etag} if etag else None)
    except S3Error as exc:
        if exc.code in {"NoSuchKey", "NoSuchBucket"}:
            raise FileNotFoundError(f"s3://{bucket}/{key}") from exc
        if exc.code == "PreconditionFailed":
            raise StorageError(f"s3://{bucket}/{key} was replaced while it was being read (ETag {etag} is gone); "
                               "read it again") from exc
        raise


class _S3Reader(io.RawIOBase):
    """An S3 object's body as a file; a read that breaks or stalls resumes at its offset, within the deadline.

    The resume is a ranged GET pinned to the first response's ETag, so a concurrent overwrite fails the read
    instead of splicing two versions. The deadline counts from the start of the ``read`` call that stalled.
    """

    def __init__(self, bucket: str, key: str):
        super().__init__()
        self.bucket, self.key = bucket, key
        self._resp = None
        self._resp = _get_object(bucket, key)
        self._etag = self._resp.headers.get("ETag")
        self._size = int(self._resp.headers.get("Content-Length", -1))
        self._pos = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if self.closed:
            raise ValueError(f"I/O operation on closed S3 object s3://{self.bucket}/{self.key}")
        if size is None or size < 0:
            return self.readall()
        started = time.monotonic()
        clock = None
        attempt = 1
        while True:
            try:
                data = self._resp.read(size) if self._resp is not None else b""
                self._pos += len(data)
                return data
            except _transient_errors() as exc:
                cause = _describe(exc)
            self._drop()
            clock = clock or _Clock(S3Settings.from_env().timeouts.deadline_s, start=started)
            self._resume(clock, attempt, cause)
            attempt += 1

    def readall(self) -> bytes:
        return b"".join(iter(lambda: self.read(CHUNK), b""))

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def _resume(self, clock: _Clock, attempt: int, cause: str) -> None:
        """Re-open the body at the current offset, or raise StorageUnavailable when the deadline is spent."""
        delay = clock.backoff(attempt)
        if delay is None:
            raise self._gave_up(clock, attempt, cause)
        log.warning("S3 GET s3://%s/%s broke at byte %d of %d (%s); resuming in %.1fs, %.0fs left",
                    self.bucket, self.key, self._pos, self._size, cause, delay, clock.remaining())
        time.sleep(delay)
        if 0 <= self._size <= self._pos:
            return  # only the end of the body was missing: nothing left to read
        token = _OUTER_DEADLINE.set(clock.end)
        try:
            self._resp = _get_object(self.bucket, self.key, offset=self._pos, etag=self._etag)
        except StorageUnavailable as exc:
            raise self._gave_up(clock, attempt + exc.attempts, exc.cause) from None
        finally:
            _OUTER_DEADLINE.reset(token)

    def _gave_up(self, clock: _Clock, attempts: int, cause: str) -> StorageUnavailable:
        return StorageUnavailable("GET", S3Settings.from_env().url, self.bucket, self.key, attempts, clock.elapsed(),
                                  clock.deadline_s, cause, f" (streaming, at byte {self._pos} of {self._size})")

    def _drop(self) -> None:
        if self._resp is not None:
            self._resp.close()
            self._resp.release_conn()
            self._resp = None

    def close(self) -> None:
        self._drop()
        super().close()


def write_bytes(uri: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` atomically to ``uri``."""
    with open_write(uri) as fh:
        fh.write(data)


def write_text(uri: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    write_bytes(uri, text.encode(encoding))


@contextlib.contextmanager
def open_read(uri: str | os.PathLike) -> Iterator[IO[bytes]]:
    """Open ``uri`` for streaming reads (the S3 body is not buffered in memory)."""
    if not is_s3(uri):
        with open(_local(uri), "rb") as fh:
            yield fh
        return
    with _about(uri):
        reader = _S3Reader(*split_s3(str(uri)))
    with reader:
        yield reader


@contextlib.contextmanager
def open_write(uri: str | os.PathLike) -> Iterator[IO[bytes]]:
    """Open ``uri`` for writing; the object appears only if the block exits without an exception.

    Local: a temporary file in the destination folder renamed into place (``os.replace``).
    S3: the bytes are spooled to a local temporary file and uploaded on exit (multipart when large),
    so readers see either the old object or the complete new one.
    """
    if not is_s3(uri):
        path = Path(_local(uri))
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; published files get the usual mode
        try:
            with os.fdopen(fd, "wb") as fh:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return
    with tempfile.NamedTemporaryFile(prefix="vlm-upload-", dir=_spool_dir()) as tmp:
        yield tmp
        tmp.flush()
        upload_file(tmp.name, uri)


@functools.lru_cache(maxsize=1)
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _spool_dir() -> str | None:
    return os.environ.get("VLM_SPOOL_DIR") or None


def upload_file(local_path: str | os.PathLike, uri: str | os.PathLike) -> None:
    """Copy a local file to ``uri`` (atomic; multipart for large S3 objects)."""
    if not is_s3(uri):
        with open(local_path, "rb") as src, open_write(uri) as dst:
            shutil.copyfileobj(src, dst, CHUNK)
        return
    bucket, key = split_s3(str(uri))
    with _about(uri):
        _ensure_bucket(bucket)
        s3_client().fput_object(bucket, key, str(local_path), part_size=PART_SIZE)


def download_file(uri: str | os.PathLike, local_path: str | os.PathLike) -> Path:
    """Copy ``uri`` to a local file (atomically) and return its path."""
    dest = Path(local_path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open_read(uri) as src, open_write(dest) as dst:
        shutil.copyfileobj(src, dst, CHUNK)
    return dest


@functools.lru_cache(maxsize=64)
def _bucket_ready(endpoint: str, bucket: str) -> bool:
    client = s3_client()
    if not client.bucket_exists(bucket):
        from minio.error import S3Error

        try:
            client.make_bucket(bucket)
        except S3Error as exc:
            if exc.code not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                raise
    return True


def _ensure_bucket(bucket: str) -> None:
    if os.environ.get("VLM_S3_CREATE_BUCKETS", "1") != "0":
        _bucket_ready(S3Settings.from_env().endpoint, bucket)


def list_uris(uri: str | os.PathLike, recursive: bool = True) -> list[str]:
    """Every object/file under ``uri`` (a folder or prefix), as full URIs, sorted."""
    if not is_s3(uri):
        root = Path(_local(uri))
        if not root.exists():
            return []
        if root.is_file():
            return [str(root)]
        it = root.rglob("*") if recursive else root.iterdir()
        return sorted(str(p) for p in it if p.is_file() and not p.name.endswith(".tmp"))
    bucket, prefix = split_s3(str(uri))
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    from minio.error import S3Error

    try:
        with _about(uri):
            objs = s3_client().list_objects(bucket, prefix=prefix or None, recursive=recursive)
            return sorted(f"s3://{bucket}/{o.object_name}" for o in objs if not o.is_dir)
    except S3Error as exc:
        if exc.code == "NoSuchBucket":
            return []
        raise


def delete(uri: str | os.PathLike, recursive: bool = False) -> None:
    """Delete an object/file (or everything under a prefix/folder with ``recursive``). Missing is fine."""
    if not is_s3(uri):
        path = Path(_local(uri))
        if path.is_dir():
            if not recursive:
                raise StorageError(f"{path} is a folder; pass recursive=True")
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
        return
    bucket, key = split_s3(str(uri))
    client = s3_client()
    if recursive:
        for obj in list_uris(uri):
            with _about(obj):
                client.remove_object(bucket, split_s3(obj)[1])
    with _about(uri):
        client.remove_object(bucket, key)


def copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy one object between any two URIs (server-side when both are on the same S3 endpoint)."""
    if is_s3(src) and is_s3(dst):
        from minio.commonconfig import CopySource

        sb, sk = split_s3(str(src))
        db, dk = split_s3(str(dst))
        with _about(f"{src} -> {dst}"):
            _ensure_bucket(db)
            size = s3_client().stat_object(sb, sk).size
            if size < 5 * 1024**3:  # single-request server-side copy limit
                s3_client().copy_object(db, dk, CopySource(sb, sk))
                return
    if not is_s3(src):
        upload_file(_local(src), dst)
        return
    with open_read(src) as fin, open_write(dst) as fout:
        shutil.copyfileobj(fin, fout, CHUNK)


def copy_tree(src: str | os.PathLike, dst: str | os.PathLike) -> list[str]:
    """Copy every file under ``src`` to the same relative path under ``dst``; returns the new URIs."""
    out = []
    base = str(src).rstrip("/")
    base_local = _local(base)
    for uri in list_uris(src):
        rel = uri[len(base) :] if is_s3(src) else os.path.relpath(uri, base_local)
        target = join(dst, *[p for p in rel.replace(os.sep, "/").split("/") if p])
        copy(uri, target)
        out.append(target)
    return out


def local_copy(uri: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """A local path holding ``uri``'s content (the path itself for local URIs; a cached download for S3).

    Works for single objects and for prefixes (folders are mirrored file by file).
    """
    if not is_s3(uri):
        return Path(_local(uri))
    bucket, key = split_s3(str(uri))
    root = Path(cache_dir or os.environ.get("VLM_CACHE_DIR", Path.home() / ".cache" / "vlm")) / "s3" / bucket / key
    if key and not key.endswith("/") and exists(uri):  # a single object
        if not root.exists():
            download_file(uri, root)
        return root
    files = list_uris(uri)
    if not files:
        raise FileNotFoundError(str(uri))
    prefix = str(uri).rstrip("/") + "/"
    for f in files:
        target = root / f[len(prefix) :]
        if not target.exists():
            download_file(f, target)
    return root


def upload_tree(local_dir: str | os.PathLike, uri: str | os.PathLike) -> list[str]:
    """Copy a local folder to a URI (local or S3)."""
    return copy_tree(local_dir, uri)


# --------------------------------------------------------------------------------------- hashing
def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_uri(uri: str | os.PathLike) -> str:
    """sha256 of an object's content, streamed."""
    h = hashlib.sha256()
    with open_read(uri) as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()
