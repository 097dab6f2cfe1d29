"""What a task is: the surrogate, the metric it stands for, the loss it replaces, how to sample
predictions for pretraining, how stored predictions look, and the defaults that go with them.

Each task module (:mod:`reloss.tasks.cls`, ...) defines one :class:`Task` named ``TASK``; the
table in :mod:`reloss.tasks` is what pretraining, stored predictions, checkpoints, the toolkit
adapters and the tools read.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

Tensor = torch.Tensor


@dataclass(frozen=True)
class Task:
    """One task. The callables take batches of chunks: leading dims (S, N).

    Attributes:
        name: the short name ('cls'); checkpoints record it.
        description: what the task is, for messages ('classification').
        surrogate: the :class:`reloss.surrogate.Surrogate` subclass that ships for it (its
            default constructor builds the shipped form).
        variants: other surrogate classes of the task (other forms, measured and not shipped);
            a checkpoint may name any of them.
        upgrade: ``upgrade(architecture) -> architecture``: the saved architecture dict of an
            older checkpoint (``type`` and constructor arguments) as the current classes take it,
            or None where no class has changed.
        metric: ``metric(pred, target[, weight]) -> (S,)``, the value per chunk (higher is
            better) that the surrogate learns to rank like.
        metric_label: the metric's name in tables ('accuracy').
        original_loss: ``original_loss(pred, target[, weight]) -> (S,)``, the loss the surrogate
            replaces, per chunk, differentiable.
        original_name: its name in tables ('cross-entropy').
        band: the late-training band of the metric (low, high).
        chunk_size: predictions per chunk: the metric is taken over a chunk.
        sample: ``sample(num_chunks, chunk_size, generator=None, **kind)`` -> (pred, target) or
            (pred, target, weight): synthetic chunks whose metric spreads over its range.
        sample_kinds: the keyword sets ``sample`` is called with in turn (e.g. class counts).
        prediction_fields: the stored-prediction fields (pred, target[, weight]), in that order.
        prediction_ndim: dimensions of the stored ``pred`` field (M, ...).
        prediction_shapes: ``prediction_shapes(pred) -> {field: shape}`` for the other fields.
        index_field: the field holding indices into ``pred``'s last dimension, if any.
        default_original_weight: weight of the original loss that the toolkit adapters add to the
            surrogate by default (0: the surrogate alone).
        pretrain_steps: pretraining steps by default.
        pretrain_tolerance: the free factor (below, above) between the surrogate's gradient norm
            and the original loss's per chunk, by default.
        relabel: ``relabel(pred, target, generator)`` -> new targets for augmenting stored chunks,
            or None where the task has no such augmentation.
    """

    name: str
    description: str
    surrogate: type
    metric: Callable[..., Tensor]
    metric_label: str
    original_loss: Callable[..., Tensor]
    original_name: str
    band: tuple[float, float]
    chunk_size: int
    sample: Callable[..., tuple]
    prediction_fields: tuple[str, ...]
    prediction_ndim: int
    prediction_shapes: Callable[[Tensor], dict]
    index_field: str | None = None
    sample_kinds: tuple[dict, ...] = field(default_factory=lambda: ({},))
    default_original_weight: float = 0.0
    pretrain_steps: int = 300
    pretrain_tolerance: tuple[float, ...] = (4.0,)
    relabel: Callable[..., Tensor] | None = None
    variants: tuple[type, ...] = ()
    upgrade: Callable[[dict], dict] | None = None

    @property
    def surrogate_classes(self) -> dict[str, type]:
        """{class name: class} of every surrogate form of the task, the shipped one first."""
        return {cls.__name__: cls for cls in (self.surrogate, *self.variants)}

    def surrogate_class(self, name: str | None = None) -> type:
        """The surrogate class called ``name`` (None: the one that ships); a ValueError naming
        the task's classes otherwise."""
        if name is None:
            return self.surrogate
        classes = self.surrogate_classes
        if not isinstance(name, str) or name not in classes:
            raise ValueError(f"'type' should be a '{self.name}' surrogate class "
                             f"({', '.join(classes)}) but got {name!r}")
        return classes[name]

    @property
    def metric_name(self) -> str:
        """The metric as ``module:function``, as checkpoints record it."""
        return f"{self.metric.__module__}:{self.metric.__qualname__}"

    @property
    def has_weight(self) -> bool:
        """Whether the task's chunks carry a weight (pose keypoints, nat positions)."""
        return len(self.prediction_fields) == 3


def moved_architecture(architecture: dict, name: str, dropped: tuple[str, ...]) -> dict:
    """For a task's ``upgrade``: a checkpoint's ``architecture`` (``type`` and constructor
    arguments) for the class called ``name``, without the arguments in ``dropped`` (those the
    old class read for another form). Any other argument stays, for the class to take or to
    refuse by name."""
    return {"type": name, **{key: value for key, value in architecture.items()
                             if key != "type" and key not in dropped}}


def uniform(shape, low: float, high: float, generator: torch.Generator | None) -> Tensor:
    """Uniform samples in [low, high)."""
    return low + (high - low) * torch.rand(shape, generator=generator)


def quality(count: int, late_fraction: float, late_band: tuple[float, float],
            generator: torch.Generator | None) -> Tensor:
    """Per-chunk target quality in [0, 1] for the samplers: with probability ``late_fraction``
    from the late-training band (most predictions right; the errors that remain decide the metric
    at the end of training), otherwise from the whole range, so the metric covers [0, 1] and is
    dense where training spends most of its time."""
    late = torch.rand(count, generator=generator) < late_fraction
    whole = torch.rand(count, generator=generator)
    band = uniform(count, late_band[0], late_band[1], generator)
    return torch.where(late, band, whole)
