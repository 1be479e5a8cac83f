"""One interface over local paths and ``s3://bucket/prefix`` URIs.

Every artefact in vlm-platform is addressed by a URI. Local paths (or ``file://`` URIs) go to the
filesystem; ``s3://`` URIs go to any S3-compatible store (MinIO, SeaweedFS, AWS) through the ``minio``
client. The endpoint and credentials come only from the environment:

- ``AWS_ENDPOINT_URL`` (or ``MLFLOW_S3_ENDPOINT_URL``), e.g. ``http://127.0.0.1:9000``; default AWS.
- ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (and optional ``AWS_SESSION_TOKEN``, ``AWS_REGION``).

Writes are atomic: a local write goes to a temporary file in the same folder and is renamed into place;
an S3 object becomes visible only when its (multipart) upload completes. Transient S3 errors are retried
with exponential backoff.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar
from urllib.parse import urlparse

log = logging.getLogger(__name__)

T = TypeVar("T")
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


# --------------------------------------------------------------------------------------- retries
def _is_transient(exc: BaseException) -> bool:
    from minio.error import S3Error, ServerError
    from urllib3.exceptions import HTTPError as Urllib3Error

    if isinstance(exc, ServerError):
        return True
    if isinstance(exc, S3Error):
        return exc.code in {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout",
                            "RequestTimeTooSkewed", "OperationAborted"}
    return isinstance(exc, (Urllib3Error, ConnectionError, TimeoutError))


def retry(fn: Callable[..., T], *, attempts: int | None = None, base_delay: float = 0.2) -> Callable[..., T]:
    """Wrap ``fn`` so transient S3/network errors are retried with exponential backoff."""
    attempts = attempts or int(os.environ.get("VLM_STORAGE_RETRIES", "5"))

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        for i in range(attempts):
            try:
                return fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - filtered by _is_transient
                if i == attempts - 1 or not _is_transient(exc):
                    raise
                delay = base_delay * (2**i)
                log.warning("transient storage error (%s); retry %d/%d in %.1fs", exc, i + 1, attempts - 1, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")

    return wrapper


# --------------------------------------------------------------------------------------- S3 client
@dataclass(frozen=True)
class S3Settings:
    endpoint: str
    secure: bool
    access_key: str | None
    secret_key: str | None
    session_token: str | None
    region: str | None

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
        )


@functools.lru_cache(maxsize=8)
def _client_for(settings: S3Settings):
    import urllib3
    from minio import Minio

    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=10, read=300),
        maxsize=16,
        retries=urllib3.Retry(total=3, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
    )
    return Minio(settings.endpoint, access_key=settings.access_key, secret_key=settings.secret_key,
                 session_token=settings.session_token, secure=settings.secure, region=settings.region,
                 http_client=http)


def s3_client():
    """A ``minio.Minio`` client for the endpoint and credentials in the environment."""
    return _client_for(S3Settings.from_env())


# --------------------------------------------------------------------------------------- operations
def exists(uri: str | os.PathLike) -> bool:
    if not is_s3(uri):
        return os.path.exists(_local(uri))
    from minio.error import S3Error

    bucket, key = split_s3(str(uri))
    try:
        retry(s3_client().stat_object)(bucket, key)
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

    def _get() -> bytes:
        bucket, key = split_s3(str(uri))
        resp = _get_object(bucket, key)
        try:
            return resp.read()
        finally:
            resp.close()
            resp.release_conn()

    return retry(_get)()


def read_text(uri: str | os.PathLike, encoding: str = "utf-8") -> str:
    return read_bytes(uri).decode(encoding)


def _get_object(bucket: str, key: str):
    from minio.error import S3Error

    try:
        return s3_client().get_object(bucket, key)
    except S3Error as exc:
        if exc.code in {"NoSuchKey", "NoSuchBucket"}:
            raise FileNotFoundError(f"s3://{bucket}/{key}") from exc
        raise


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
    bucket, key = split_s3(str(uri))
    resp = retry(_get_object)(bucket, key)
    try:
        yield resp
    finally:
        resp.close()
        resp.release_conn()


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
    _ensure_bucket(bucket)
    retry(s3_client().fput_object)(bucket, key, str(local_path), part_size=PART_SIZE)


def download_file(uri: str | os.PathLike, local_path: str | os.PathLike) -> Path:
    """Copy ``uri`` to a local file (atomically) and return its path."""
    dest = Path(local_path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open_read(uri) as src, open_write(dest) as dst:
        shutil.copyfileobj(src, dst, CHUNK)
    return dest


@functools.lru_cache(maxsize=64)
def _bucket_ready(settings: S3Settings, bucket: str) -> bool:
    client = _client_for(settings)
    if not retry(client.bucket_exists)(bucket):
        from minio.error import S3Error

        try:
            client.make_bucket(bucket)
        except S3Error as exc:
            if exc.code not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                raise
    return True


def _ensure_bucket(bucket: str) -> None:
    if os.environ.get("VLM_S3_CREATE_BUCKETS", "1") != "0":
        _bucket_ready(S3Settings.from_env(), bucket)


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

    def _list() -> list[str]:
        from minio.error import S3Error

        try:
            objs = s3_client().list_objects(bucket, prefix=prefix or None, recursive=recursive)
            return sorted(f"s3://{bucket}/{o.object_name}" for o in objs if not o.is_dir)
        except S3Error as exc:
            if exc.code == "NoSuchBucket":
                return []
            raise

    return retry(_list)()


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
            retry(client.remove_object)(bucket, split_s3(obj)[1])
    retry(client.remove_object)(bucket, key)


def copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy one object between any two URIs (server-side when both are on the same S3 endpoint)."""
    if is_s3(src) and is_s3(dst):
        from minio.commonconfig import CopySource

        sb, sk = split_s3(str(src))
        db, dk = split_s3(str(dst))
        _ensure_bucket(db)
        size = retry(s3_client().stat_object)(sb, sk).size
        if size < 5 * 1024**3:  # single-request server-side copy limit
            retry(s3_client().copy_object)(db, dk, CopySource(sb, sk))
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
