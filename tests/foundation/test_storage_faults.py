"""Storage under faults, on a real SeaweedFS of this module's own that the tests freeze (SIGSTOP) and thaw.

A frozen server still accepts TCP connections (the kernel does) but never answers: the common cloud
failure. Every operation must then fail within ``VLM_STORAGE_DEADLINE_S`` with an error naming the
endpoint, the object, the attempts and the time; no partial object may become visible; and a server
that comes back inside the deadline must let the retry succeed. Short limits are set through the
environment so the suite stays fast; set-up on the healthy server runs under generous ones, since a
loaded 2-core machine can take seconds to store a multi-megabyte part.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
import uuid
from urllib.parse import parse_qs, urlparse

import pytest

from tests.servers import FaultyFront, S3Server, start_faulty_front, start_seaweedfs
from vlm import storage

CONNECT_S, READ_S, DEADLINE_S = 2.0, 3.0, 8.0
SLACK_S = 4.0  # scheduling on a loaded 2-core machine; the stall itself costs DEADLINE_S
MiB = 1 << 20


@contextlib.contextmanager
def _unhurried():
    """Generous time limits for set-up on the healthy server."""
    with pytest.MonkeyPatch.context() as m:
        m.setenv("VLM_STORAGE_READ_TIMEOUT_S", "60")
        m.setenv("VLM_STORAGE_DEADLINE_S", "120")
        yield


@pytest.fixture(scope="module")
def frozen_server() -> S3Server:
    """A SeaweedFS for this module only, so freezing it never stalls other tests."""
    server = start_seaweedfs()
    yield server
    server.resume()
    server.stop()


@pytest.fixture(scope="module")
def big_object(frozen_server: S3Server, tmp_path_factory) -> tuple[str, str]:
    """``(uri, sha256)`` of an object larger than the socket buffers, so a freeze stalls its body mid-way."""
    src = tmp_path_factory.mktemp("big") / "stream.bin"
    digest = _random_file(src, 96 * MiB)
    uri = "s3://faults/streamed/stream.bin"
    with pytest.MonkeyPatch.context() as m, _unhurried():
        for key, value in frozen_server.env().items():
            m.setenv(key, value)
        storage.upload_file(src, uri)
    src.unlink()
    return uri, digest


@pytest.fixture
def s3(frozen_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The module's server in the environment with short time limits; always thawed after the test."""
    for key, value in frozen_server.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("VLM_STORAGE_CONNECT_TIMEOUT_S", str(CONNECT_S))
    monkeypatch.setenv("VLM_STORAGE_READ_TIMEOUT_S", str(READ_S))
    monkeypatch.setenv("VLM_STORAGE_DEADLINE_S", str(DEADLINE_S))
    yield frozen_server
    frozen_server.resume()


@pytest.fixture
def prefix(s3: S3Server) -> str:
    return f"s3://faults/{uuid.uuid4().hex[:12]}"


def _timed(fn, *args):
    """``(exception or None, seconds)`` of one call."""
    start = time.monotonic()
    try:
        fn(*args)
    except Exception as exc:  # noqa: BLE001 - the tests inspect it
        return exc, time.monotonic() - start
    return None, time.monotonic() - start


def _assert_gave_up(exc, elapsed: float, uri: str, s3: S3Server, budget: float = DEADLINE_S,
                    request: str | None = None) -> None:
    """``exc`` is the deadline error of an operation on ``uri`` whose request on ``request`` (default: ``uri``)
    never got an answer."""
    assert isinstance(exc, storage.StorageUnavailable), f"{uri}: expected StorageUnavailable, got {exc!r}"
    assert READ_S <= elapsed <= budget + SLACK_S, f"{uri}: failed after {elapsed:.1f}s, deadline {budget}s"
    assert exc.attempts >= 2, f"{uri}: no retry inside the deadline: {exc}"
    assert (exc.endpoint, exc.uri) == (s3.endpoint, uri), exc
    assert (exc.bucket, exc.key) == storage.split_s3(request or uri), exc
    message = str(exc)
    assert s3.endpoint in message and uri in message and f"{exc.attempts} attempt" in message
    assert f"{exc.elapsed_s:.1f}s" in message and exc.elapsed_s <= budget + 1.0


def _random_file(path, size: int) -> str:
    block = os.urandom(MiB)
    with open(path, "wb") as fh:
        for start in range(0, size, MiB):
            fh.write(block[: min(MiB, size - start)])
    return storage.sha256_file(path)


