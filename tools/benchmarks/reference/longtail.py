"""Long-tail classification anchors: the hand-designed losses that a long-tail benchmark compares a
learned surrogate with, each a few lines after its paper, and the check of the class counts they
all take.

Not a task module (no regimes, no ``run``): the reference code a long-tail benchmark builds on.

- :func:`logit_adjusted_loss`: Menon et al., ICLR 2021; :func:`posthoc_adjust`, its post-hoc form.
- :func:`balanced_softmax_loss`: Ren et al., NeurIPS 2020 (the above with tau = 1).
- :func:`ldam_loss` with :func:`ldam_margins`: Cao et al., NeurIPS 2019; its deferred
  re-weighting with :func:`drw_weights` (Cui et al., CVPR 2019) from the epoch
  :func:`drw_active` says.
- :func:`check_class_counts`: the training images per class, checked (it needs only torch and
  reloss._validate, so that it can move into the package as it is).

The losses take hard targets only, (N,) integer class indices, and refuse soft (N, C) labels with
a TypeError: none of the papers defines its loss for mixup or smoothed labels. Each returns the
mean over the batch, as ``F.cross_entropy`` does (a weighted mean where class weights are given).
"""
import math
import numbers

import torch
import torch.nn.functional as F

from reloss._validate import check_class_indices

DRW_START = 0.8  # Cao et al. switch re-weighting on at epoch 160 of 200


def _first(bad, counts):
    index = int(bad.nonzero()[0, 0])
    return f"{counts[index].item():g} for class {index}"


def check_class_counts(class_counts, num_classes, labels=None):
    """The number of training images of each class, checked, as a (C,) float64 tensor.

    Args:
        class_counts: (C,) counts n_j >= 0, whole numbers (a tensor, an array or a sequence).
        num_classes (int or None): C, the length expected; None takes any length >= 1.
        labels: optional integer class indices (any shape) that will be trained on: each class
            that occurs in them must have a count > 0 (else its prior is 0 and its log -inf).

    Raises:
        TypeError: ``class_counts`` is not numbers, or ``labels`` not integers.
        ValueError: ``class_counts`` has the wrong length, a NaN or Inf, a negative or fractional
            count, no count > 0, or a count of 0 for a class in ``labels``; ``labels`` holds an
            index outside [0, C).
    """
    if num_classes is not None and (isinstance(num_classes, bool)
                                    or not isinstance(num_classes, numbers.Integral)
                                    or num_classes < 1):
        raise ValueError(f"'num_classes' should be an integer >= 1 or None but got "
                         f"{num_classes!r}")
    try:
        counts = torch.as_tensor(class_counts)
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(f"'class_counts' should be a 1-D tensor or sequence of numbers (images "
                        f"per class) but got {type(class_counts).__name__}") from error
    if counts.dtype == torch.bool or counts.is_complex():
        raise TypeError(f"'class_counts' should hold real numbers (images per class) but got "
                        f"dtype {counts.dtype}")
    length = "C" if num_classes is None else f"C = {num_classes}"
    if counts.dim() != 1 or counts.numel() < 1 or (num_classes is not None
                                                   and counts.numel() != num_classes):
        raise ValueError(f"'class_counts' should be 1-D with one count per class ({length}) but "
                         f"got shape {tuple(counts.shape)}")
    counts = counts.double()
    for bad, expected in ((~torch.isfinite(counts), "finite counts"),
                          (counts < 0, "counts >= 0"),
                          ((counts - counts.round()).abs() > 1e-6, "whole numbers of images")):
        if bool(bad.any()):
            raise ValueError(f"'class_counts' should hold {expected} but got {_first(bad, counts)}")
    if not bool((counts > 0).any()):
        raise ValueError("'class_counts' should have at least one count > 0 but all are 0")
    if labels is not None:
        labels = torch.as_tensor(labels)
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise TypeError(f"'labels' should hold integer class indices but got dtype "
                            f"{labels.dtype}")
        check_class_indices("labels", labels, counts.numel())
        if labels.numel():
            occurs = torch.zeros(counts.numel(), dtype=torch.bool)
            occurs[labels.flatten().long().cpu()] = True
            empty = occurs & (counts.cpu() == 0)
            if bool(empty.any()):
                raise ValueError(f"'class_counts' should be > 0 for every class in 'labels' but "
                                 f"got {_first(empty, counts.cpu())}, which occurs there")
    return counts


def _check_logits(logits, form, two_d):
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"'logits' should be a torch.Tensor but got {type(logits).__name__}")
    if (logits.dim() != 2 if two_d else logits.dim() < 1) or not logits.is_floating_point():
        raise ValueError(f"'logits' should be a {form} floating-point tensor but got "
                         f"{logits.dtype} {tuple(logits.shape)}")


def _checked(logits, target, class_counts):
    """(hard target, class counts on the logits' device) after the checks."""
    _check_logits(logits, "2-D (N, C)", two_d=True)
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"'target' should be a torch.Tensor but got {type(target).__name__}")
    if target.shape == logits.shape and target.is_floating_point():
        raise TypeError(f"'target' should be (N,) integer class indices: the long-tail anchors "
                        f"take hard labels only, but got soft labels of shape "
                        f"{tuple(target.shape)}")
    if target.shape != logits.shape[:1] or target.is_floating_point() or target.is_complex() \
            or target.dtype == torch.bool:
        raise ValueError(f"'target' should be (N,) = ({logits.shape[0]},) integer class indices "
                         f"but got {target.dtype} {tuple(target.shape)}")
    counts = check_class_counts(class_counts, logits.shape[1], labels=target)
    return target.long(), counts.to(logits.device)


def _check_number(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"'{name}' should be a finite number but got {value!r}")


