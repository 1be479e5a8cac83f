"""``train.precision``: ``auto`` computes in bf16 only where the device has bf16 matrix units."""

from __future__ import annotations

import logging

import pytest
import torch

from vlm.train import precision
from vlm.train.config import TrainConfig
from vlm.train.dist import DistInfo
from vlm.train.strategies.base import get_strategy

CPU = torch.device("cpu")


def _cpu_units(monkeypatch, avx512_bf16: bool, amx: bool) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)


@pytest.mark.parametrize(("avx512_bf16", "amx", "expected"), [(False, False, "fp32"), (True, False, "bf16"),
                                                               (False, True, "bf16")])
def test_auto_is_bf16_only_on_cpus_with_bf16_units(monkeypatch, caplog, avx512_bf16, amx, expected):
    _cpu_units(monkeypatch, avx512_bf16, amx)
    with caplog.at_level(logging.WARNING, logger="vlm.train.precision"):
        assert precision.resolve("auto", CPU) == expected
        assert precision.resolve("fp32", CPU) == "fp32"
    assert not caplog.records, "auto and fp32 never warn"


def test_explicit_bf16_is_honoured_with_a_warning_where_it_is_slow(monkeypatch, caplog):
    _cpu_units(monkeypatch, False, False)
    with caplog.at_level(logging.WARNING, logger="vlm.train.precision"):
        assert precision.resolve("bf16", CPU) == "bf16"
    assert "no AVX512-BF16/AMX" in caplog.text and "auto picks fp32" in caplog.text
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        precision.resolve("fp16", CPU)


def test_the_strategy_autocasts_in_the_resolved_precision(monkeypatch):
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=CPU)
    for units, dtype in ((False, torch.float32), (True, torch.bfloat16)):
        _cpu_units(monkeypatch, units, False)
        strategy = get_strategy(TrainConfig(strategy="none", precision="auto"), info)
        with strategy.autocast():
            y = torch.nn.functional.linear(torch.ones(2, 3), torch.ones(4, 3))
        assert (strategy.precision, y.dtype) == (("bf16" if units else "fp32"), dtype)
    assert TrainConfig().precision == "auto"
