"""Launching a training stage: :func:`launch` (the one way in: pipeline step, ``vlm train``, ``vlm align
finetune``), :func:`train` (one stage in this process: the ``python -m vlm.train`` entrypoint of each process),
and local torchrun launches. Both find the stage's MLflow run through :mod:`vlm.run_context` before the engine
starts; the engine only logs into it."""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlm import storage

if TYPE_CHECKING:
    from vlm.train.job import TrainResult

log = logging.getLogger(__name__)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vlm.train", description="Train one stage (run under torchrun for N processes).")
    p.add_argument("--config", required=True, help="pipeline YAML (local path or s3:// URI)")
    p.add_argument("--stage", default="pretrain", choices=["pretrain", "finetune"])
    p.add_argument("--data", default="", help="dataset URI (shards); default <root>/data")
    p.add_argument("--output", default="", help="model artefact URI; default <root>/<stage>/model")
    p.add_argument("--init-from", default="", help="model artefact URI to start from")
    p.add_argument("--labels", default="", help="expert labels URI (for model.experts); default train.labels")
    p.add_argument("--summary", default="", help="write the JSON summary here (rank 0)")
    p.add_argument("--run-id", default="", help="MLflow run to log into (default: the run of the checkpoints "
                   "being resumed, else a new one)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.steps=20 (YAML-parsed value)")
    return p


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    import yaml

    from vlm.config import set_path

    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        set_path(data, key, yaml.safe_load(value))
    return data


def load(config: str, overrides: list[str]):
    import yaml

    from vlm.config import ConfigError, parse_config

    try:
        data = yaml.safe_load(storage.read_text(config)) or {}
    except FileNotFoundError:
        raise ConfigError(f"{config}: config file not found") from None
    return parse_config(apply_overrides(data, overrides), source=str(config))