def test_every_operation_on_a_frozen_server_fails_within_the_deadline(s3, prefix):
    present, other = f"{prefix}/present.bin", f"{prefix}/other.bin"
    with _unhurried():
        storage.write_bytes(present, b"x" * 1000)
    bucket = storage.split_s3(prefix)[0]
    copy_to = f"{prefix}/copy.bin"
    fresh_bucket = f"faults-{uuid.uuid4().hex[:8]}"
    fresh = f"s3://{fresh_bucket}/x.bin"  # its write fails on the bucket check, and still names the object
    operations = {  # name: (call, what the error names, the request that failed)
        "read_bytes": (lambda: storage.read_bytes(present), present, present),
        "open_read": (lambda: storage.open_read(present).__enter__(), present, present),
        "exists": (lambda: storage.exists(present), present, present),
        "list_uris": (lambda: storage.list_uris(prefix), prefix, f"s3://{bucket}/"),  # GET /bucket?prefix=
        "delete": (lambda: storage.delete(other), other, other),
        "copy": (lambda: storage.copy(present, copy_to), f"{present} -> {copy_to}", present),  # stat first
        "write_bytes": (lambda: storage.write_bytes(other, b"y" * 64_000), other, other),
        "sha256_uri": (lambda: storage.sha256_uri(present), present, present),
        "write to a new bucket": (lambda: storage.write_bytes(fresh, b"z"), fresh, f"s3://{fresh_bucket}/"),
    }
    results: dict[str, tuple] = {}

    def run(name, fn):
        results[name] = _timed(fn)

    s3.pause()
    threads = [threading.Thread(target=run, args=(name, op[0])) for name, op in operations.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE_S + 3 * SLACK_S)
    assert sorted(results) == sorted(operations), "an operation hung past its deadline"
    for name, (exc, elapsed) in results.items():
        _, uri, request = operations[name]
        _assert_gave_up(exc, elapsed, uri, s3, request=request)
    s3.resume()
    assert storage.read_bytes(present) == b"x" * 1000  # nothing was damaged by the failed calls


def test_frozen_write_fails_within_the_deadline_and_publishes_no_partial_object(s3, prefix):
    uri = f"{prefix}/six-mb.bin"
    with _unhurried():
        storage.write_bytes(uri, b"old")
    new = os.urandom(6 * MiB)
    s3.pause()
    exc, elapsed = _timed(storage.write_bytes, uri, new)
    _assert_gave_up(exc, elapsed, uri, s3)
    s3.resume()
    time.sleep(1.0)  # let the thawed server work through what was queued while it was frozen
    # The server may still finish a request that reached it whole; it never publishes a part of one.
    assert storage.read_bytes(uri) in (b"old", new)
    assert storage.list_uris(prefix) == [uri]


def test_frozen_multipart_upload_fails_mid_way_and_publishes_nothing(s3, prefix, tmp_path, monkeypatch):
    monkeypatch.setattr(storage, "PART_SIZE", 5 * MiB)  # S3's smallest part: quicker to store on a busy machine
    src = tmp_path / "big.bin"
    _random_file(src, 3 * storage.PART_SIZE + 4321)  # four parts, three uploaded at a time
    uri = f"{prefix}/big.bin"
    with _unhurried():
        storage.write_bytes(f"{prefix}/warm", b"")  # the bucket exists before the upload starts
    # The real client's HTTP layer, watched: freeze the server as part 4 starts, i.e. once a part is stored.
    http = storage.s3_client()._http
    real_urlopen = http.urlopen
    stored, stored_at_freeze = [], []

    def freeze_at_part_4(method, url, *args, **kwargs):
        part = parse_qs(urlparse(url).query).get("partNumber", [None])[0]
        if method == "PUT" and part == "4" and not stored_at_freeze:
            stored_at_freeze.append(len(stored))
            s3.pause()
        resp = real_urlopen(method, url, *args, **kwargs)
        if part and resp.status == 200:
            stored.append(part)
        return resp

    monkeypatch.setattr(http, "urlopen", freeze_at_part_4)
    exc, elapsed = _timed(storage.upload_file, src, uri)
    assert stored_at_freeze and stored_at_freeze[0] >= 1, "the freeze did not come mid-way through the upload"
    # the part's deadline plus one short try to abort the upload
    _assert_gave_up(exc, elapsed, uri, s3, budget=DEADLINE_S + min(storage.ABORT_BUDGET_S, CONNECT_S + READ_S))
    assert "multipart upload" in str(exc)
    s3.resume()
    time.sleep(1.0)  # let the thawed server work through what was queued while it was frozen
    assert not storage.exists(uri)
    assert storage.list_uris(prefix) == [f"{prefix}/warm"]


def test_server_thawed_inside_the_deadline_lets_the_retry_succeed(s3, prefix, monkeypatch, caplog):
    monkeypatch.setenv("VLM_STORAGE_DEADLINE_S", "30")
    uri = f"{prefix}/resumed.bin"
    data = os.urandom(MiB)
    s3.pause()
    threading.Timer(READ_S + 1.5, s3.resume).start()  # after the first attempt has timed out
    with caplog.at_level(logging.WARNING, logger="vlm.storage"):
        exc, elapsed = _timed(storage.write_bytes, uri, data)
    assert exc is None, exc
    assert elapsed >= READ_S and "attempt 1 failed" in caplog.text and "ReadTimeoutError" in caplog.text
    assert storage.read_bytes(uri) == data
    s3.pause()
    threading.Timer(READ_S + 1.5, s3.resume).start()
    assert storage.read_bytes(uri) == data and storage.exists(uri)


