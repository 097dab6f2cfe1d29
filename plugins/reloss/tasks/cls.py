"""Classification: ClassificationSurrogate and the class-aware ClassAwareSurrogate (for balanced
accuracy, macro-F1 and other metrics that depend on the classes), top-1 accuracy per chunk,
cross-entropy, and synthetic logits whose accuracy spreads over [0, 1], balanced or long-tailed.

Stored predictions: ``logits`` (M, C) float and ``labels`` (M,) class indices in [0, C).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .._validate import (
    check_choice,
    check_count,
    check_float,
    check_min_size,
    check_ndim,
    check_not_bool,
    check_range,
    check_tensor,
    is_real,
)
from ..metrics import chunk_accuracy
from ..surrogate import (
    REDUCTIONS,
    MonotoneSteps,
    Surrogate,
    reduce_values,
    refuse_second_derivative,
    upcast_half,
)
from ._cls_frozen import frozen_values
from .base import Task, quality, uniform


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


def _checked_units(pred, target):
    """(logits, label index, label weights) of (N, C) logits and their labels, after the checks
    that name what does not fit."""
    check_float("pred", pred)
    check_ndim("pred", pred, (2,), "2-D (N, C) logits")
    check_tensor("target", target)
    check_not_bool("target", target, "(N,) integer class indices or (N, C) float soft labels")
    if pred.shape[-1] < 2:
        raise ValueError(f"'pred' should have C >= 2 classes but got shape {tuple(pred.shape)}")
    logits = upcast_half(pred)
    index, weights = _label_units(logits, target)
    return logits, index, weights


def _integer(dtype):
    return not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool)


def _check_hard_labels(logits, labels):
    """Names what does not fit in logits (N, C) and class indices (N,)."""
    check_float("logits", logits)
    check_ndim("logits", logits, (2,), "2-D (N, C) logits")
    check_min_size("logits", logits, 1, 2, "C")
    check_tensor("labels", labels)
    if tuple(labels.shape) != logits.shape[:1] or not _integer(labels.dtype):
        raise ValueError(f"'labels' should be (N,) = ({logits.shape[0]},) integer class indices "
                         f"but got {labels.dtype} {tuple(labels.shape)}")


def _tempered_cross_entropy(logits, index, temperatures):
    """u_T = T logsumexp(z / T) - z_y for each label index and temperature: (N, k, F)."""
    own = logits.gather(-1, index)
    return torch.stack([t * torch.logsumexp(logits / t, -1, keepdim=True) - own
                        for t in temperatures], -1)


class ClassificationSurrogate(Surrogate):
    """A learned, non-decreasing function of the cross-entropy at several temperatures.

    Per label it reads ``u_T = T logsumexp(z / T) - z_y`` for each temperature T (T = 1 is the
    cross-entropy; as T falls, u_T tends to the hinge ``max(0, max_c z_c - z_y)``, which is what
    top-1 accuracy decides on) and adds up learned non-decreasing functions of them
    (:class:`~reloss.surrogate.MonotoneSteps`). So:

    - nothing to game: every u_T is smallest for the label itself, and the loss never rises when
      one falls;
    - gradients teach like cross-entropy's: d L / d z = sum_T g_T'(u_T) (softmax(z / T) - e_y), a
      non-negative mix of cross-entropy gradients at sharper temperatures (positive cosine with
      cross-entropy's gradient for every sample, spread over all the logits);
    - the learned part is free to saturate where accuracy stops caring (a sample far on the wrong
      side) instead of pushing there harder, as cross-entropy does: that is what keeps noisy labels
      from being memorised.

    The default and the shipped 'cls' surrogate read T = 1 alone: a learned, saturating function
    of the cross-entropy (why not sharper temperatures: docs/design.md). The authors' surrogate
    (an MLP on p(true class)) is the one-temperature case without the monotonicity.
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
        self._tables = {}  # the frozen evaluation's layout of the steps, per dtype and device

    def config(self):
        return dict(temperatures=list(self.temperatures), knots=self.knots, span=self.span,
                    linear=self.linear)

    @property
    def frozen(self):
        """As :attr:`Surrogate.frozen`, read from the learned steps: they are all it holds."""
        return self.net.frozen

    def frozen_mean(self, logits, labels, scale=1.0):
        """``scale`` times the mean over samples of the surrogate's values for hard labels,
        evaluated as a frozen surrogate is (the learned steps' parameters as plain tensors, the
        gradient with respect to ``logits`` written out; none reaches the parameters): the
        cheapest path, for training a model with a frozen surrogate (``ReLossCls`` takes it).

        Args:
            logits (Tensor): (N, C) float logits, C >= 2.
            labels (Tensor): (N,) integer class indices in [0, C); their values are not checked
                (on an accelerator that would wait for the device).
            scale (float): multiplies the mean (a loss weight), folded into the evaluation.

        Returns:
            Tensor: a 0-D tensor; 0 where N = 0.
        """
        # One test where the inputs fit (this runs at every training step), the named checks
        # where they do not.
        if not (isinstance(logits, torch.Tensor) and isinstance(labels, torch.Tensor)
                and logits.dim() == 2 and logits.is_floating_point() and logits.shape[1] >= 2
                and labels.dim() == 1 and labels.shape[0] == logits.shape[0]
                and _integer(labels.dtype)):
            _check_hard_labels(logits, labels)
        count = logits.shape[0]
        if torch.compiler.is_compiling():  # see forward
            return self(logits, labels) * scale if count else logits.sum() * 0
        values = frozen_values(self.net, self.temperatures, upcast_half(logits),
                               labels.long().unsqueeze(1), None, scale / count if count else None,
                               self._tables)
        return values if count else values.sum()

    def _check(self, pred, target):
        return _checked_units(pred, target)

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
        # Under torch.compile the same values by autograd: the written-out evaluation is a
        # custom autograd Function with cached tables that the compiler cannot trace.
        if torch.is_grad_enabled() and not self.frozen or torch.compiler.is_compiling():
            if weights is None:
                weights = torch.ones(index.shape, dtype=logits.dtype, device=logits.device)
            values = self.head(_tempered_cross_entropy(logits, index, self.temperatures), weights)
        else:  # frozen, as when training a model: the same values, the gradient written out
            share = None if weights is None else weights / weights.sum(-1, keepdim=True
                                                                       ).clamp_min(1e-30)
            scale = None
            if weight is None and reduction != "none" and pred.shape[0]:  # reduced inside
                scale = 1.0 if reduction == "sum" else 1 / pred.shape[0]
            values = frozen_values(self.net, self.temperatures, logits, index, share, scale,
                                   self._tables)
            if scale is not None:
                return values
        if weight is not None:
            values = values * weight.to(values.dtype)
        return reduce_values(values, reduction, None if weight is None else weight != 0)


def sample_classification(num_chunks, chunk_size=128, num_classes=10, generator=None,
                          late_fraction=0.5, late_band=(0.85, 0.99)):
    """Logits (S, N, C) and labels (S, N) whose chunk accuracies spread over [0, 1].

    Per chunk: a target accuracy, a logit noise level and a confidence scale; per sample, the
    class the model favours is the label with that probability, another class otherwise, and a
    wrong prediction often keeps the label as runner-up. Confidence varies from near-uniform to
    saturated, so the probability of the true class covers (0, 1) for right and wrong samples.
    """
    accuracy = quality(num_chunks, late_fraction, late_band, generator)
    labels = torch.randint(num_classes, (num_chunks, chunk_size), generator=generator)
    logits, _ = _logits_of_quality(labels, accuracy, num_classes, generator)
    return logits, labels


def _logits_of_quality(labels, accuracy, num_classes, generator):
    """Logits (S, N, C) for labels (S, N) that favour the label with each chunk's probability
    ``accuracy`` (S,), with the noise, confidence and runner-up of :func:`sample_classification`;
    and each chunk's logit scale (S, 1): its noise level times its confidence."""
    num_chunks, chunk_size = shape = labels.shape
    right = torch.rand(shape, generator=generator) < accuracy.unsqueeze(-1)
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
    return logits, noise[..., 0] * confidence


def sample_long_tailed(num_chunks, chunk_size=128, num_classes=10, generator=None,
                       imbalance=(1.0, 200.0), late_fraction=0.5, late_band=(0.85, 0.99),
                       head_bias=(0.0, 3.0), return_priors=False):
    """Logits (S, N, C) and labels (S, N) of long-tailed chunks, from a model that favours the
    classes it saw most: accuracy, macro-F1 and balanced accuracy each spread over [0, 1], and
    the class-aware two no longer rank chunks as accuracy does.

    Per chunk: an imbalance ratio rho, log-uniform in ``imbalance``; class priors
    p_c ∝ rho^(-r_c / (C - 1)) over a random ranking r of the classes (the exponential profile of
    long-tailed CIFAR, Cui et al., CVPR 2019), from which the labels are drawn (rare classes may be
    absent); the logits of :func:`sample_classification` for a target accuracy, plus
    b s (log p_c - mean_c log p_c), with a head bias b uniform in ``head_bias`` and s the chunk's
    logit scale (its noise level times its confidence), so that b shifts predictions alike at any
    confidence: b = 0 is a model trained on balanced data, and as b grows the head classes are
    over-predicted and the recall of the rare ones falls.

    Args:
        num_chunks (int): S >= 1.
        chunk_size (int): N >= 1 predictions per chunk.
        num_classes (int): C >= 2.
        generator (torch.Generator, optional): the source of randomness.
        imbalance (float or (float, float)): the range (low, high) of rho, 1 <= low <= high; one
            number fixes it (1: balanced priors).
        late_fraction (float): the share of chunks whose target accuracy is in ``late_band``.
        late_band ((float, float)): the late-training accuracy band, 0 <= low <= high <= 1.
        head_bias (float or (float, float)): the range of b, 0 <= low <= high; one number fixes
            it.
        return_priors (bool): also return the priors (S, C).

    Returns:
        tuple: logits (S, N, C) float32, labels (S, N) int64[, priors (S, C) float32].
    """
    check_count("num_chunks", num_chunks, 1)
    check_count("chunk_size", chunk_size, 1)
    check_count("num_classes", num_classes, 2)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"'generator' should be a torch.Generator or None but got "
                        f"{type(generator).__name__}")
    low, high = check_range("imbalance", imbalance, 1.0, math.inf)
    if not is_real(late_fraction) or not 0 <= late_fraction <= 1:
        raise ValueError(f"'late_fraction' should be a number in [0, 1] but got "
                         f"{late_fraction!r}")
    late_band = check_range("late_band", late_band, 0.0, 1.0, pair=True)
    bias_low, bias_high = check_range("head_bias", head_bias, 0.0, math.inf)

    ratio = torch.exp(uniform((num_chunks, 1), math.log(low), math.log(high), generator))
    rank = torch.rand(num_chunks, num_classes, generator=generator).argsort(-1)
    log_priors = torch.log_softmax(-rank / (num_classes - 1) * ratio.log(), -1)
    priors = log_priors.exp()
    labels = torch.multinomial(priors, chunk_size, replacement=True, generator=generator)
    accuracy = quality(num_chunks, late_fraction, late_band, generator)
    logits, scale = _logits_of_quality(labels, accuracy, num_classes, generator)
    bias = scale * uniform((num_chunks, 1), bias_low, bias_high, generator)
    logits += (bias * (log_priors - log_priors.mean(-1, keepdim=True))).unsqueeze(1)
    return (logits, labels, priors) if return_priors else (logits, labels)


