"""Checkpoints complete or unused: the file record, fallback to the newest complete checkpoint, clear errors,
and no code run from a checkpoint (2 processes under torchrun, plus direct checks of the record)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.train.conftest import tiny_config
from vlm.train.checkpoint import CheckpointError, CheckpointManager, rank_files, safe_torch_load, verify
from vlm.train.dist import DistInfo
from vlm.train.launch import torchrun_command

STEPS = 4  # checkpoints at steps 2 and 4


def _launch(tmp: Path, shards: str, tracking: str, steps: int = STEPS, **train_kw) -> tuple[int, str, dict | None]:
    """A 2-process run writing checkpoints under ``tmp/checkpoints/pretrain``: (exit code, output, summary)."""
    cfg = tiny_config(tmp, steps=steps, checkpoint_every=2, keep_checkpoints=2, eval_samples=0,
                      **{"strategy": "ddp", **train_kw})
    cfg["tracking"]["uri"] = tracking
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    summary = tmp / "summary.json"
    summary.unlink(missing_ok=True)
    env = {**os.environ, "VLM_CACHE_DIR": str(tmp / "cache"), "OMP_NUM_THREADS": "1", "COLUMNS": "1000"}
    args = ["--config", str(path), "--data", shards, "--output", str(tmp / "model"), "--summary", str(summary)]
    proc = subprocess.run(torchrun_command(2, args), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=600)
    out = " ".join(proc.stdout.split())  # log lines may wrap
    return proc.returncode, out, json.loads(summary.read_text()) if proc.returncode == 0 else None


@pytest.fixture(scope="module")
def base(shards, tmp_path_factory) -> dict:
    """One uninterrupted 2-process DDP run (fp32): checkpoints step-000002 and step-000004."""
    tmp = tmp_path_factory.mktemp("base")
    tracking = f"sqlite:///{tmp / 'mlflow.db'}"
    rc, out, summary = _launch(tmp, shards, tracking)
    assert rc == 0, out[-4000:]
    return {"ckpt": tmp / "checkpoints" / "pretrain", "tracking": tracking, "summary": summary}


def _copy(base: dict, tmp: Path, tags: tuple[str, ...] = ("step-000002", "step-000004")) -> Path:
    ckpt = tmp / "checkpoints" / "pretrain"
    for tag in tags:
        shutil.copytree(base["ckpt"] / tag, ckpt / tag)
    (ckpt / "latest").write_text(tags[-1])
    return ckpt


def _weights(ckpt: Path, tag: str) -> dict[str, torch.Tensor]:
    return load_file(str(ckpt / tag / "trainable.safetensors"))


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _forge_record(folder: Path, rel: str) -> None:
    """Rewrite ``state.json``'s entry of ``rel`` to match the file (as someone with write access could)."""
    state = json.loads((folder / "state.json").read_text())
    data = (folder / rel).read_bytes()
    state["files"][rel] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (folder / "state.json").write_text(json.dumps(state))


