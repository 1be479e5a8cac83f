import json

from typer.testing import CliRunner

from tests.train.conftest import write_config
from vlm.cli import app


def test_vlm_train_runs_one_process_and_reports(shards, tmp_path):
    cfg = write_config(tmp_path, steps=2, eval_samples=0)
    res = CliRunner().invoke(app, ["train", "--config", str(cfg), "--data", shards, "--output", str(tmp_path / "m"),
                                   "--set", "train.steps=3"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output[res.output.index("{"):])
    assert summary["steps"] == 3 and summary["model_uri"] == str(tmp_path / "m")
    assert (tmp_path / "m" / "vlm_config.json").exists()


def test_bad_config_is_a_clear_error(tmp_path):
    cfg = write_config(tmp_path, strategy="horovod")
    res = CliRunner().invoke(app, ["train", "--config", str(cfg)])
    assert res.exit_code == 2
    assert "train.strategy" in res.output and "'deepspeed'" in res.output


def test_missing_shards_fail_loudly(tmp_path):
    import pytest

    from vlm.config import parse_config
    from vlm.train import train
    from vlm.train.data import DataError
    from tests.train.conftest import tiny_config

    with pytest.raises(DataError, match="no 'train' shards"):
        train(parse_config(tiny_config(tmp_path)), "pretrain", str(tmp_path / "empty"), str(tmp_path / "m"))


def test_vlm_train_launches_two_processes_with_the_overrides(shards, tmp_path, capfd):
    """--nproc 2 goes through launch(): torchrun reads the same file and --set; the summary is printed once."""
    cfg = write_config(tmp_path, steps=2, eval_samples=0, strategy="ddp")
    res = CliRunner().invoke(app, ["train", "--config", str(cfg), "--data", shards, "--output", str(tmp_path / "m"),
                                   "--nproc", "2", "--set", "train.steps=3"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output[res.output.index("{"):])
    assert (summary["steps"], summary["world_size"], summary["strategy"]) == (3, 2, "ddp")
    assert '"world_size"' not in capfd.readouterr().out  # the workers wrote it to the summary file, not stdout
