"""Distributed strategies, by name (``train.strategy``). Add one by writing a module here with ``@register``."""

from vlm.train.strategies import ddp, deepspeed, fsdp2, simple  # noqa: F401 - registration side effects
from vlm.train.strategies.base import STRATEGIES, Strategy, get_strategy, register

__all__ = ["STRATEGIES", "Strategy", "get_strategy", "register"]
