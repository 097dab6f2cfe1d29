"""What every learned loss shares. A surrogate is ``head(features(pred, target))``:

- ``features`` turns a model's predictions into a few differentiable numbers per *unit* (a sample
  for classification, a keypoint for pose, a target position for sequences), so that the learned
  part never depends on the number of classes, the heatmap size, the vocabulary or the model width;
- ``head`` maps the features of each sample's units to one value per sample.

Pretraining (:mod:`reloss.pretrain`) learns the head on stored features; the toolkits call
``forward``. Each task's surrogate lives in its module under :mod:`reloss.tasks`. No host toolkit
is imported here.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ._validate import check_choice, check_tensor

REDUCTIONS = ("mean", "sum", "none")


def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers of the given sizes with ELU between them (none after the last)."""
    layers = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(sizes) - 2:
            layers.append(nn.ELU())
    return nn.Sequential(*layers)


def softplus_weights(name: str, value, count: int) -> nn.Parameter:
    """``count`` learned weights ``softplus(theta) >= 0``, each starting at ``value``, a number in
    (0, 1000) given as the argument ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e3:
        raise ValueError(f"'{name}' should be a number in (0, 1000) but got {value!r}")
    return nn.Parameter(torch.full((count,), math.log(math.expm1(float(value)))))


def weighted_unit_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per-sample weighted mean over units: (N, U), (N, U) -> (N,); 0 where all weights are 0."""
    total = weights.sum(-1)
    return (values * weights).sum(-1) / total.clamp_min(torch.finfo(values.dtype).tiny)


def unit_weights(weight: torch.Tensor | None, pred: torch.Tensor, dims: str, what: str
                 ) -> torch.Tensor:
    """``weight`` checked against the first two dims of ``pred``; ones where it is None."""
    if weight is None:
        return pred.new_ones(pred.shape[:2])
    check_tensor("weight", weight)
    if tuple(weight.shape) != tuple(pred.shape[:2]):
        raise ValueError(f"'weight' should be {dims} = {tuple(pred.shape[:2])} {what} but got "
                         f"{tuple(weight.shape)}")
    # Values are read on the CPU only: on an accelerator that would wait for the device every
    # step (the toolkit adapters check there without waiting).
    if weight.device.type == "cpu" and (weight.is_floating_point() or weight.is_complex()) \
            and not bool((weight >= 0).all() & torch.isfinite(weight).all()):
        raise ValueError(f"'weight' should hold finite {what} >= 0 but holds negative, NaN or "
                         f"Inf ones")
    return weight


class Surrogate(nn.Module):
    """Base class: ``forward`` = features, then head, then the reduction."""

    #: The pretraining task ('cls', 'pose', 'nat') and the number of features per unit.
    task: str | None = None
    num_features: int | None = None

    def config(self) -> dict:
        """Constructor arguments; saved with the weights so that a checkpoint rebuilds the net."""
        raise NotImplementedError

    def features(self, pred: torch.Tensor, target: torch.Tensor,
                 weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (features (N, U, F), unit weights (N, U))."""
        raise NotImplementedError

    def head(self, features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Per-sample values (N,) from features (N, U, F) and unit weights (N, U).

        By default ``self.net`` scores each unit and a sample's value is the weighted mean of its
        units' scores.
        """
        return weighted_unit_mean(self.net(features).squeeze(-1), weights)

    def feature_gram(self, pred: torch.Tensor, target: torch.Tensor,
                     weight: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(features, weights, gram): gram (N, U, F, F) holds the inner products of the features'
        gradients with respect to each unit's predictions. Computed with autograd (one backward
        pass per feature); subclasses may give a closed form."""
        pred = pred.detach().float().requires_grad_()
        features, weights = self.features(pred, target, weight)
        count, units = features.shape[:2]
        grads = []
        for f in range(features.shape[-1]):
            (grad,) = torch.autograd.grad(features[..., f].sum(), pred,
                                          retain_graph=f < features.shape[-1] - 1)
            grads.append(grad.reshape(count, units, -1))
        grads = torch.stack(grads, 2)  # (N, U, F, D)
        return features.detach(), weights.detach(), grads @ grads.transpose(-1, -2)

    def forward(self, pred: torch.Tensor, target: torch.Tensor,
                weight: torch.Tensor | None = None, reduction: str = "mean") -> torch.Tensor:
        check_choice("reduction", reduction, REDUCTIONS)
        features, weights = self.features(pred, target, weight)
        values = self.head(features, weights)
        if reduction == "none":
            return values
        if reduction == "sum":
            return values.sum()
        counted = (weights.sum(-1) > 0).to(values.dtype)
        return values.sum() / counted.sum().clamp_min(1)

