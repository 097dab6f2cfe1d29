"""Classification: ClassificationSurrogate, top-1 accuracy per chunk, cross-entropy, and
synthetic logits whose accuracy spreads over [0, 1].

Stored predictions: ``logits`` (M, C) float and ``labels`` (M,) class indices in [0, C).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .._validate import check_choice, check_float, check_ndim, check_not_bool, check_tensor
from ..metrics import chunk_accuracy
from ..rank import upcast_half
from ..surrogate import REDUCTIONS, Surrogate
from .base import Task, quality, uniform


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

    def frozen_parameters(self, dtype, device=None):
        """(centres, 1 / widths, heights, heights * widths, linear slopes) as plain tensors, for
        evaluating the function without autograd (see _FrozenClassificationLoss)."""
        with torch.no_grad():
            widths = self.log_widths.exp()
            heights = F.softplus(self.raw_heights)
            values = (self.centres, 1 / widths, heights, heights * widths, self._linear_slopes())
            return tuple(t.to(device=device, dtype=dtype) for t in values)

    def _linear_slopes(self):
        if self.raw_slopes is None:
            return self.centres.new_zeros(self.centres.shape[0])
        return F.softplus(self.raw_slopes)


def _label_units(logits, target):
    """(index (N, k), weights (N, k)): the classes each sample's loss is taken on, and their
    label weights (1 for hard labels; the non-zero entries of soft labels)."""
    if target.dim() == 1 and target.shape[0] == logits.shape[0] and not (
            target.is_floating_point() or target.is_complex()):
        index = target.long().unsqueeze(-1)
        return index, torch.ones(index.shape, dtype=logits.dtype, device=logits.device)
    if target.shape == logits.shape and target.is_floating_point():
        if target.device.type != "cpu":  # every class: counting the non-zero ones would sync
            index = torch.arange(target.shape[-1], device=target.device).expand_as(target)
            return index, target.to(logits.dtype)
        # Evaluate only where the label is non-zero (2 classes per row for mixup).
        k = max(int((target != 0).sum(-1).max()), 1)
        weights, index = target.topk(k, dim=-1)
        return index, weights.to(logits.dtype)
    raise ValueError(f"'target' should be (N,) = ({logits.shape[0]},) class indices or "
                     f"(N, C) = {tuple(logits.shape)} soft labels but got {target.dtype} "
                     f"{tuple(target.shape)}")


def _tempered_cross_entropy(logits, index, temperatures):
    """u_T = T logsumexp(z / T) - z_y for each label index and temperature: (N, k, F)."""
    own = logits.gather(-1, index)
    return torch.stack([t * torch.logsumexp(logits / t, -1, keepdim=True) - own
                        for t in temperatures], -1)


class _FrozenClassificationLoss(torch.autograd.Function):
    """Per-sample values of a frozen ClassificationSurrogate with the gradient written out:
    d u_T / d z = softmax(z / T) - onehot(y), so d L / d z = sum_T g_T'(u_T) (softmax(z / T) - e_y),
    for each label entry, weighted by its share of the label."""

    @staticmethod
    def forward(ctx, logits, index, share, table):
        temperatures, inverse, centres, inverse_widths, heights, scaled_heights, linear = table
        top = logits.amax(1, keepdim=True)  # T logsumexp(z / T) = max z + T log sum exp(...)
        exponentials = ((logits - top).unsqueeze(-1) * inverse).exp()  # (N, C, F)
        sums = exponentials.sum(1, keepdim=True)  # (N, 1, F)
        u = (sums.log() * temperatures + (top - logits.gather(1, index)).unsqueeze(-1))
        steps = torch.sigmoid((u.unsqueeze(-1) - centres) * inverse_widths)  # (N, k, F, K)
        values = (steps * scaled_heights).sum((-1, -2)) + (u * linear).sum(-1)  # (N, k)
        slopes = ((steps - steps.square()) * heights).sum(-1) + linear  # (N, k, F)
        if share is not None:
            values, slopes = values * share, slopes * share.unsqueeze(-1)
        ctx.save_for_backward(exponentials, sums, index, slopes)
        return values.sum(-1)

    @staticmethod
    def backward(ctx, grad_values):
        exponentials, sums, index, slopes = ctx.saved_tensors
        coefficient = slopes * grad_values.view(-1, 1, 1)  # (N, k, F)
        grad = (exponentials * (coefficient.sum(1, keepdim=True) / sums)).sum(-1)
        return grad.scatter_add(-1, index, -coefficient.sum(-1)), None, None, None


class ClassificationSurrogate(Surrogate):
    """A learned, non-decreasing function of the cross-entropy at several temperatures.

    Per label it reads ``u_T = T logsumexp(z / T) - z_y`` for each temperature T (T = 1 is the
    cross-entropy; as T falls, u_T tends to the hinge ``max(0, max_c z_c - z_y)``, which is what
    top-1 accuracy decides on) and adds up learned non-decreasing functions of them
    (:class:`MonotoneSteps`). So:

    - nothing to game: every u_T is smallest for the label itself, and the loss never rises when
      one falls;
    - gradients teach like cross-entropy's: d L / d z = sum_T g_T'(u_T) (softmax(z / T) - e_y), a
      non-negative mix of cross-entropy gradients at sharper temperatures (positive cosine with
      cross-entropy's gradient for every sample, spread over all the logits);
    - the learned part is free to saturate where accuracy stops caring (a sample far on the wrong
      side) instead of pushing there harder, as cross-entropy does: that is what keeps noisy labels
      from being memorised.

    The authors' surrogate (an MLP on p(true class)) is the one-temperature case without the
    monotonicity. Soft or mixup labels (N, C) give ``sum_c y_c f(c) / sum_c y_c`` (as
    cross-entropy treats them), evaluated only for classes with a non-zero label.

    Args:
        temperatures (sequence of float): the temperatures T, each > 0.
        knots (int): learned steps per temperature.
        span (float): the range of u_T the steps start out spread over.

    Note:
        N samples, C classes; any C >= 2.
    """

    task = "cls"

    def __init__(self, temperatures=(1.0, 0.1), knots=16, span=8.0, linear=True):
        super().__init__()
        self.temperatures = tuple(float(t) for t in temperatures)
        if not self.temperatures or min(self.temperatures) <= 0:
            raise ValueError(f"'temperatures' should be one or more numbers > 0 but got "
                             f"{temperatures!r}")
        self.knots, self.span, self.linear = knots, span, linear
        self.num_features = len(self.temperatures)
        self.net = MonotoneSteps(self.num_features, knots, span, linear)

    def config(self):
        return dict(temperatures=list(self.temperatures), knots=self.knots, span=self.span,
                    linear=self.linear)

    def _frozen_table(self, like):
        """The temperatures and the learned functions' parameters as plain tensors of the dtype
        and device of ``like``, cached until a parameter changes."""
        key = (like.dtype, like.device, tuple((p.data_ptr(), p._version)
                                              for p in self.parameters()))
        if getattr(self, "_table_key", None) != key:
            temperatures = torch.tensor(self.temperatures, dtype=like.dtype, device=like.device)
            self._table = (temperatures, 1 / temperatures,
                           *self.net.frozen_parameters(like.dtype, like.device))
            self._table_key = key
        return self._table

    def _check(self, pred, target):
        check_float("pred", pred)
        check_ndim("pred", pred, (2,), "2-D (N, C) logits")
        check_tensor("target", target)
        check_not_bool("target", target, "(N,) integer class indices or (N, C) float soft labels")
        if pred.shape[-1] < 2:
            raise ValueError(f"'pred' should have C >= 2 classes but got shape {tuple(pred.shape)}")
        logits = upcast_half(pred)
        index, weights = _label_units(logits, target)
        return logits, index, weights

    def features(self, pred, target, weight=None):
        logits, index, weights = self._check(pred, target)
        if weight is not None:
            weights = weights * weight.reshape(-1, 1).to(weights.dtype)
        return _tempered_cross_entropy(logits, index, self.temperatures), weights

    def forward(self, pred, target, weight=None, reduction="mean"):
        """Per-sample losses, multiplied by ``weight`` (N,) if given, then reduced; 'mean'
        divides by the number of samples with a non-zero weight."""
        check_choice("reduction", reduction, REDUCTIONS)
        logits, index, weights = self._check(pred, target)
        if weight is not None:
            check_tensor("weight", weight)
            if tuple(weight.shape) != (pred.shape[0],):
                raise ValueError(f"'weight' should be (N,) = ({pred.shape[0]},) sample weights "
                                 f"but got {tuple(weight.shape)}")
        if torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()):
            values = self.head(_tempered_cross_entropy(logits, index, self.temperatures), weights)
        else:  # frozen, as when training a model: the same values, the gradient written out
            share = None if index.shape[1] == 1 else weights / weights.sum(-1, keepdim=True
                                                                            ).clamp_min(1e-30)
            values = _FrozenClassificationLoss.apply(logits, index, share,
                                                     self._frozen_table(logits))
        if weight is not None:
            values = values * weight.to(values.dtype)
        if reduction == "none":
            return values
        if reduction == "sum":
            return values.sum()
        if weight is None:
            return values.mean()
        return values.sum() / (weight != 0).sum().clamp_min(1).to(values.dtype)


def sample_classification(num_chunks, chunk_size=128, num_classes=10, generator=None,
                          late_fraction=0.5, late_band=(0.85, 0.99)):
    """Logits (S, N, C) and labels (S, N) whose chunk accuracies spread over [0, 1].

    Per chunk: a target accuracy, a logit noise level and a confidence scale; per sample, the
    class the model favours is the label with that probability, another class otherwise, and a
    wrong prediction often keeps the label as runner-up. Confidence varies from near-uniform to
    saturated, so the probability of the true class covers (0, 1) for right and wrong samples.
    """
    shape = (num_chunks, chunk_size)
    accuracy = quality(num_chunks, late_fraction, late_band, generator).unsqueeze(-1)
    labels = torch.randint(num_classes, shape, generator=generator)
    right = torch.rand(shape, generator=generator) < accuracy
    other = (labels + torch.randint(1, num_classes, shape, generator=generator)) % num_classes
    favoured = torch.where(right, labels, other)
    noise = uniform((num_chunks, 1, 1), 0.3, 2.0, generator)
    logits = noise * torch.randn(num_chunks, chunk_size, num_classes, generator=generator)
    # The largest of C noisy logits grows like noise * sqrt(2 ln C): scale the favoured class's
    # lead with it, so that the planned accuracy holds at any C.
    lead = noise[..., 0] * math.sqrt(2 * math.log(num_classes))
    confidence = torch.exp(uniform((num_chunks, 1), math.log(0.5), math.log(6.0), generator))
    gap = lead * confidence * (0.5 + torch.rand(shape, generator=generator))
    logits.scatter_add_(-1, favoured.unsqueeze(-1), gap.unsqueeze(-1))
    runner_up = (~right) & (torch.rand(shape, generator=generator) < 0.6)
    boost = gap * torch.rand(shape, generator=generator) * runner_up
    logits.scatter_add_(-1, labels.unsqueeze(-1), boost.unsqueeze(-1))
    return logits, labels


def relabel(logits, labels, generator=None):
    """The authors' augmentation of real classification chunks (S, N, C), (S, N): labels become
    the predicted classes, then a fraction u ~ U(0, 1) of each chunk is re-drawn at random, so that
    chunk accuracy covers [0, 1] instead of clustering where the model is."""
    predicted = logits.argmax(-1)
    fraction = torch.rand(labels.shape[0], 1, generator=generator)
    redraw = torch.rand(labels.shape, generator=generator) < fraction
    random = torch.randint(logits.shape[-1], labels.shape, generator=generator)
    return torch.where(redraw, random, predicted)


def classification_metric(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Top-1 accuracy per chunk: logits (S, N, C), labels (S, N)."""
    return chunk_accuracy(logits, labels).double()


def cross_entropy_per_chunk(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy per chunk: logits (S, N, C), labels (S, N)."""
    chunks, size = labels.shape
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(),
                           reduction="none").view(chunks, size).mean(-1)


TASK = Task(
    name="cls", description="classification", surrogate=ClassificationSurrogate,
    metric=classification_metric, metric_label="accuracy",
    original_loss=cross_entropy_per_chunk, original_name="cross-entropy",
    band=(0.85, 0.99), chunk_size=128,
    sample=sample_classification,
    sample_kinds=tuple(dict(num_classes=c) for c in (10, 100, 1000)),
    prediction_fields=("logits", "labels"), prediction_ndim=2,
    prediction_shapes=lambda logits: {"labels": tuple(logits.shape[:1])},
    index_field="labels",
    # The gradient may fall 10x below cross-entropy's on a chunk (so that the loss can saturate
    # on hopeless samples) but rise only 1.5x above it.
    pretrain_steps=600, pretrain_tolerance=(10.0, 1.5),
    relabel=relabel,
)
