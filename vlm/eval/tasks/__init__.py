"""Evaluation tasks. A task is a function ``(model, samples, cfg) -> TaskResult`` registered by name.

Add one by writing ``vlm/eval/tasks/<name>.py`` with ``@register_task("<name>")`` and importing it below
(and adding the name to ``EvalConfig.tasks``).
"""

from vlm.eval.tasks.base import TASKS, TaskResult, register_task
from vlm.eval.tasks import caption, retrieval, vqa  # noqa: E402,F401 - registration side effect

__all__ = ["TASKS", "TaskResult", "register_task"]
