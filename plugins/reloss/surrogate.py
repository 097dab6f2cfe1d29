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
import torch.nn.functional as F
from torch import nn

from ._validate import check_choice, check_tensor

REDUCTIONS = ("mean", "sum", "none")


def upcast_half(x: torch.Tensor) -> torch.Tensor:
    """float16 and bfloat16 tensors as float32 (other dtypes unchanged), for the arithmetic that
    half precision cannot carry: ranks, softmax, standardisation."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


AUTOGRAD_PATH = ("for second derivatives use its autograd path: reloss.load_surrogate(name, "
                 "trainable=True), or surrogate.requires_grad_(True) (ReLossCls: "
                 "loss.surrogate.requires_grad_(True))")


def refuse_second_derivative(remedy: str = AUTOGRAD_PATH) -> None:
    """Called first in the backward pass of an autograd Function whose gradient is written out
    from values its forward pass computed without a graph: differentiated again (backward with
    ``create_graph=True``, as a gradient penalty or a Hessian-vector product does), its part of
    the second derivative would silently be missing. Raises instead, with ``remedy``."""
    if torch.is_grad_enabled():
        raise RuntimeError(f"a frozen ReLoss surrogate writes its gradient out and cannot be "
                           f"differentiated twice (backward with create_graph=True); {remedy}")


def reduce_values(values: torch.Tensor, reduction: str, counted: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """Per-sample values (N,) as ``reduction`` asks (checked by the caller): 'none' as they are,
    'sum', or 'mean' over the samples where ``counted`` (N,) is non-zero (every sample where it
    is None); 0 where none counts."""
    if reduction == "none":
        return values
    if reduction == "sum":
        return values.sum()
    if counted is None:
        return values.sum() / max(values.shape[0], 1)
    return values.sum() / counted.sum().clamp_min(1).to(values.dtype)


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


class MonotoneSteps(nn.Module):
    """A learned non-decreasing function of each input, summed over inputs: ``sum_j g_j(x_j)``.

    ``g_j(x) = softplus(s_j) x + sum_k softplus(a_jk) w_jk sigmoid((x - c_jk) / w_jk)``: a linear
    part and ``knots`` smooth steps with learned centres ``c``, widths ``w`` and heights; every
    slope is >= 0 by construction, and the steps let it saturate where the metric stops caring.
    It starts with steps of height ``amplitude`` spread evenly over [0, ``span``].

    Args:
        inputs (int): number of inputs (features) F.
        knots (int): steps per input.
        span (float): where the steps start out: centres evenly over [0, span].
        linear (bool): add the linear part; without it g_j is bounded.
        amplitude (float): the steps' starting height.
        slope (float): the linear part's starting slope.
    """

    def __init__(self, inputs, knots=16, span=8.0, linear=True, amplitude=0.5, slope=0.02):
        super().__init__()
        width = span / knots
        self.centres = nn.Parameter(torch.linspace(0, span, knots).repeat(inputs, 1))
        self.log_widths = nn.Parameter(torch.full((inputs, knots), math.log(width)))
        # softplus(raw) is the slope at a step's centre times 4; start at `amplitude`.
        self.raw_heights = nn.Parameter(torch.full((inputs, knots),
                                                   math.log(math.expm1(amplitude))))
        # Without the linear part g_j is bounded: its slope vanishes far beyond the steps.
        self.raw_slopes = nn.Parameter(torch.full((inputs,), math.log(math.expm1(slope)))
                                       ) if linear else None

    def forward(self, x):
        """(..., F) -> (..., 1)."""
        widths = self.log_widths.exp()
        steps = torch.sigmoid((x.unsqueeze(-1) - self.centres) / widths)
        values = (F.softplus(self.raw_heights) * widths * steps).sum(-1)
        if self.raw_slopes is not None:
            values = values + F.softplus(self.raw_slopes) * x
        return values.sum(-1, keepdim=True)

    @property
    def frozen(self) -> bool:
        """Whether no parameter requires a gradient. Reads the module's own parameters directly:
        a frozen loss asks at every call, and walking ``parameters()`` costs several times as
        much."""
        return not any(p.requires_grad for p in self._parameters.values())

    def version(self) -> tuple:
        """(storage, in-place version) of each parameter: it changes whenever a parameter does,
        so it keys caches of what is computed from them."""
        return tuple((p.data_ptr(), p._version) for p in self._parameters.values())

    def frozen_parameters(self, dtype, device=None):
        """(centres, 1 / widths, heights, heights * widths, linear slopes) as plain tensors, for
        evaluating the function without autograd (the frozen classification loss)."""
        with torch.no_grad():
            widths = self.log_widths.exp()
            heights = F.softplus(self.raw_heights)
            slopes = self.centres.new_zeros(self.centres.shape[0]) if self.raw_slopes is None \
                else F.softplus(self.raw_slopes)
            values = (self.centres, 1 / widths, heights, heights * widths, slopes)
            return tuple(t.to(device=device, dtype=dtype) for t in values)


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

    #: The pretraining task ('cls', 'pose', 'nat', 'qa') and the number of features per unit.
    task: str | None = None
    num_features: int | None = None

    def config(self) -> dict:
        """Constructor arguments; saved with the weights so that a checkpoint rebuilds the net."""
        raise NotImplementedError

    @property
    def frozen(self) -> bool:
        """Whether no parameter requires a gradient, as after :func:`reloss.load_surrogate`
        (unless ``trainable``): what training a model with the surrogate uses."""
        return not any(p.requires_grad for p in self.parameters())

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

    def chunk_inputs(self, pred: torch.Tensor, target: torch.Tensor) -> dict:
        """For pretraining: keyword inputs of :meth:`features` read from whole chunks (S, N, ...),
        each a tensor with leading dims (S, N) (none by default)."""
        return {}

    def feature_gram(self, pred: torch.Tensor, target: torch.Tensor,
                     weight: torch.Tensor | None = None, **inputs
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(features, weights, gram): gram (N, U, F, F) holds the inner products of the features'
        gradients with respect to each unit's predictions. Computed with autograd (one backward
        pass per feature); subclasses may give a closed form. ``inputs`` go to ``features``."""
        pred = pred.detach().float().requires_grad_()
        features, weights = self.features(pred, target, weight, **inputs)
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
        return reduce_values(self.head(features, weights), reduction, weights.sum(-1) > 0)

