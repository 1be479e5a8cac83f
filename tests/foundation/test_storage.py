"""Storage round trips on local disk and on a real S3 server (SeaweedFS)."""

from __future__ import annotations

import hashlib
import os
import threading
import time

import pytest

from vlm import storage


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "store")
    return request.getfixturevalue("s3_prefix")


def test_round_trip_list_exists_copy_delete(root):
    a = storage.join(root, "dir", "a.bin")
    b = storage.join(root, "dir", "sub", "b.txt")
    storage.write_bytes(a, b"\x00\x01payload")
    storage.write_text(b, "héllo")
    assert storage.read_bytes(a) == b"\x00\x01payload"
    assert storage.read_text(b) == "héllo"
    assert storage.exists(a) and not storage.exists(storage.join(root, "dir", "nope"))
    assert storage.list_uris(storage.join(root, "dir")) == sorted([a, b])
    c = storage.join(root, "copy", "a.bin")
    storage.copy(a, c)
    assert storage.read_bytes(c) == b"\x00\x01payload"
    assert storage.sha256_uri(c) == hashlib.sha256(b"\x00\x01payload").hexdigest()
    storage.delete(c)
    assert not storage.exists(c)
    storage.delete(storage.join(root, "dir"), recursive=True)
    assert storage.list_uris(storage.join(root, "dir")) == []


def test_streaming_open(root):
    uri = storage.join(root, "stream.bin")
    with storage.open_write(uri) as fh:
        for i in range(100):
            fh.write(bytes([i]) * 1000)
    with storage.open_read(uri) as fh:
        first = fh.read(1000)
        rest = fh.read()
    assert first == b"\x00" * 1000 and len(rest) == 99_000


def test_missing_object_raises_file_not_found(root):
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(storage.join(root, "absent"))


def test_interrupted_write_leaves_old_content(root):
    uri = storage.join(root, "atomic.txt")
    storage.write_text(uri, "old")
    with pytest.raises(RuntimeError, match="boom"):
        with storage.open_write(uri) as fh:
            fh.write(b"half-written new content")
            raise RuntimeError("boom")
    assert storage.read_text(uri) == "old"
    # and no temporary debris is visible to readers
    assert storage.list_uris(root) == [uri]


def test_interrupted_first_write_creates_nothing(root):
    uri = storage.join(root, "never.txt")
    with pytest.raises(KeyboardInterrupt):
        with storage.open_write(uri) as fh:
            fh.write(b"x")
            raise KeyboardInterrupt
    assert not storage.exists(uri)


def test_reader_never_sees_partial_local_file(tmp_path):
    uri = str(tmp_path / "big.bin")
    storage.write_bytes(uri, b"a" * 1_000_000)
    seen = set()
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            data = storage.read_bytes(uri)
            seen.add((len(data), data[:1]))

    t = threading.Thread(target=reader)
    t.start()
    for ch in b"bcdef":
        storage.write_bytes(uri, bytes([ch]) * 1_000_000)
    stop.set()
    t.join()
    assert all(length == 1_000_000 for length, _ in seen)


def test_large_multipart_object_on_s3(s3_prefix, tmp_path):
    size = 2 * storage.PART_SIZE + 123_457  # three parts
    src = tmp_path / "big.bin"
    block = os.urandom(1 << 20)
    with open(src, "wb") as fh:
        written = 0
        while written < size:
            chunk = block[: min(len(block), size - written)]
            fh.write(chunk)
            written += len(chunk)
    uri = f"{s3_prefix}/big.bin"
    storage.upload_file(src, uri)
    assert storage.sha256_uri(uri) == storage.sha256_file(src)
    stat = storage.s3_client().stat_object(*storage.split_s3(uri))
    assert stat.size == size
    assert "-" in stat.etag.strip('"'), "expected a multipart upload ETag"
    out = storage.download_file(uri, tmp_path / "back.bin")
    assert storage.sha256_file(out) == storage.sha256_file(src)


def test_copy_tree_and_local_copy_between_local_and_s3(tmp_path, s3_prefix):
    src = tmp_path / "model"
    (src / "sub").mkdir(parents=True)
    (src / "vlm_config.json").write_text("{}")
    (src / "sub" / "w.bin").write_bytes(b"123")
    uploaded = storage.upload_tree(src, f"{s3_prefix}/model")
    assert sorted(uploaded) == [f"{s3_prefix}/model/sub/w.bin", f"{s3_prefix}/model/vlm_config.json"]
    local = storage.local_copy(f"{s3_prefix}/model", cache_dir=tmp_path / "cache")
    assert (local / "sub" / "w.bin").read_bytes() == b"123"
    single = storage.local_copy(f"{s3_prefix}/model/vlm_config.json", cache_dir=tmp_path / "cache2")
    assert single.read_text() == "{}"


def test_s3_unreachable_endpoint_fails_clearly_within_the_deadline(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("VLM_STORAGE_DEADLINE_S", "3")
    monkeypatch.setenv("AWS_REGION", "us-east-1")  # else the first request looks up the bucket's region
    start = time.monotonic()
    with pytest.raises(storage.StorageUnavailable) as err:
        storage.read_bytes("s3://bucket/some/key")
    elapsed = time.monotonic() - start
    assert 2.0 <= elapsed <= 6.0, elapsed  # retried (connection refused) until the deadline, not beyond
    assert err.value.attempts >= 2 and (err.value.bucket, err.value.key) == ("bucket", "some/key")
    message = str(err.value)
    assert "http://127.0.0.1:1" in message and "s3://bucket/some/key" in message and "NewConnectionError" in message


@pytest.mark.parametrize("name", ["VLM_STORAGE_CONNECT_TIMEOUT_S", "VLM_STORAGE_READ_TIMEOUT_S",
                                  "VLM_STORAGE_DEADLINE_S"])
@pytest.mark.parametrize("value", ["soon", "0", "-1"])
def test_bad_time_limit_in_environment_is_a_clear_error(monkeypatch, name, value):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv(name, value)
    with pytest.raises(storage.StorageError, match=f"{name} must be a number of seconds > 0.*{value!r}"):
        storage.exists("s3://bucket/key")


def test_time_limits_come_from_the_environment(monkeypatch):
    for name in ("VLM_STORAGE_CONNECT_TIMEOUT_S", "VLM_STORAGE_READ_TIMEOUT_S", "VLM_STORAGE_DEADLINE_S"):
        monkeypatch.delenv(name, raising=False)
    assert storage.Timeouts.from_env() == storage.Timeouts(connect_s=10, read_s=60, deadline_s=180)
    monkeypatch.setenv("VLM_STORAGE_READ_TIMEOUT_S", "2.5")
    monkeypatch.setenv("VLM_STORAGE_DEADLINE_S", "840")
    assert storage.Timeouts.from_env() == storage.Timeouts(connect_s=10, read_s=2.5, deadline_s=840)
    monkeypatch.setenv("VLM_STORAGE_DEADLINE_S", "900")  # retried signatures would be older than 15 minutes
    with pytest.raises(storage.StorageError, match="at most 840"):
        storage.Timeouts.from_env()


def test_credentials_only_from_environment(monkeypatch, s3_server):
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(Exception) as err:
        storage.write_bytes("s3://vlm-test/denied.txt", b"x")
    assert "SignatureDoesNotMatch" in str(err.value) or "Access" in str(err.value)
