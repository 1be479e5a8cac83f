"""2-process (gloo) runs under torchrun: each strategy, rank-0-only MLflow tracking, kill -9 and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.train.conftest import tiny_config
from vlm.train.launch import torchrun_command

STEPS = 24


def _launch(tmp: Path, shards: str, env_extra: dict | None = None, wait: bool = True, name: str = "train-dist",
            **train_kw):
    cfg = tiny_config(tmp, steps=STEPS, checkpoint_every=4, keep_checkpoints=2, grad_accum=2, eval_samples=8, **train_kw)
    cfg["name"] = name
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "VLM_CACHE_DIR": str(tmp / "cache"), "OMP_NUM_THREADS": "1", **(env_extra or {})}
    args = ["--config", str(path), "--data", shards, "--output", str(tmp / "model"), "--summary", str(tmp / "summary.json")]
    proc = subprocess.Popen(torchrun_command(2, args), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    if not wait:
        return proc
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    return json.loads((tmp / "summary.json").read_text())


def _weights(summary: dict) -> dict[str, torch.Tensor]:
    ckpt = Path(summary["checkpoint_uri"])
    return load_file(str(ckpt / (ckpt / "latest").read_text() / "trainable.safetensors"))


@pytest.fixture(scope="module")
def ddp_run(shards, tmp_path_factory, mlflow_server, s3_server):
    """One uninterrupted DDP run, tracked on the real MLflow server (the reference for the other tests)."""
    tmp = tmp_path_factory.mktemp("ddp")
    env = {**s3_server.env(), "MLFLOW_TRACKING_URI": mlflow_server.uri}
    return _launch(tmp, shards, env, name="train-ddp", strategy="ddp", precision="bf16")


def test_ddp_trains_and_tracks_on_rank0_only(ddp_run, mlflow_server):
    from mlflow import MlflowClient

    s = ddp_run
    assert s["world_size"] == 2 and s["steps"] == STEPS and s["strategy"] == "ddp"
    assert s["eval_after"]["eval/caption_loss"] < s["eval_before"]["eval/caption_loss"]
    client = MlflowClient(mlflow_server.uri)
    exp = client.get_experiment_by_name("train-ddp")
    runs = client.search_runs([exp.experiment_id])
    assert [r.info.run_id for r in runs] == [s["run_id"]]  # one run, not one per rank
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["vlm.stage"] == "pretrain"
    assert run.data.params["world_size"] == "2" and run.data.params["train.strategy"] == "ddp"
    for key in ("train/loss", "train/lr", "train/grad_norm", "perf/samples_per_s", "perf/tokens_per_s",
                "perf/peak_mem_mb", "eval/caption_loss", "eval/final_caption_loss"):
        assert key in run.data.metrics, key
    history = client.get_metric_history(s["run_id"], "train/loss")
    assert sorted(m.step for m in history) == list(range(1, STEPS + 1))  # logged once per step (by rank 0)
    lrs = client.get_metric_history(s["run_id"], "train/lr")
    assert max(m.value for m in lrs) == pytest.approx(1e-2) and lrs[-1].value < 1e-2
    arts = {a.path for a in client.list_artifacts(s["run_id"], "model")}
    assert "model/vlm_config.json" in arts


@pytest.mark.parametrize("strategy,zero", [
    ("fsdp2", 2),
    ("deepspeed", 2),
    pytest.param("deepspeed", 1, marks=pytest.mark.slow),
    pytest.param("deepspeed", 3, marks=pytest.mark.slow),
])
def test_strategies_match_ddp(strategy, zero, ddp_run, shards, tmp_path):
    s = _launch(tmp_path, shards, strategy=strategy, zero_stage=zero, precision="bf16")
    assert s["steps"] == STEPS and s["strategy"] == strategy
    # same data, seeds and maths: the losses agree with DDP up to bf16 / reduction-order noise
    assert s["final_loss"] == pytest.approx(ddp_run["final_loss"], abs=0.05)
    assert s["eval_after"]["eval/caption_loss"] == pytest.approx(ddp_run["eval_after"]["eval/caption_loss"], abs=0.05)
    ref, got = _weights(ddp_run), _weights(s)
    assert ref.keys() == got.keys()
    # ZeRO-3 also partitions the parameters (different gather/reduce order): in bf16 at lr 1e-2 a few single
    # elements drift up to ~0.03 while the losses agree; the other strategies stay within 0.02
    atol = 4e-2 if (strategy, zero) == ("deepspeed", 3) else 2e-2
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], atol=atol, rtol=0)


def _ranks(proc: subprocess.Popen) -> list:
    import psutil

    return [c for c in psutil.Process(proc.pid).children(recursive=True) if "vlm.train" in " ".join(c.cmdline())]


@pytest.mark.slow
def test_kill_a_rank_then_resume(ddp_run, shards, tmp_path):
    """kill -9 one rank after a checkpoint; the relaunch resumes from it and ends where DDP ended."""
    proc = _launch(tmp_path, shards, wait=False, strategy="ddp", precision="bf16")
    latest = tmp_path / "checkpoints" / "pretrain" / "latest"
    deadline = time.time() + 300
    while time.time() < deadline and not latest.exists() and proc.poll() is None:
        time.sleep(0.05)
    assert latest.exists(), proc.communicate()[0][-4000:]
    victim = _ranks(proc)[-1]
    os.kill(victim.pid, signal.SIGKILL)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0, "the job should fail when a rank dies"
    killed_at = int(latest.read_text().split("-")[1])
    assert killed_at < STEPS, "the run finished before the kill; make it longer"

    s = _launch(tmp_path, shards, strategy="ddp", precision="bf16")
    assert s["resumed_from_step"] == killed_at and s["steps"] == STEPS
    assert s["final_loss"] == pytest.approx(ddp_run["final_loss"], abs=1e-4)
    ref, got = _weights(ddp_run), _weights(s)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], atol=1e-5, rtol=0)
