"""Base class for every config section: strict (unknown keys are errors) and typed."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A config section. Unknown keys are rejected so that typos never pass silently."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())
