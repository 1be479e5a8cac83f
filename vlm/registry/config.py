"""Config of model registration and promotion (the ``registry`` section)."""

from __future__ import annotations

from pydantic import Field

from vlm.configbase import Section


class GateConfig(Section):
    """When a new model version may become ``champion``.

    It passes when every ``thresholds`` metric is at least its value, every ``maximums`` metric at most its
    value, and the primary metric beats the current champion's by at least ``min_delta`` (strictly better
    when ``min_delta`` is 0; a first version with no champion passes on the thresholds alone).
    """

    primary_metric: str = "cider"
    higher_is_better: bool = True
    min_delta: float = Field(0.0, ge=0, description="must beat the champion's primary metric by at least this")
    thresholds: dict[str, float] = Field(default_factory=dict, description="metric -> minimum value")
    maximums: dict[str, float] = Field(default_factory=dict, description="metric -> maximum value (e.g. perplexity)")


class RegistryConfig(Section):
    enabled: bool = True
    model_name: str = Field("", description="registered model name; empty = vlm-<adapter>")
    gate: GateConfig = GateConfig()
    auto_promote: bool = Field(True, description="run the gate right after registering a new version")
    extra_pip_requirements: list[str] = Field(default_factory=list,
                                              description="added to the pyfunc's pinned pip requirements")
