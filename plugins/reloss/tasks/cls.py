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
    """(index (N, k), weights (N, k) or None): the classes each sample's loss is taken on, and
    their label weights (None for hard labels, whose one weight is 1; else the non-zero entries
    of the soft labels)."""
    if target.dim() == 1 and target.shape[0] == logits.shape[0] and not (
            target.is_floating_point() or target.is_complex()):
        return target.long().unsqueeze(-1), None
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


#: Up to this many classes the frozen path takes exp and sum of every temperature at once
#: (fewest operations; torch's softmax is slow on short rows); above it, one softmax per
#: temperature (fewest passes over the logits).
_FEW_CLASSES = 32


def _softmax_in_place(x):
    """softmax(x, 1), written over x on a CPU (a fresh buffer of the logits' size costs about as
    much as a pass over them there); elsewhere into a new tensor."""
    return torch.softmax(x, 1, out=x) if x.device.type == "cpu" else torch.softmax(x, 1)


class _FrozenClassificationLoss(torch.autograd.Function):
    """Per-sample values of a frozen ClassificationSurrogate with the gradient written out:
    d u_T / d z = softmax(z / T) - onehot(y), so d L / d z = sum_T g_T'(u_T) (softmax(z / T) - e_y),
    for each label entry, weighted by its share of the label.

    With m = max_c z_c, ``u_T = m - z_y + T log S_T``, S_T = sum_c exp((z_c - m) / T) in [1, C].
    With few classes, exp((z - m) / T) of every temperature at once and their sums give S_T;
    with many, one softmax per temperature, whose largest entry is 1 / S_T. Either is kept for
    the backward pass, which is then multiply-adds and no exp. Before an exp, (z - m) / T is
    raised to at least log(tiny) + log(C) + 1 (or z / T to that above m / T): an exp that would
    end below the smallest normal number costs many times a normal one on a CPU, and what the
    floor changes (at most C e^-86 of a sum >= 1 in float32) is far below round-off. The learned
    steps of every temperature and label are evaluated in one multiply-add over (F, K, N k).
    """

    @staticmethod
    def forward(ctx, logits, index, share, table, scale=None):
        """Per-sample values (N,), or with ``scale`` their sum times ``scale``."""
        (scales, scale_column, temperatures, inverse_widths, offsets, scaled_heights, heights,
         linear, negated_linear) = table
        count, classes = logits.shape
        units, features = index.shape[1], len(scales)
        floor = math.log(torch.finfo(logits.dtype).tiny) + math.log(classes) + 1
        top = logits.amax(1, keepdim=True)
        # -u_T = z_y - m - T log S_T, (F, N, k): the minus sign is folded into what uses it.
        if classes <= _FEW_CLASSES:
            shifted = logits - top
            weights = shifted * scale_column  # (F, N, C)
            own = shifted.gather(1, index)  # before the floor
            weights = weights.clamp_min_(floor).exp_()
            sums = weights.sum(-1, keepdim=True)
            minus_u = torch.addcmul(own, sums.log(), temperatures, value=-1)
        else:  # softmax subtracts the maximum itself: z / T needs only the floor
            weights = [torch.softmax(logits, 1) if inverse == 1 else
                       _softmax_in_place((logits * inverse).clamp_(min=top * inverse + floor))
                       for inverse in scales]
            sums = None
            largest = torch.stack([p.amax(1, keepdim=True) for p in weights]).log_()  # -log S_T
            minus_u = torch.addcmul(logits.gather(1, index) - top, largest, temperatures)
        minus_u = minus_u.view(features, 1, count * units)
        # sigmoid((u - centre) / width) for every step: (F, K, N k).
        steps = torch.addcmul(offsets, inverse_widths, minus_u, value=-1).sigmoid_()
        # Values and slopes come out multiplied by the reduction's scale, if any.
        factor = 1.0 if scale is None else scale
        values = torch.addmm(negated_linear @ minus_u.view(features, -1), scaled_heights,
                             steps.view(-1, count * units), beta=factor, alpha=factor)
        values = values.view(count, units)
        # g'(u) = linear slope + sum_k height_k s_k (1 - s_k) for each temperature: (F, 1, N k).
        slopes = torch.baddbmm(linear, heights, torch.addcmul(steps, steps, steps, value=-1),
                               beta=factor, alpha=factor).view(features, count, units)
        if share is not None:
            values, slopes = values * share, slopes * share
        ctx.save_for_backward(index, slopes, sums, *weights)
        if scale is not None:
            return values.sum()
        return values.sum(-1) if units > 1 else values.view(count)

    @staticmethod
    def backward(ctx, grad_values):
        index, slopes, sums, *weights = ctx.saved_tensors
        coefficient = slopes * grad_values.view(1, -1, 1)  # (F, N, k)
        per_temperature = coefficient.sum(2, keepdim=True) if coefficient.shape[2] > 1 \
            else coefficient  # (F, N, 1)
        if sums is not None:
            per_temperature = per_temperature / sums
        grad = weights[0] * per_temperature[0]
        for f in range(1, len(weights)):
            grad.addcmul_(weights[f], per_temperature[f])
        return grad.scatter_add_(1, index, coefficient.sum(0).neg_()), None, None, None, None