def _stream_until_stalled(s3, uri: str, stall_at: int, thaw_after: float | None):
    """Read ``uri`` in 1 MiB chunks, freezing the server after ``stall_at`` bytes (and thawing it ``thaw_after``
    seconds later); returns (sha256 or the exception, seconds from the freeze to the end)."""
    h = hashlib.sha256()
    with storage.open_read(uri) as fh:
        h.update(fh.read(stall_at))
        s3.pause()
        frozen = time.monotonic()
        if thaw_after is not None:
            threading.Timer(thaw_after, s3.resume).start()
        try:
            for chunk in iter(lambda: fh.read(MiB), b""):
                h.update(chunk)
        except Exception as exc:  # noqa: BLE001
            return exc, time.monotonic() - frozen
    return h.hexdigest(), time.monotonic() - frozen


def test_stall_in_the_middle_of_a_streamed_read_hits_the_deadline(s3, big_object):
    uri, _ = big_object
    exc, since_freeze = _stream_until_stalled(s3, uri, stall_at=4 * MiB, thaw_after=None)
    assert isinstance(exc, storage.StorageUnavailable), exc
    assert "streaming, at byte" in str(exc) and exc.elapsed_s <= DEADLINE_S + 1.0
    assert since_freeze <= DEADLINE_S + 2 * SLACK_S  # draining the socket buffers, then the deadline
    _assert_gave_up(exc, exc.elapsed_s, uri, s3)


def test_streamed_read_resumes_where_it_broke_when_the_server_comes_back(s3, big_object, monkeypatch, caplog):
    monkeypatch.setenv("VLM_STORAGE_DEADLINE_S", "30")
    uri, digest = big_object
    with caplog.at_level(logging.WARNING, logger="vlm.storage"):
        got, _ = _stream_until_stalled(s3, uri, stall_at=4 * MiB, thaw_after=READ_S + 2.0)
    assert got == digest, got
    assert "broke at byte" in caplog.text  # it really resumed with a ranged GET, not a lucky buffer


def test_streamed_read_never_splices_an_object_replaced_while_it_was_broken(s3, prefix, monkeypatch):
    monkeypatch.setenv("VLM_STORAGE_DEADLINE_S", "30")
    uri = f"{prefix}/replaced.bin"
    with _unhurried():
        storage.write_bytes(uri, os.urandom(96 * MiB))
    with storage.open_read(uri) as fh:
        fh.read(4 * MiB)
        with _unhurried():
            storage.write_bytes(uri, b"the new version")
        s3.pause()  # break the old body, so the rest must come from a resumed (ranged) GET
        threading.Timer(READ_S + 1.0, s3.resume).start()
        with pytest.raises(storage.StorageError, match="was replaced while it was being read"):
            for _ in iter(lambda: fh.read(MiB), b""):
                pass
    assert storage.read_bytes(uri) == b"the new version"


@pytest.fixture
def throttled(s3, prefix, monkeypatch):
    """An object on the module's server, and a front to it answering ``503 SlowDown`` to the first connections."""
    uri = f"{prefix}/throttled.txt"
    with _unhurried():
        storage.write_text(uri, "through")
    fronts = []

    def front(refuse: int) -> FaultyFront:
        fronts.append(start_faulty_front(s3.endpoint, refuse))
        monkeypatch.setenv("AWS_ENDPOINT_URL", fronts[-1].endpoint)
        return fronts[-1]

    yield uri, front
    for f in fronts:
        f.close()


def test_throttled_requests_are_retried_until_the_server_serves(throttled, caplog):
    uri, front = throttled
    f = front(refuse=2)
    with caplog.at_level(logging.WARNING, logger="vlm.storage"):
        assert storage.read_text(uri) == "through"
    assert f.refused == 2 and caplog.text.count("HTTP 503 SlowDown") == 2


def test_persistent_throttling_gives_up_at_the_deadline_with_the_status(throttled, s3):
    uri, front = throttled
    f = front(refuse=10**6)
    start = time.monotonic()
    with pytest.raises(storage.StorageUnavailable, match="last error: HTTP 503") as err:
        storage.exists(uri)  # a HEAD: no body, so no S3 error code to quote
    assert DEADLINE_S - 1.0 <= time.monotonic() - start <= DEADLINE_S + SLACK_S
    assert f.refused == err.value.attempts >= 3 and f.endpoint in str(err.value)
