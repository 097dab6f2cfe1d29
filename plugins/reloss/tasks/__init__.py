"""The tasks, by name: ``TASKS = {'cls': ..., 'pose': ..., 'nat': ..., 'qa': ...}``.

Each task lives in one module (surrogate, metric, sampler, original loss, stored-prediction schema
and defaults) that defines a :class:`~reloss.tasks.base.Task` named ``TASK``; adding a task is
adding its module here.
"""
from __future__ import annotations

from . import cls, nat, pose, qa
from .base import Task

TASKS: dict[str, Task] = {module.TASK.name: module.TASK for module in (cls, pose, nat, qa)}


def get_task(name: str) -> Task:
    """The task called ``name``; a ValueError naming the known tasks otherwise."""
    if not isinstance(name, str) or name not in TASKS:
        raise ValueError(f"'task' should be one of {', '.join(map(repr, TASKS))} but got {name!r}")
    return TASKS[name]


__all__ = ["TASKS", "Task", "get_task"]