def class_priors(class_counts, classes=None, name="class_counts"):
    """Class frequencies (C,) float32 from per-class counts: ``class_counts`` (a sequence or a 1-D
    tensor of C >= 2 finite numbers >= 0, not all 0) divided by their sum; ``classes``, if given,
    is the C they must have. A ValueError naming ``name`` otherwise. A class of count 0 is allowed
    until a label falls in it (the loss then says so)."""
    if isinstance(class_counts, torch.Tensor):
        values = class_counts.detach().cpu()
    elif isinstance(class_counts, (list, tuple)) and all(map(is_real, class_counts)):
        values = torch.tensor([float(c) for c in class_counts], dtype=torch.float64)
    else:
        raise ValueError(f"'{name}' should be a sequence or 1-D tensor of per-class counts but "
                         f"got {type(class_counts).__name__}")
    if values.dim() != 1 or values.numel() < 2 or values.dtype == torch.bool or values.is_complex():
        raise ValueError(f"'{name}' should be C >= 2 per-class counts (1-D) but got "
                         f"{values.dtype} {tuple(values.shape)}")
    if classes is not None and values.numel() != classes:
        raise ValueError(f"'{name}' should hold one count per class, {classes}, but holds "
                         f"{values.numel()}")
    values = values.double()
    if not bool(torch.isfinite(values).all()) or bool((values < 0).any()) or not values.sum() > 0:
        raise ValueError(f"'{name}' should hold finite counts >= 0, not all 0, but got "
                         f"{values.tolist()}"[:300])
    return (values / values.sum()).float()