def _scaled_log_prior(counts, tau, dtype):
    """tau * log(prior), prior = counts / counts.sum(); no adjustment at all when tau is 0 (a
    class without images then keeps its logit rather than 0 * -inf)."""
    _check_number("tau", tau)
    log_prior = (counts / counts.sum()).log()
    return (tau * log_prior if tau else torch.zeros_like(log_prior)).to(dtype)


def logit_adjusted_loss(logits, target, class_counts, tau=1.0):
    """Logit-adjusted cross-entropy (Menon et al., "Long-tail learning via logit adjustment",
    ICLR 2021): cross-entropy of f_j(x) + tau * log(pi_j), pi_j = n_j / sum_k n_k the training
    prior. Only hard (N,) targets; see :func:`check_class_counts` for ``class_counts``."""
    target, counts = _checked(logits, target, class_counts)
    return F.cross_entropy(logits + _scaled_log_prior(counts, tau, logits.dtype), target)


def balanced_softmax_loss(logits, target, class_counts):
    """Balanced softmax (Ren et al., "Balanced Meta-Softmax for Long-Tailed Visual Recognition",
    NeurIPS 2020): cross-entropy of f_j(x) + log(n_j). log(n_j) = log(pi_j) + log(sum_k n_k),
    and the softmax ignores a shift common to all classes: this is :func:`logit_adjusted_loss`
    with tau = 1. Only hard (N,) targets."""
    target, counts = _checked(logits, target, class_counts)
    return F.cross_entropy(logits + counts.log().to(logits.dtype), target)


def ldam_margins(class_counts, max_margin=0.5):
    """LDAM's per-class margins Delta_j = K / n_j^(1/4), K chosen so that the largest (the rarest
    class's) is ``max_margin`` (Cao et al., NeurIPS 2019, and their code's ``max_m``). A class
    without images gets 0 (it is never a target). (C,) float64."""
    counts = check_class_counts(class_counts, None)
    _check_number("max_margin", max_margin)
    margins = torch.where(counts > 0, counts.clamp_min(1) ** -0.25, torch.zeros_like(counts))
    return margins * (max_margin / margins.max())


def ldam_loss(logits, target, class_counts, max_margin=0.5, scale=30.0, weight=None):
    """Label-distribution-aware margin loss (Cao et al., "Learning Imbalanced Datasets with
    Label-Distribution-Aware Margin Loss", NeurIPS 2019): the true class's logit minus its margin
    Delta_y (:func:`ldam_margins`), all logits times ``scale``, then cross-entropy, weighted by
    ``weight`` (C,) when given (the DRW stage: :func:`drw_weights`), a weighted mean then as in
    ``F.cross_entropy``. Defaults are the authors' code's (max_m = 0.5, s = 30). Only hard (N,)
    targets."""
    target, counts = _checked(logits, target, class_counts)
    _check_number("scale", scale)
    if weight is not None and (not isinstance(weight, torch.Tensor)
                               or weight.shape != logits.shape[1:]):
        raise ValueError(f"'weight' should be None or a ({logits.shape[1]},) tensor of class "
                         f"weights but got {tuple(getattr(weight, 'shape', ())) or weight!r}")
    margins = ldam_margins(counts, max_margin).to(logits.device, logits.dtype)
    adjusted = logits - F.one_hot(target, logits.shape[1]) * margins[target].unsqueeze(1)
    weight = None if weight is None else weight.to(logits.device, logits.dtype)
    return F.cross_entropy(scale * adjusted, target, weight=weight)


def drw_weights(class_counts, beta=0.9999):
    """The class-balanced weights of deferred re-weighting (Cao et al., NeurIPS 2019, DRW), from
    the effective number of samples (Cui et al., "Class-Balanced Loss Based on Effective Number
    of Samples", CVPR 2019): w_j = (1 - beta) / (1 - beta^n_j), normalised to sum to C. A class
    without images gets 0 (before the normalisation). (C,) float64."""
    counts = check_class_counts(class_counts, None)
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not 0 <= beta < 1:
        raise ValueError(f"'beta' should be a number in [0, 1) but got {beta!r}")
    effective = 1 - beta ** counts
    weights = torch.where(counts > 0, (1 - beta) / effective.clamp_min(1e-300),
                          torch.zeros_like(counts))
    return weights * (counts.numel() / weights.sum())


def drw_active(epoch, epochs, start=DRW_START):
    """Whether 0-based ``epoch`` of ``epochs`` trains with :func:`drw_weights` (before it: no
    weights): from epoch round(start * epochs) on, 160 of 200 in Cao et al.'s CIFAR schedule."""
    if not 0 <= start <= 1:
        raise ValueError(f"'start' should be a fraction of training in [0, 1] but got {start!r}")
    if not 0 <= epoch < epochs:
        raise ValueError(f"'epoch' should be in [0, epochs) = [0, {epochs}) but got {epoch!r}")
    return epoch >= round(start * epochs)


def posthoc_adjust(logits, class_counts, tau=1.0):
    """Post-hoc logit adjustment (Menon et al., ICLR 2021): f_j(x) - tau * log(pi_j), pi_j the
    training prior; predict its argmax. ``logits`` (..., C) of a model trained with plain
    cross-entropy. Every class needs a count > 0 (else its logit would become +inf)."""
    _check_logits(logits, "(..., C)", two_d=False)
    counts = check_class_counts(class_counts, logits.shape[-1]).to(logits.device)
    if bool((counts == 0).any()):
        raise ValueError(f"'class_counts' should be > 0 for every class in posthoc_adjust (a "
                         f"class without images would get an infinite boost) but got "
                         f"{_first(counts == 0, counts)}")
    return logits - _scaled_log_prior(counts, tau, logits.dtype)