class _Payload:
    """Unpickling it creates ``marker``: code run by loading a checkpoint file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_the_record_lists_every_file_of_every_rank(base):
    for tag in ("step-000002", "step-000004"):
        folder = base["ckpt"] / tag
        state = json.loads((folder / "state.json").read_text())
        on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} - {"state.json"}
        assert set(state["files"]) == on_disk
        assert {"trainable.safetensors", "trainer.pt", *rank_files(0), *rank_files(1)} <= on_disk
        for rel, rec in state["files"].items():
            data = (folder / rel).read_bytes()
            assert rec == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        assert verify(folder) == (state, [])
    assert not list(base["ckpt"].glob("step-*/rank-*.pt"))  # per-rank state is safetensors + JSON, not pickle


def test_a_missing_rank_state_falls_back_to_the_previous_checkpoint(base, shards, tmp_path):
    ckpt = _copy(base, tmp_path)
    (ckpt / "step-000004" / "rank-00001.json").unlink()
    rc, out, summary = _launch(tmp_path, shards, base["tracking"])
    assert rc == 0, out[-4000:]
    assert "rank-00001.json: missing" in out and "step-000004 is incomplete or corrupt" in out
    assert summary["resumed_from_step"] == 2 and summary["steps"] == STEPS
    # the same data positions and RNG states as the uninterrupted run: the same final weights
    assert summary["final_loss"] == pytest.approx(base["summary"]["final_loss"], abs=1e-6)
    ref, got = _weights(base["ckpt"], "step-000004"), _weights(ckpt, "step-000004")
    assert ref.keys() == got.keys()
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], atol=1e-6, rtol=0)


def test_a_truncated_weights_file_falls_back(base, shards, tmp_path):
    ckpt = _copy(base, tmp_path)
    weights = ckpt / "step-000004" / "trainable.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    rc, out, summary = _launch(tmp_path, shards, base["tracking"])
    assert rc == 0, out[-4000:]
    assert "trainable.safetensors: size mismatch" in out
    assert summary["resumed_from_step"] == 2 and summary["steps"] == STEPS


def test_a_single_corrupt_checkpoint_is_a_clear_error(base, shards, tmp_path):
    ckpt = _copy(base, tmp_path, ("step-000002",))
    _flip_a_byte(ckpt / "step-000002" / "trainer.pt")  # same size, different content
    rc, out, summary = _launch(tmp_path, shards, base["tracking"])
    assert rc != 0 and summary is None
    assert f"no complete checkpoint under {ckpt}" in out
    assert "trainer.pt: sha256 mismatch" in out
    assert not (ckpt / "step-000004").exists()  # it did not start from scratch over it


def test_a_planted_pickle_is_refused(base, shards, tmp_path):
    ckpt = _copy(base, tmp_path)
    marker = tmp_path / "pwned"
    folder = ckpt / "step-000004"
    torch.save({"optimizer": _Payload(marker), "scheduler": {}}, folder / "trainer.pt")
    _forge_record(folder, "trainer.pt")  # the record is no defence against someone who can write it
    assert verify(folder)[1] == []
    rc, out, _ = _launch(tmp_path, shards, base["tracking"])
    assert rc != 0 and not marker.exists()
    assert f"{folder / 'trainer.pt'}: refused to load" in out


def test_rank_state_and_trainer_state_never_unpickle(base, tmp_path):
    folder = tmp_path / "step-000004"
    shutil.copytree(base["ckpt"] / "step-000004", folder)
    marker = tmp_path / "pwned"
    torch.save(_Payload(marker), folder / "trainer.pt")
    with pytest.raises(CheckpointError, match="trainer.pt: refused to load"):
        safe_torch_load(folder / "trainer.pt")
    manager = CheckpointManager(str(tmp_path / "ckpt"), DistInfo(1, 2, 1, torch.device("cpu")))
    saved = manager.read_rank_state(folder)  # rank 1's own files
    assert saved["positions"] == json.loads((folder / "rank-00001.json").read_text())["positions"]
    assert isinstance(saved["rng"]["torch"], torch.Tensor) and isinstance(saved["rng"]["python"]["state"], list)
    torch.save({"rng": _Payload(marker)}, folder / "rank-00001.safetensors")
    with pytest.raises(CheckpointError, match="rank-00001.safetensors: not a safetensors file"):
        manager.read_rank_state(folder)
    assert not marker.exists()


@pytest.mark.parametrize("damage,problem", [
    (lambda f: (f / "rank-00000.safetensors").unlink(), "rank-00000.safetensors: missing"),
    (lambda f: _flip_a_byte(f / "rank-00000.safetensors"), "rank-00000.safetensors: sha256 mismatch"),
    (lambda f: (f / "trainer.pt").write_bytes(b"x"), "trainer.pt: size mismatch (1 bytes"),
    (lambda f: (f / "state.json").unlink(), "state.json: missing"),
], ids=["missing", "sha256", "size", "no-record"])
def test_verify_names_the_bad_file(base, tmp_path, damage, problem):
    folder = tmp_path / "step-000004"
    shutil.copytree(base["ckpt"] / "step-000004", folder)
    damage(folder)
    problems = verify(folder)[1]
    assert len(problems) == 1 and problems[0].startswith(problem), problems


def test_verify_wants_every_rank_of_the_world_size(base, tmp_path):
    folder = tmp_path / "step-000004"
    shutil.copytree(base["ckpt"] / "step-000004", folder)
    state = json.loads((folder / "state.json").read_text())
    del state["files"]["rank-00001.json"]  # an incomplete record is not a complete checkpoint either
    (folder / "state.json").write_text(json.dumps(state))
    assert verify(folder)[1] == ["rank-00001.json: not in the file record of 2 rank(s)"]


def test_s3_checkpoints_fall_back_too(shards, tmp_path, s3_prefix, caplog):
    from vlm import storage
    from vlm.config import parse_config
    from vlm.train import train

    def cfg(steps):
        return parse_config(tiny_config(tmp_path, steps=steps, checkpoint_every=1, eval_samples=0,
                                        checkpoint_dir=f"{s3_prefix}/ckpt"))

    train(cfg(2), "pretrain", shards, f"{s3_prefix}/model")
    state = json.loads(storage.read_text(f"{s3_prefix}/ckpt/step-000002/state.json"))
    assert "rank-00000.safetensors" in state["files"] and "trainer.pt" in state["files"]
    storage.delete(f"{s3_prefix}/ckpt/step-000002/trainer.pt")
    out = train(cfg(3), "pretrain", shards, f"{s3_prefix}/model")
    assert out.resumed_from_step == 1 and out.steps == 3
    assert "trainer.pt: missing" in caplog.text
    assert storage.read_text(f"{s3_prefix}/ckpt/latest") == "step-000003"


@pytest.mark.slow
def test_deepspeed_resumes_weights_only_and_refuses_a_planted_pickle(shards, tmp_path):
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ds = {"strategy": "deepspeed", "zero_stage": 2}
    rc, out, _ = _launch(tmp_path, shards, tracking, steps=2, **ds)
    assert rc == 0, out[-4000:]
    rc, out, summary = _launch(tmp_path, shards, tracking, steps=4, **ds)  # DeepSpeed's files load weights-only
    assert rc == 0, out[-4000:]
    assert summary["resumed_from_step"] == 2
    folder = tmp_path / "checkpoints" / "pretrain" / "step-000004"
    rel = "deepspeed/zero_pp_rank_1_mp_rank_00_optim_states.pt"
    marker = tmp_path / "pwned"
    torch.save({"optimizer_state_dict": _Payload(marker)}, folder / rel)
    _forge_record(folder, rel)
    rc, out, _ = _launch(tmp_path, shards, tracking, steps=6, **ds)
    assert rc != 0 and not marker.exists()
    assert f"{folder / rel}: refused to load" in out