def main(argv: list[str] | None = None) -> int:
    from vlm.train import threads

    threads.apply()  # before anything imports torch
    from vlm.config import ConfigError
    from vlm.logs import setup_logging

    setup_logging()
    args = parser().parse_args(argv)
    try:
        cfg = load(args.config, args.set)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    from vlm.tracking import TrackingUnavailable
    from vlm.train.checkpoint import CheckpointError
    from vlm.train.labels import ExpertLabelsError

    _die_with_parent()
    try:
        summary = train(cfg, args.stage, args.data, args.output, args.init_from, args.labels, run_id=args.run_id)
    except (ExpertLabelsError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TrackingUnavailable as exc:  # raised after the checkpoints and the model artefact are written
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except Exception as exc:
        from vlm.cli_utils import input_error

        if (message := input_error(exc)) is None:
            raise
        print(f"error: {message}", file=sys.stderr)  # bad input: one line naming the shard, no traceback
        return 1
    if int(os.environ.get("RANK", "0")) == 0:
        text = json.dumps(summary.to_dict(), indent=2, default=str)
        if args.summary:
            storage.write_text(args.summary, text)
            log.info("summary -> %s", args.summary)
        else:
            print(text)
    return 0


def _die_with_parent() -> None:
    """Under torchrun (which starts workers in sessions of their own) die with the agent: a killed ``vlm run``
    must not leave a worker training on (Linux only)."""
    if "TORCHELASTIC_RUN_ID" not in os.environ or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the agent died before prctl took effect
        os._exit(1)


def torchrun_command(nproc: int, module_args: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "vlm.train", *module_args]


def launch_local(config_path: str, nproc: int, args: list[str] | None = None, env: dict[str, str] | None = None,
                 timeout: float | None = None) -> int:
    """Run ``torchrun --standalone --nproc_per_node N -m vlm.train --config FILE ARGS``; returns its exit code.

    With ``nproc`` 1 the entrypoint still runs under torchrun, so the code path is the one of a cluster job.
    """
    cmd = torchrun_command(nproc, ["--config", str(config_path), *(args or [])])
    from vlm.train import threads

    full_env = {**os.environ, **(env or {})}
    full_env.update(threads.env(nproc, full_env))
    log.info("launching: %s", " ".join(cmd))
    return subprocess.run(cmd, env=full_env, timeout=timeout).returncode


class LaunchError(RuntimeError):
    """The launched processes failed; rerunning resumes from the latest checkpoint."""

    def __init__(self, stage: str, returncode: int):
        super().__init__(f"{stage} failed (torchrun exit code {returncode}); rerun to resume from the latest "
                         "checkpoint")
        self.returncode = returncode


def with_run(job, cfg, run_id: str = "", parent_run_id: str = ""):
    """``job`` with the MLflow run it logs into: ``run_id``, else the :class:`vlm.run_context.RunContext`'s
    training run (the run of the checkpoints it resumes, else a new child of ``parent_run_id`` /
    ``$VLM_PARENT_RUN_ID``). Only rank 0 tracks: other ranks keep no run."""
    from vlm import tracking

    if run_id or not tracking.is_rank0():
        return job.with_run(run_id)
    from vlm.run_context import RunContext

    return job.with_run(RunContext.of(cfg, parent_run_id).training_run(job.stage, job.checkpoint_uri))


def train(cfg, stage: str = "pretrain", data_uri: str = "", output_uri: str = "", init_from: str = "",
          labels_uri: str = "", *, run_id: str = "", model_factory: Any = None) -> TrainResult:
    """Run one stage of ``cfg`` in this process (each process of a torchrun / PyTorchJob launch calls this).
    Resumes from the latest checkpoint (``train.resume``); logs into ``run_id`` or the run :func:`with_run`
    finds."""
    from vlm.train.job import TrainJob
    from vlm.train.trainer import run

    job = TrainJob.from_config(cfg, stage, data_uri or None, output_uri or None, init_from or None, labels_uri or None)
    return run(with_run(job, cfg, run_id), model_factory)


def launch(cfg, stage: str = "pretrain", data_uri: str = "", output_uri: str = "", init_from: str = "",
           labels_uri: str = "", *, config_uri: str = "", overrides: list[str] | tuple[str, ...] = (), nproc: int = 0,
           isolate: bool = False, env: dict[str, str] | None = None, summary_uri: str = "",
           run_tag: str = "", run_id: str = "", parent_run_id: str = "") -> TrainResult:
    """Run one training stage of ``cfg`` where it belongs; its :class:`vlm.train.job.TrainResult`.

    ``cluster.launcher`` ``pytorchjob`` / ``trainjob``: a cluster job (:func:`vlm.k8s.launch.run_cluster_job`)
    running ``python -m vlm.train --config config_uri`` (a URI the pods read), its JSON summary at ``summary_uri``
    (default ``<output>-summary.json``). ``local``: ``nproc`` (default the stage's ``nproc``) processes under
    torchrun, or this process when that is 1 (or this is already a torchrun worker) and not ``isolate`` (the
    pipeline step isolates even one process); either way with :mod:`vlm.train.threads`' policy.
    ``config_uri`` + ``overrides`` (``--set KEY=VALUE``) must give ``cfg``; without ``config_uri`` a local launch
    writes ``cfg`` to a temporary file. ``env``: extra environment of the launched processes. ``run_id``: the
    MLflow run to log into; without it this process finds or opens one (:func:`with_run`: the run of the
    checkpoints, else a new child of ``parent_run_id``) and hands it to the launched processes. Raises
    :class:`LaunchError` when torchrun fails, :class:`vlm.k8s.lifecycle.ClusterJobError` when the job does.
    """
    from vlm.train.job import TrainJob, TrainResult

    job = TrainJob.from_config(cfg, stage, data_uri or None, output_uri or None, init_from or None, labels_uri or None)
    cluster = cfg.cluster.launcher != "local"
    n = nproc or job.train.nproc
    if not cluster and not isolate and (n == 1 or "LOCAL_RANK" in os.environ):
        from vlm.train import threads

        threads.apply()
        from vlm.train.trainer import run

        return run(with_run(job, cfg, run_id, parent_run_id))
    job = with_run(job, cfg, run_id, parent_run_id)
    args = ["--stage", stage, "--run-id", job.run_id]
    for flag, value in (("--data", data_uri), ("--output", output_uri), ("--init-from", init_from),
                        ("--labels", labels_uri)):
        if value:
            args += [flag, value]
    args += [a for item in overrides for a in ("--set", item)]
    with tempfile.TemporaryDirectory(prefix="vlm-train-") as tmp:
        if not config_uri:
            if cluster:
                raise ValueError(f"cluster.launcher={cfg.cluster.launcher}: the job reads its config from a URI "
                                 "the pods can reach; pass config_uri")
            from vlm.config import dump_config

            config_uri = str(Path(tmp) / "config.yaml")
            Path(config_uri).write_text(dump_config(cfg))
        summary_uri = summary_uri or (job.output_uri.rstrip("/") + "-summary.json" if cluster
                                      else str(Path(tmp) / "summary.json"))
        args = ["--config", config_uri, *args, "--summary", summary_uri]
        if cluster:
            from vlm.k8s.launch import job_name, run_cluster_job

            run_cluster_job(cfg.cluster, job_name(stage, run_tag or "run"), args, env=env,
                            labels={"app.kubernetes.io/part-of": "vlm-platform", "vlm.stage": stage},
                            strategy=job.train.strategy)
        else:
            rc = launch_local(config_uri, n, args[2:], env=env)
            if rc != 0:
                raise LaunchError(stage, rc)
        return TrainResult.from_dict(json.loads(storage.read_text(summary_uri)))