#: Below this many classes the single-temperature path takes the log-softmax over the transposed
#: (C, N) logits: torch's CPU log-softmax over rows shorter than a vector register (16 float32)
#: runs element by element, 4-7 times slower than over the N samples of each class.
_SHORT_ROWS = 16


class _FrozenSteps(torch.autograd.Function):
    """The learned function of a single-temperature ClassificationSurrogate, frozen, on
    ``own`` = log_softmax(z / T)_y = -u / T (N, k), with its derivative written out.

    The steps sigmoid((u - c) / w) are one multiply-add (the -T folded into the table) and a
    sigmoid over (N k, K); the values one matrix product that also adds the linear part and the
    reduction's scale; the slopes d g / d own = -T g'(u) one multiply-add and a matrix product.
    """

    @staticmethod
    def forward(ctx, own, share, table, scale=None):
        step_scale, offsets, scaled_heights, heights, linear, linear_t = table[:6]
        count, units = own.shape
        own = own.reshape(-1, 1)
        steps = torch.addcmul(offsets, own, step_scale).sigmoid_()  # (N k, K)
        factor = 1.0 if scale is None else scale
        # sum_k h_k w_k s_k + s u, times the scale: (N k, 1).
        values = torch.addmm(own, steps, scaled_heights, beta=-linear_t * factor, alpha=factor)
        ctx.save_for_backward(share, steps, heights, linear)
        ctx.factor = factor
        if share is not None:
            values = values.view(count, units) * share
            return values.sum() if scale is not None else values.sum(-1)
        return values.sum() if scale is not None else values.view(count)

    @staticmethod
    def backward(ctx, grad_values):
        share, steps, heights, linear = ctx.saved_tensors
        # -T g'(u) = -T (s + sum_k h_k s_k (1 - s_k)), times the scale (-T is in the table).
        slopes = torch.addmm(linear, torch.addcmul(steps, steps, steps, value=-1), heights,
                             beta=ctx.factor, alpha=ctx.factor)
        if share is None:
            return slopes.mul_(grad_values.view(-1, 1) if grad_values.dim() else grad_values
                               ), None, None, None
        slopes = slopes.view(share.shape).mul_(share)
        return slopes.mul_(grad_values.view(-1, 1) if grad_values.dim() else grad_values), \
            None, None, None


class _FrozenShortRowsLoss(torch.autograd.Function):
    """The frozen surrogate at T = 1 over rows shorter than _SHORT_ROWS as one autograd node:
    there every tensor is tiny and the cost is the number of operations. own = log_softmax(z)_y
    from the transposed log-softmax, _FrozenSteps' forward, and a backward of
    g'(u) (exp(log_softmax(z)) - e_y) in three operations (hard labels)."""

    @staticmethod
    def forward(ctx, logits, index, share, table, scale=None):
        log_p = torch.log_softmax(logits.t(), 0).t()
        values = _FrozenSteps.forward(ctx, log_p.gather(1, index), share, table, scale)
        ctx.factor = -ctx.factor  # _FrozenSteps.backward then gives g'(u), not -g'(u)
        ctx.log_p, ctx.index, ctx.minus_one = log_p, index, table[-1]
        return values

    @staticmethod
    def backward(ctx, grad_values):
        slopes = _FrozenSteps.backward(ctx, grad_values)[0]  # g'(u) per label, (N, k)
        grad = torch.exp(ctx.log_p)
        if slopes.shape[1] == 1:
            grad = grad.scatter_add_(1, ctx.index, ctx.minus_one.expand_as(slopes)).mul_(slopes)
        else:
            grad = grad.mul_(slopes.sum(1, keepdim=True)).scatter_add_(1, ctx.index,
                                                                        slopes.neg_())
        return grad, None, None, None, None


