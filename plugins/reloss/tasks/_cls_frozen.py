"""The frozen ClassificationSurrogate, evaluated by hand: the learned steps' parameters laid out
as plain tensors once, and autograd Functions whose backward is written out (multiply-adds, no
exp), so that a model trains with the surrogate at about the cost of cross-entropy on a CPU.
Private to :mod:`reloss.tasks.cls`, which calls :func:`frozen_values`; the tests compare every
path with the plain autograd evaluation (tests/test_speed_paths.py).
"""
from __future__ import annotations

import math

import torch

from ..surrogate import refuse_second_derivative

#: Up to this many classes the frozen path takes exp and sum of every temperature at once
#: (fewest operations; torch's softmax is slow on short rows); above it, one softmax per
#: temperature (fewest passes over the logits).
FEW_CLASSES = 32


def _softmax_in_place(x):
    """softmax(x, 1), written over x on a CPU (a fresh buffer of the logits' size costs about as
    much as a pass over them there); elsewhere into a new tensor."""
    return torch.softmax(x, 1, out=x) if x.device.type == "cpu" else torch.softmax(x, 1)


class FrozenClassificationLoss(torch.autograd.Function):
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
        if classes <= FEW_CLASSES:
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
                             steps.view(features * steps.shape[1], count * units), beta=factor,
                             alpha=factor)
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
        refuse_second_derivative()
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
#: runs element by element, several times slower than over the N samples of each class
#: (docs/speed.md).
SHORT_ROWS = 16


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
        refuse_second_derivative()
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
    """The frozen surrogate at T = 1 over rows shorter than SHORT_ROWS as one autograd node:
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
        slopes = _FrozenSteps.backward(ctx, grad_values)[0]  # g'(u) per label, (N, k); refuses
        # a second derivative
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
    Over rows shorter than SHORT_ROWS the log-softmax runs over the transposed logits. At
    T != 1 the scaled logits are floored as in FrozenClassificationLoss."""
    inverse = table[0]
    if inverse is None and logits.shape[1] < SHORT_ROWS:
        return _FrozenShortRowsLoss.apply(logits, index, share, table[1:], scale)
    if inverse is not None:
        floor = math.log(torch.finfo(logits.dtype).tiny) + math.log(logits.shape[1]) + 1
        top = logits.detach().amax(1, keepdim=True)
        logits = torch.maximum(logits * inverse, top * inverse + floor)
    if logits.shape[1] < SHORT_ROWS:
        own = torch.log_softmax(logits.t(), 0).gather(0, index.t()).t()
    else:
        own = torch.log_softmax(logits, 1).gather(1, index)
    return _FrozenSteps.apply(own, share, table[1:], scale)


def general_table(steps, temperatures, dtype, device):
    """The temperatures and the learned steps' parameters (a :class:`~reloss.surrogate.
    MonotoneSteps` with one input per temperature) as plain tensors of ``dtype`` on ``device``,
    laid out for FrozenClassificationLoss."""
    centres, inverse_widths, heights, scaled_heights, linear = steps.frozen_parameters(dtype,
                                                                                       device)
    values = torch.tensor(temperatures, dtype=dtype, device=device)
    features = len(temperatures)
    return (tuple(1 / t for t in temperatures),
            (1 / values).view(features, 1, 1), values.view(features, 1, 1),
            inverse_widths.unsqueeze(-1), (-centres * inverse_widths).unsqueeze(-1),
            scaled_heights.reshape(1, -1), heights.unsqueeze(1),
            linear.view(features, 1, 1), -linear.view(1, features))


def single_table(steps, temperature, dtype, device):
    """The learned steps' parameters laid out for _single_temperature_loss (one temperature),
    computed in float64 and stored in ``dtype``."""
    centres, inverse_widths, heights, scaled_heights, linear = steps.frozen_parameters(
        torch.float64, device)
    table = (None if temperature == 1 else 1 / temperature,
             (-temperature * inverse_widths).view(1, -1),  # times -u / T: (u - c) / w
             (-centres * inverse_widths).view(1, -1), scaled_heights.view(-1, 1),
             -temperature * heights.view(-1, 1), -temperature * linear.view(1, 1),
             float(linear) * temperature,
             torch.full((1, 1), -1.0, dtype=torch.float64, device=device))
    return tuple(t.to(dtype) if isinstance(t, torch.Tensor) else t for t in table)


def frozen_values(steps, temperatures, logits, index, share, scale, cache):
    """Per-sample values of a frozen ClassificationSurrogate (its learned ``steps`` at
    ``temperatures``), or with ``scale`` their sum times it, with the gradient written out:
    logits (N, C) float32/64, index (N, k) class indices, share (N, k) label weights summing to 1
    per row, or None with k = 1. The parameters' layout is kept in ``cache`` (a dict) per dtype
    and device until a parameter of ``steps`` changes."""
    single = len(temperatures) == 1
    key, version = (logits.dtype, logits.device), steps.version()
    cached = cache.get(key)
    if cached is None or cached[0] != version:
        build = single_table if single else general_table
        cached = cache[key] = (version, build(steps, temperatures[0] if single else temperatures,
                                              logits.dtype, logits.device))
    if single:
        return _single_temperature_loss(logits, index, share, cached[1], scale)
    return FrozenClassificationLoss.apply(logits, index, share, cached[1], scale)
