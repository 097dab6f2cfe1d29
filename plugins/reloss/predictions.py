"""Stored predictions of a real model, cut into chunks for pretraining and evaluation.

The file is a dict saved with ``torch.save`` and read with ``torch.load(weights_only=True)``:
``task`` (a name in :data:`reloss.tasks.TASKS`), the task's ``prediction_fields`` (pred, target
and, for tasks with weights, weight; each task module's docstring gives their shapes), and
optionally ``group`` (M,) int: a chunk never mixes groups (e.g. the epoch of a snapshot).
"""
from __future__ import annotations

import torch

from .tasks import TASKS, get_task


def _field_error(path, field, expected, got):
    return ValueError(f"{path}: field '{field}' should be {expected} but got {got}")


def _check_predictions(path, data):
    if not isinstance(data, dict):
        raise ValueError(f"{path}: should hold a dict of tensors but holds {type(data).__name__}")
    name = data.get("task")
    if not isinstance(name, str) or name not in TASKS:
        raise _field_error(path, "task", f"one of {', '.join(map(repr, TASKS))}", repr(name))
    task = TASKS[name]
    missing = [f for f in task.prediction_fields if f not in data]
    if missing:
        raise ValueError(f"{path}: missing field(s) {', '.join(map(repr, missing))} for task "
                         f"'{name}' (needs {', '.join(task.prediction_fields)})")
    fields = {field: data[field] for field in task.prediction_fields}
    for field, value in fields.items():
        if not isinstance(value, torch.Tensor):
            raise _field_error(path, field, "a tensor", type(value).__name__)
    first = task.prediction_fields[0]
    pred = fields[first]
    ndim = task.prediction_ndim
    if pred.dim() != ndim or not pred.is_floating_point():
        raise _field_error(path, first, f"a {ndim}-D floating-point tensor",
                           f"{pred.dtype} {tuple(pred.shape)}")
    count = pred.shape[0]
    for field, shape in task.prediction_shapes(pred).items():
        if tuple(fields[field].shape) != shape:
            raise _field_error(path, field, f"shape {shape}",
                               f"shape {tuple(fields[field].shape)}")
    for field, value in fields.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise _field_error(path, field, "finite values", "NaN or Inf")
    label_field = task.index_field
    if label_field is not None:
        labels, classes = fields[label_field], pred.shape[-1]
        if labels.is_floating_point():
            raise _field_error(path, label_field, "integer indices", labels.dtype)
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= classes):
            raise _field_error(path, label_field, f"indices in [0, {classes})",
                               f"values in [{int(labels.min())}, {int(labels.max())}]")
    group = data.get("group")
    if group is not None and (not isinstance(group, torch.Tensor) or tuple(group.shape) != (count,)
                              or group.is_floating_point()):
        raise _field_error(path, "group", f"an integer tensor of shape ({count},)",
                           getattr(group, "shape", type(group).__name__))
    return name, fields, group


def load_predictions(path: str, task: str, chunk_size: int,
                     generator: torch.Generator | None = None) -> list[tuple]:
    """Stored predictions (schema above) cut into chunks: a list of (pred, target, weight), with
    weight None for tasks without weights.

    Within each group the samples are shuffled (seeded by ``generator``) and cut into chunks of
    ``chunk_size``; a group's remainder is dropped.
    """
    get_task(task)
    data = torch.load(path, map_location="cpu", weights_only=True)
    stored_task, fields, group = _check_predictions(path, data)
    if stored_task != task:
        raise _field_error(path, "task", repr(task), repr(stored_task))
    values = [fields[field] for field in get_task(task).prediction_fields]
    count = values[0].shape[0]
    group = torch.zeros(count, dtype=torch.long) if group is None else group
    batches = []
    for g in torch.unique(group):
        members = torch.nonzero(group == g).squeeze(-1)
        members = members[torch.randperm(members.numel(), generator=generator)]
        usable = members.numel() // chunk_size * chunk_size
        if usable == 0:
            continue
        index = members[:usable].view(-1, chunk_size)
        chunk = [v[index].float() if v.is_floating_point() else v[index] for v in values]
        batches.append(tuple(chunk) if len(chunk) == 3 else (*chunk, None))
    if not batches:
        raise ValueError(f"{path}: no group holds a whole chunk of {chunk_size} samples "
                         f"({count} samples in all)")
    return batches