def _single_temperature_loss(logits, index, share, table, scale=None):
    """The frozen single-temperature surrogate: autograd's log-softmax and gather (one fused
    kernel each way, as in cross-entropy) for own = log_softmax(z / T)_y, then _FrozenSteps.
    Over rows shorter than _SHORT_ROWS the log-softmax runs over the transposed logits. At
    T != 1 the scaled logits are floored as in _FrozenClassificationLoss."""
    inverse = table[0]
    if inverse is None and logits.shape[1] < _SHORT_ROWS:
        return _FrozenShortRowsLoss.apply(logits, index, share, table[1:], scale)
    if inverse is not None:
        floor = math.log(torch.finfo(logits.dtype).tiny) + math.log(logits.shape[1]) + 1
        top = logits.detach().amax(1, keepdim=True)
        logits = torch.maximum(logits * inverse, top * inverse + floor)
    if logits.shape[1] < _SHORT_ROWS:
        own = torch.log_softmax(logits.t(), 0).gather(0, index.t()).t()
    else:
        own = torch.log_softmax(logits, 1).gather(1, index)
    return _FrozenSteps.apply(own, share, table[1:], scale)


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

    The default and the shipped 'cls' surrogate read T = 1 alone: a learned, saturating function
    of the cross-entropy. Sharper temperatures rank predictions better (Spearman 0.93 against
    0.83 on held-out synthetic chunks with T = (1, 0.1)) but train worse models under label noise
    that cross-entropy does not memorise (the regime matrix in docs/matrix.md). The authors'
    surrogate (an MLP on p(true class)) is the one-temperature case without the monotonicity.
    Soft or mixup labels (N, C) give ``sum_c y_c f(c) / sum_c y_c`` (as cross-entropy treats
    them), evaluated only for classes with a non-zero label.

    Args:
        temperatures (sequence of float): the temperatures T, each > 0.
        knots (int): learned steps per temperature.
        span (float): the range of u_T the steps start out spread over.

    Note:
        N samples, C classes; any C >= 2.
    """

    task = "cls"

    def __init__(self, temperatures=(1.0,), knots=16, span=8.0, linear=True):
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

    def _cached_table(self, kind, build, like, parameters=None):
        """``build(dtype, device)``, cached under ``kind`` per dtype and device of ``like`` until
        a parameter changes (its storage or its version)."""
        parameters = self.net._parameters.values() if parameters is None else parameters
        versions = tuple((p.data_ptr(), p._version) for p in parameters)
        tables = self.__dict__.setdefault("_tables", {})
        key = (kind, like.dtype, like.device)
        cached = tables.get(key)
        if cached is None or cached[0] != versions:
            cached = tables[key] = (versions, build(like.dtype, like.device))
        return cached[1]

    def _frozen_table(self, like, parameters=None):
        """The temperatures and the learned functions' parameters as plain tensors of the dtype
        and device of ``like``, laid out for _FrozenClassificationLoss (cached)."""
        def build(dtype, device):
            centres, inverse_widths, heights, scaled_heights, linear = \
                self.net.frozen_parameters(dtype, device)
            temperatures = torch.tensor(self.temperatures, dtype=dtype, device=device)
            features = len(self.temperatures)
            return (tuple(1 / t for t in self.temperatures),
                    (1 / temperatures).view(features, 1, 1), temperatures.view(features, 1, 1),
                    inverse_widths.unsqueeze(-1), (-centres * inverse_widths).unsqueeze(-1),
                    scaled_heights.reshape(1, -1), heights.unsqueeze(1),
                    linear.view(features, 1, 1), -linear.view(1, features))

        return self._cached_table("general", build, like, parameters)

    def _single_table(self, like, parameters=None):
        """The learned function's parameters laid out for _single_temperature_loss (cached)."""
        def build(dtype, device):
            (temperature,) = self.temperatures
            centres, inverse_widths, heights, scaled_heights, linear = \
                self.net.frozen_parameters(torch.float64, device)
            table = (None if temperature == 1 else 1 / temperature,
                     (-temperature * inverse_widths).view(1, -1),  # times -u / T: (u - c) / w
                     (-centres * inverse_widths).view(1, -1), scaled_heights.view(-1, 1),
                     -temperature * heights.view(-1, 1), -temperature * linear.view(1, 1),
                     float(linear) * temperature,
                     torch.full((1, 1), -1.0, dtype=torch.float64, device=device))
            return tuple(t.to(dtype) if isinstance(t, torch.Tensor) else t for t in table)

        return self._cached_table("single", build, like, parameters)

    def _frozen_loss(self, logits, index, share, scale=None, parameters=None):
        """Per-sample values of the frozen surrogate, or with ``scale`` their sum times it, with
        the gradient written out: logits (N, C) float32/64, index (N, k) class indices, share
        (N, k) label weights summing to 1 per row, or None with k = 1."""
        if len(self.temperatures) == 1:
            return _single_temperature_loss(logits, index, share,
                                            self._single_table(logits, parameters), scale)
        return _FrozenClassificationLoss.apply(
            logits, index, share, self._frozen_table(logits, parameters), scale)

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
        if weights is None:
            weights = torch.ones(index.shape, dtype=logits.dtype, device=logits.device)
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
        parameters = self.net._parameters.values()  # all of them: the net is all there is
        if torch.is_grad_enabled() and any(p.requires_grad for p in parameters):
            if weights is None:
                weights = torch.ones(index.shape, dtype=logits.dtype, device=logits.device)
            values = self.head(_tempered_cross_entropy(logits, index, self.temperatures), weights)
        else:  # frozen, as when training a model: the same values, the gradient written out
            share = None if weights is None else weights / weights.sum(-1, keepdim=True
                                                                       ).clamp_min(1e-30)
            if weight is None and reduction != "none" and pred.shape[0]:  # reduced inside
                scale = 1.0 if reduction == "sum" else 1 / pred.shape[0]
                return self._frozen_loss(logits, index, share, scale, parameters)
            values = self._frozen_loss(logits, index, share, None, parameters)
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