def chunk_priors(target, classes, smoothing=0.5):
    """Each chunk's class frequencies read from its labels, without gradient: (counts + a) /
    (N + a C) with a = ``smoothing``, so that a class absent from the chunk is rare, not
    impossible. ``target`` (..., N) class indices or (..., N, C) soft labels; returns (..., C)."""
    with torch.no_grad():
        if target.is_floating_point():
            counts = target.float().sum(-2)
        else:
            counts = F.one_hot(target.long(), classes).sum(-2).float()
        return (counts + smoothing) / (counts.sum(-1, keepdim=True) + smoothing * classes)


class _FrozenClassAware(torch.autograd.Function):
    """A frozen ClassAwareSurrogate on hard labels and class frequencies p shared by the samples,
    with its gradient written out: d L / d z = w(p_y) sum_k g_k'(u_k) (softmax(z + tau_k log p)
    - e_y). As exp(z_c + tau_k log p_c) = exp(z_c) p_c^tau_k, one exp of the logits serves every
    tau: the K sums are one product with the (C, K) powers p^tau, and so is the backward pass's
    mix of the K softmaxes. What depends on the label alone (-tau_k log p_y and the weight
    w(p_y)) is a table with a row per class, gathered; the steps of every tau are one product
    with the inverse widths laid out block-diagonally and one sigmoid over (N, K J), their
    values one matrix-vector product and their slopes one product with the heights laid out
    block-diagonally. On a CPU, at 10 classes, the cost is the number of operations."""

    @staticmethod
    def forward(ctx, logits, labels, table, scale=None):
        powers, powers_t, shifts, weights, offsets, spread, scaled_heights, slopes, block, \
            slope_row, scaled = table
        index = labels.view(-1, 1)
        shifted = logits - logits.amax(1, keepdim=True)
        own = shifted.gather(1, index)  # z_y - max
        exps = shifted.exp_()  # (N, C), each <= 1; times p^tau <= 1 never overflows
        # (N, K). With many classes the product is cheaper as (K, C) x (C, N): this CPU's BLAS
        # runs the thin (N, C) x (C, K) one at a third of the speed at C = 1000, slower below 100.
        sums = exps @ powers if exps.shape[1] < 100 else (powers_t @ exps.T).T
        # u_k = log S_k - tau_k log p_y - (z_y - max): (N, K).
        u = sums.log().add_(shifts.index_select(0, labels)).sub_(own)
        # sigmoid((u_k - c_kj) / w_kj) for every tau and step: one product with the (K, K J)
        # block-diagonal 1 / w, (N, K J).
        steps = torch.addmm(offsets, u, spread).sigmoid_()
        values = torch.addmv(u @ slopes, steps, scaled_heights)  # sum_k g_k(u_k)
        if scale is not None:  # w(p_c) times the scale, kept for the next call's scale
            if scaled.get(scale) is None:
                scaled.clear()
                scaled[scale] = weights * scale
            weights = scaled[scale]
        weight = weights.index_select(0, labels)  # w(p_y) (times the scale), (N, 1)
        # g_k'(u_k) w(p_y) = (slope_k + sum_j h_kj s_kj (1 - s_kj)) w(p_y): (N, K).
        coefficient = torch.addmm(slope_row, torch.addcmul(steps, steps, steps, value=-1),
                                  block).mul_(weight)
        ctx.save_for_backward(exps, coefficient, sums, index)
        ctx.powers_t = powers_t
        weight = weight.view(-1)
        return values.mul_(weight) if scale is None else torch.dot(values, weight)

    @staticmethod
    def backward(ctx, grad_values):
        refuse_second_derivative()
        exps, coefficient, sums, index = ctx.saved_tensors
        coefficient = coefficient * (grad_values if grad_values.dim() == 0
                                     else grad_values.view(-1, 1))
        total = coefficient.sum(1, keepdim=True).neg_()
        grad = coefficient.div_(sums) @ ctx.powers_t  # (N, C)
        return grad.mul_(exps).scatter_add_(1, index, total), None, None, None


