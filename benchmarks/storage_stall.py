"""How long storage operations take to fail when the S3 server stalls (SIGSTOP), with the time limits in the env.

Starts a throw-away SeaweedFS, stores a few objects, opens a streamed read, then freezes the server and runs
every kind of operation at once; prints, per operation, the seconds from the freeze to the error, the attempts
and the error. Defaults: ``python benchmarks/storage_stall.py`` (about 3 minutes). The tests' settings:
``VLM_STORAGE_CONNECT_TIMEOUT_S=2 VLM_STORAGE_READ_TIMEOUT_S=3 VLM_STORAGE_DEADLINE_S=8 python benchmarks/...``.

It also times MLflow's own S3 client (boto3, botocore's defaults; the VLM_STORAGE_* settings do not reach it),
as the MLflow server runs it for proxied artefacts. ``--mlflow`` adds the whole artefact path of the pipeline:
``MlflowClient.log_artifact`` through a real ``mlflow server --serve-artifacts`` to the frozen S3 (~20 minutes).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.servers import start_mlflow, start_seaweedfs  # noqa: E402
from vlm import storage  # noqa: E402

MiB = 1 << 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mlflow", action="store_true", help="also time log_artifact through an MLflow server")
    args = parser.parse_args()
    server = start_seaweedfs()
    os.environ.update(server.env())
    tracking = start_mlflow(server) if args.mlflow else None
    try:
        _run(server, tracking)
    finally:
        server.resume()
        if tracking:
            tracking.stop()
        server.stop()


def _run(server, tracking) -> None:
    t = storage.Timeouts.from_env()
    print(f"limits: connect {t.connect_s:g}s, read {t.read_s:g}s, deadline {t.deadline_s:g}s")
    root = "s3://stall/bench"
    small, big = f"{root}/small.bin", f"{root}/big.bin"
    storage.write_bytes(small, b"x" * 1000)
    storage.write_bytes(big, os.urandom(96 * MiB))
    reading = storage.open_read(big)  # keep the context manager: dropping it closes the stream
    stream = reading.__enter__()
    stream.read(4 * MiB)

    def drain():
        for _ in iter(lambda: stream.read(MiB), b""):
            pass

    artefact = Path(tempfile.mkdtemp(prefix="vlm-stall-")) / "metrics.json"
    artefact.write_text("{}")

    def boto3_upload():
        from mlflow.store.artifact.s3_artifact_repo import S3ArtifactRepository

        S3ArtifactRepository("s3://stall/mlflow-direct").log_artifact(str(artefact))

    operations = {
        "write 6 MB (one PUT)": lambda: storage.write_bytes(f"{root}/six.bin", os.urandom(6 * MiB)),
        "write 40 MB (multipart)": lambda: storage.write_bytes(f"{root}/forty.bin", os.urandom(40 * MiB)),
        "read_bytes": lambda: storage.read_bytes(small),
        "streamed read, mid-body": drain,
        "exists": lambda: storage.exists(small),
        "list_uris": lambda: storage.list_uris(root),
        "delete": lambda: storage.delete(small),
        "copy": lambda: storage.copy(small, f"{root}/copy.bin"),
        "MLflow's boto3 S3 upload": boto3_upload,
    }
    if tracking:
        from mlflow import MlflowClient

        client = MlflowClient(tracking.uri)
        run_id = client.create_run(client.create_experiment("stall")).info.run_id
        operations["MLflow log_artifact (proxied)"] = lambda: client.log_artifact(run_id, str(artefact))
    results: dict[str, tuple[float, str]] = {}

    def run(name, fn):
        try:
            fn()
            outcome = "succeeded (!)"
        except storage.StorageUnavailable as exc:
            outcome = f"{exc.attempts} attempts: {exc}"
        except Exception as exc:  # noqa: BLE001 - reported
            outcome = f"{type(exc).__name__}: {str(exc)[:300]}"
        results[name] = (time.monotonic() - frozen, outcome)
        print(f"done: {name} after {results[name][0]:.1f}s", flush=True)

    server.pause()
    frozen = time.monotonic()
    threads = [threading.Thread(target=run, args=item, daemon=True) for item in operations.items()]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for name in operations:
        seconds, outcome = results[name]
        print(f"{name:26s} stall -> error {seconds:6.1f}s  {outcome}")


if __name__ == "__main__":
    main()
