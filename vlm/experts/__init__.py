"""Expert-label precomputation (Prismer's ensemble of frozen experts).

``run_experts`` computes label shards aligned 1:1 with the data shards; ``ExpertLabels`` looks them up by
key (training attaches them with ``vlm.train.labels.ExpertAttacher``). Experts live in ``vlm/experts/zoo/``.
"""

from vlm.experts.base import Batch, Expert, ExpertBrokenError, ExpertError, Label, PerImageExpert
from vlm.experts.config import ExpertsConfig
from vlm.experts.registry import available, build, order, register, resolve

__all__ = ["Batch", "Expert", "ExpertBrokenError", "ExpertError", "ExpertsConfig", "Label", "PerImageExpert",
           "available", "build", "order", "register", "resolve", "run_experts", "shard_groups",
           "write_labels_index", "ExpertLabels"]


def __getattr__(name: str):
    if name in ("run_experts", "shard_groups", "write_labels_index"):
        from vlm.experts import runner

        return getattr(runner, name)
    if name == "ExpertLabels":
        from vlm.experts import loader

        return getattr(loader, name)
    raise AttributeError(name)