class ClassAwareSurrogate(Surrogate):
    """A learned loss for metrics that depend on the classes (balanced accuracy, macro-F1): it
    knows how common each class is.

    Given class frequencies p (the training set's ``class_counts``, or each chunk's labels read
    without gradient), each label y of a sample with logits z gives
    ``w(p_y) * sum_k g_k(u_k)``, where

    - ``u_k = logsumexp(z + tau_k log p) - (z_y + tau_k log p_y)``: the cross-entropy of logits
      adjusted by tau_k times the log frequencies, for a few fixed ``taus`` (tau = 0 is plain
      cross-entropy, tau = 1 the logit-adjusted loss of Menon et al., ICLR 2021, which is also the
      balanced softmax of Ren et al., NeurIPS 2020): the learned mix of them sets how far the
      model's scores are pushed away from the frequent classes;
    - ``g_k``: learned non-decreasing functions (:class:`~reloss.surrogate.MonotoneSteps`), free
      to saturate where the metric stops caring;
    - ``w(p_y) = (C p_y) ** -beta``: a learned class weight, non-increasing in the label's
      frequency (beta = 1 re-weights by inverse frequency, Cui et al.'s family), 1 for a
      balanced set.

    So it can learn the hand-designed long-tail fixes (an additive logit adjustment, re-weighting
    by frequency) and how much of each a metric wants; every u_k is smallest for the label itself
    and the loss never rises when one falls. Any number of classes; soft labels (N, C) give the
    label-weighted mean over the classes with a non-zero label.

    Args:
        taus (sequence of float): the adjustments tau_k, each >= 0.
        knots (int): learned steps per adjustment.
        span (float): the range of u the steps start out spread over.
        linear (bool): add the linear part to each g_k.
        beta (float): the class weight's starting power, in (0, 1).
        smoothing (float): a, for frequencies read from a chunk's labels: (counts + a) /
            (N + a C).
    """

    task = "cls"
    # What it pretrains on: long-tailed chunks, where the class-aware metrics part from accuracy
    # (at 1000 classes a chunk of 128 holds too few of each class to tell them apart).
    sample = staticmethod(sample_long_tailed)
    sample_kinds = (dict(num_classes=10), dict(num_classes=100))

    def __init__(self, taus=(0.0, 1.0, 2.0), knots=16, span=8.0, linear=True, beta=0.25,
                 smoothing=0.5):
        super().__init__()
        self.taus = tuple(float(t) for t in taus)
        if not self.taus or min(self.taus) < 0 or not all(map(math.isfinite, self.taus)):
            raise ValueError(f"'taus' should be one or more finite numbers >= 0 but got {taus!r}")
        if not is_real(beta) or not 0 < beta < 1:
            raise ValueError(f"'beta' should be a number in (0, 1) but got {beta!r}")
        if not is_real(smoothing) or not 0 < smoothing < math.inf:
            raise ValueError(f"'smoothing' should be a finite number > 0 but got {smoothing!r}")
        self.knots, self.span, self.linear = knots, span, linear
        self.beta0, self.smoothing = float(beta), float(smoothing)
        self.num_features = len(self.taus) + 1
        self.net = MonotoneSteps(len(self.taus), knots, span, linear)
        self.raw_beta = nn.Parameter(torch.tensor(math.log(beta / (1 - beta))))
        self._frozen_table = None

    def config(self):
        return dict(taus=list(self.taus), knots=self.knots, span=self.span, linear=self.linear,
                    beta=self.beta0, smoothing=self.smoothing)

    @property
    def beta(self):
        """The learned power of the class weight, in (0, 1)."""
        return torch.sigmoid(self.raw_beta)

    def chunk_inputs(self, pred, target):
        """For pretraining: the keyword inputs of :meth:`features` for chunks (S, N, ...): each
        chunk's frequencies read from its labels, one row per sample (S, N, C)."""
        priors = chunk_priors(target, pred.shape[-1], self.smoothing)
        return dict(priors=priors.unsqueeze(-2).expand(*target.shape[:2], pred.shape[-1]))

    def _priors(self, priors, logits, target):
        """Log frequencies (1, C) or (N, C), checked against the labels."""
        count, classes = logits.shape
        if priors is None:
            return chunk_priors(target, classes, self.smoothing).log().unsqueeze(0)
        check_tensor("priors", priors)
        if tuple(priors.shape) not in ((classes,), (count, classes)):
            raise ValueError(f"'priors' should be (C,) = ({classes},) or (N, C) = "
                             f"({count}, {classes}) class frequencies but got "
                             f"{tuple(priors.shape)}")
        priors = priors.to(device=logits.device, dtype=logits.dtype)
        if priors.device.type == "cpu" and not bool(((priors >= 0) & (priors <= 1)).all()):
            raise ValueError("'priors' should hold class frequencies in [0, 1] but holds values "
                             "outside it (or NaN)")
        return priors.log().reshape(-1, classes)

    def features(self, pred, target, weight=None, priors=None):
        """Features (N, k, len(taus) + 1): u_k for each tau, then log(C p_y); and the label
        weights (N, k). ``priors`` (C,) or (N, C): the class frequencies (default: read from
        ``target``, smoothed)."""
        logits, index, weights = _checked_units(pred, target)
        if weights is None:
            weights = torch.ones(index.shape, dtype=logits.dtype, device=logits.device)
        if weight is not None:
            check_tensor("weight", weight)
            if tuple(weight.shape) != (pred.shape[0],):
                raise ValueError(f"'weight' should be (N,) = ({pred.shape[0]},) sample weights "
                                 f"but got {tuple(weight.shape)}")
            weights = weights * weight.reshape(-1, 1).to(weights.dtype)
        log_priors = self._priors(priors, logits, target)
        own_prior = log_priors.expand(logits.shape[0], -1).gather(-1, index)
        absent = (weights != 0) & torch.isinf(own_prior) if index.device.type == "cpu" else None
        if absent is not None and bool(absent.any()):
            absent = sorted(set(index[absent].tolist()))
            raise ValueError(f"'priors' (class_counts) give frequency 0 to class(es) {absent}, "
                             f"which 'target' holds: every class with a label needs a count > 0")
        us = []
        for tau in self.taus:
            adjusted = logits if tau == 0 else logits + tau * log_priors
            us.append(torch.logsumexp(adjusted, -1, keepdim=True) - adjusted.gather(-1, index))
        ratio = (own_prior + math.log(logits.shape[-1])).detach()
        return torch.stack([*us, ratio.expand_as(us[0])], -1), weights

    def head(self, features, weights):
        values = self.net(features[..., :-1]).squeeze(-1) * torch.exp(-self.beta
                                                                       * features[..., -1])
        return (values * weights).sum(-1) / weights.sum(-1).clamp_min(
            torch.finfo(values.dtype).tiny)

    @property
    def frozen(self):
        """Whether no parameter requires a gradient (read from the parameters themselves: a
        frozen loss asks at every call)."""
        return not self.raw_beta.requires_grad and self.net.frozen

    def _table(self, priors, logits, target):
        """For frequencies ``priors`` (C,) shared by the samples, the learned parameters and the
        per-class quantities as plain tensors laid out for :class:`_FrozenClassAware`, and
        whether a class has frequency 0; None for frequencies read from the labels or given per
        sample. Kept while ``priors`` (the same tensor, unchanged), the parameters, the dtype
        and the device stay the same: a loss's class counts are checked and laid out once."""
        if not isinstance(priors, torch.Tensor) or priors.dim() != 1:
            return None
        key = (id(priors), priors._version, logits.dtype, logits.device, logits.shape[1],
               self.net.version(), self.raw_beta._version)
        if self._frozen_table is not None and self._frozen_table[0] == key and \
                self._frozen_table[1] is priors:
            return self._frozen_table[2]
        log_priors = self._priors(priors, logits, target)[0]  # checked: (C,)
        dtype, device = logits.dtype, logits.device
        with torch.no_grad():
            centres, inverse_widths, heights, scaled_heights, slopes = \
                self.net.frozen_parameters(dtype, device)
            taus = torch.tensor(self.taus, dtype=dtype, device=device)
            powers = log_priors.exp().unsqueeze(1).pow(taus)  # 0^0 = 1: tau = 0 keeps them all
            # -tau_k log p_c (0 at tau = 0, also for a class of frequency 0), then w(p_c).
            shifts = torch.where(taus == 0, 0.0, -log_priors.unsqueeze(1) * taus)
            weights = torch.exp(-float(self.beta) * (log_priors + math.log(logits.shape[1])))
            table = (powers.contiguous(), powers.T.contiguous(), shifts, weights.unsqueeze(1),
                     (-centres * inverse_widths).view(1, -1),
                     torch.block_diag(*inverse_widths.unsqueeze(1)), scaled_heights.reshape(-1),
                     slopes, torch.block_diag(*heights.unsqueeze(-1)), slopes.view(1, -1), {})
        entry = (table, bool(torch.isinf(log_priors).any()))
        self._frozen_table = (key, priors, entry)
        return entry

    def _frozen(self, pred, target, priors, scale):
        """The frozen evaluation for hard labels and shared frequencies (per-sample values, or
        with ``scale`` their sum times it), or None where it does not apply (the autograd path
        then runs)."""
        if not (self.frozen or not torch.is_grad_enabled()) or target.dim() != 1 or \
                target.is_floating_point() or pred.dim() != 2 or not pred.is_floating_point() \
                or target.shape[0] != pred.shape[0] or pred.shape[1] < 2:
            return None
        return self._frozen_values(upcast_half(pred), target.long(), priors, scale)

    def _frozen_values(self, logits, labels, priors, scale):
        """_FrozenClassAware on checked logits and int64 labels, or None where the frequencies
        are not shared (C,) ones or a label falls in a class of frequency 0, or under
        torch.compile (which cannot trace the custom Function and its cached table)."""
        if torch.compiler.is_compiling():
            return None
        entry = self._table(priors, logits, labels)
        if entry is None:
            return None
        table, some_absent = entry
        if some_absent and labels.device.type == "cpu" and bool(
                torch.isinf(table[3].index_select(0, labels)).any()):
            return None  # the autograd path names the class
        if torch.is_autocast_enabled(logits.device.type):  # its products stay in the logits' dtype
            with torch.autocast(logits.device.type, enabled=False):
                return _FrozenClassAware.apply(logits, labels, table, scale)
        return _FrozenClassAware.apply(logits, labels, table, scale)

    def frozen_mean(self, logits, labels, scale=1.0, priors=None):
        """``scale`` times the mean over samples of the values for hard labels, evaluated as a
        frozen surrogate is where the frequencies ``priors`` (C,) are given (as
        :meth:`ClassificationSurrogate.frozen_mean`: no gradient reaches the parameters), else
        by :meth:`forward`. logits (N, C) float, C >= 2; labels (N,) integer class
        indices in [0, C), not checked (``ReLossCls`` has checked them). 0 where N = 0."""
        if not (isinstance(logits, torch.Tensor) and isinstance(labels, torch.Tensor)
                and logits.dim() == 2 and logits.is_floating_point() and logits.shape[1] >= 2
                and labels.dim() == 1 and labels.shape[0] == logits.shape[0]
                and _integer(labels.dtype)):
            _check_hard_labels(logits, labels)
        if not logits.shape[0]:
            return logits.sum() * 0
        values = self._frozen_values(upcast_half(logits), labels.long(), priors,
                                     scale / logits.shape[0])
        if values is None:
            values = self(logits, labels, priors=priors)
            return values if scale == 1 else values * scale
        return values

    def forward(self, pred, target, weight=None, reduction="mean", priors=None):
        """Per-sample losses, multiplied by ``weight`` (N,) if given, then reduced ('mean'
        divides by the number of samples with a non-zero weight). ``priors`` (C,) or (N, C):
        the class frequencies (:func:`class_priors` makes them from counts; default: read from
        ``target``)."""
        check_choice("reduction", reduction, REDUCTIONS)
        if weight is None and isinstance(pred, torch.Tensor) and isinstance(target, torch.Tensor):
            count = pred.shape[0] if pred.dim() else 0
            scale = None if reduction == "none" or not count else (
                1.0 if reduction == "sum" else 1 / count)
            values = self._frozen(pred, target, priors, scale)
            if values is not None:
                return values
        features, weights = self.features(pred, target, weight, priors)
        values = self.head(features, weights)  # a sample's weight cancels in its label mean
        if weight is not None:
            values = values * weight.to(values.dtype)
        return reduce_values(values, reduction, weights.sum(-1) > 0)


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
    band=(0.85, 0.99), chunk_size=128, sample=sample_classification,
    sample_kinds=tuple(dict(num_classes=c) for c in (10, 100, 1000)),
    prediction_fields=("logits", "labels"), prediction_ndim=2,
    prediction_shapes=lambda logits: {"labels": tuple(logits.shape[:1])},
    index_field="labels",
    # The gradient may fall 10x below cross-entropy's on a chunk (so that the loss can saturate
    # on hopeless samples) but rise only 1.5x above it.
    pretrain_steps=600, pretrain_tolerance=(10.0, 1.5),
    relabel=relabel,
    variants=(ClassAwareSurrogate,),
)
