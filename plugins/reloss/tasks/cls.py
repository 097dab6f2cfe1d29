"""Classification: ClassificationSurrogate, top-1 accuracy per chunk, cross-entropy, and
synthetic logits whose accuracy spreads over [0, 1].

Stored predictions: ``logits`` (M, C) float and ``labels`` (M,) class indices in [0, C).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

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
from ..surrogate import REDUCTIONS, MonotoneSteps, Surrogate, reduce_values, upcast_half
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
        values = frozen_values(self.net, self.temperatures, upcast_half(logits),
                               labels.long().unsqueeze(1), None, scale / count if count else None,
                               self._tables)
        return values if count else values.sum()

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
        if torch.is_grad_enabled() and not self.frozen:
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
)
