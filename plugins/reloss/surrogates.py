"""The learned losses. Each is ``head(features(pred, target))``:

- ``features`` turns a model's predictions into a few differentiable numbers per *unit* (a sample
  for classification, a keypoint for pose, a target position for sequences), so that the learned
  part never depends on the number of classes, the heatmap size, the vocabulary or the model width;
- ``head`` maps the features of each sample's units to one value per sample.

Pretraining (:mod:`reloss.pretrain`) learns the head on stored features; the toolkits call
``forward``. No host toolkit is imported here.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from ._validate import check_choice, check_float, check_heatmaps, check_ndim, check_tensor
from .rank import upcast_half

REDUCTIONS = ("mean", "sum", "none")


def _mlp(sizes):
    """Linear layers of the given sizes with ELU between them (none after the last)."""
    layers = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(sizes) - 2:
            layers.append(nn.ELU())
    return nn.Sequential(*layers)


def weighted_unit_mean(values, weights):
    """Per-sample weighted mean over units: (N, U), (N, U) -> (N,); 0 where all weights are 0."""
    total = weights.sum(-1)
    return (values * weights).sum(-1) / total.clamp_min(torch.finfo(values.dtype).tiny)


def _unit_weights(weight, pred, dims, what):
    """``weight`` checked against the first two dims of ``pred``; ones where it is None."""
    if weight is None:
        return pred.new_ones(pred.shape[:2])
    check_tensor("weight", weight)
    if tuple(weight.shape) != tuple(pred.shape[:2]):
        raise ValueError(f"'weight' should be {dims} = {tuple(pred.shape[:2])} {what} but got "
                         f"{tuple(weight.shape)}")
    return weight


class Surrogate(nn.Module):
    """Base class: ``forward`` = features, then head, then the reduction."""

    #: The pretraining task ('cls', 'pose', 'nat') and the number of features per unit.
    task = None
    num_features = None

    def config(self):
        """Constructor arguments; saved with the weights so that a checkpoint rebuilds the net."""
        raise NotImplementedError

    def features(self, pred, target, weight=None):
        """Returns (features (N, U, F), unit weights (N, U))."""
        raise NotImplementedError

    def head(self, features, weights):
        """Per-sample values (N,) from features (N, U, F) and unit weights (N, U).

        By default ``self.net`` scores each unit and a sample's value is the weighted mean of its
        units' scores.
        """
        return weighted_unit_mean(self.net(features).squeeze(-1), weights)

    def feature_gram(self, pred, target, weight=None):
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

    def forward(self, pred, target, weight=None, reduction="mean"):
        check_choice("reduction", reduction, REDUCTIONS)
        features, weights = self.features(pred, target, weight)
        values = self.head(features, weights)
        if reduction == "none":
            return values
        if reduction == "sum":
            return values.sum()
        counted = (weights.sum(-1) > 0).to(values.dtype)
        return values.sum() / counted.sum().clamp_min(1)


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


class _RegionWeightedMSE(torch.autograd.Function):
    """Per-sample sum_k (a_k mse_in_k + b_k mse_out_k): the squared error of heatmap k summed
    over its peak region and over the rest (each divided by all its pixels), with coefficients
    a, b that receive no gradient. The forward pass is given the errors (e, and e on the peak
    region, 0 elsewhere) and the two sums; the backward pass is b e + (a - b) e_in."""

    @staticmethod
    def forward(ctx, pred, error, error_in, mse_in, mse_out, coefficient_in, coefficient_out):
        ctx.save_for_backward(error, error_in, coefficient_in, coefficient_out)
        ctx.shape = pred.shape
        return (coefficient_in * mse_in + coefficient_out * mse_out).sum(-1)

    @staticmethod
    def backward(ctx, grad_values):
        error, error_in, coefficient_in, coefficient_out = ctx.saved_tensors
        scale = grad_values.unsqueeze(-1) * (2.0 / error.shape[-1])
        out, difference = coefficient_out * scale, (coefficient_in - coefficient_out) * scale
        grad = torch.addcmul(error * out.unsqueeze(-1), error_in, difference.unsqueeze(-1))
        return grad.view(ctx.shape), None, None, None, None, None, None


class PoseSurrogate(Surrogate):
    """Learned weights times the squared error of keypoint heatmaps, at any heatmap size.

    Per keypoint it reads four size-free numbers: the log squared error over the target's peak
    region (where the target heatmap exceeds ``region`` x its maximum) and over the rest of the
    heatmap (each summed and divided by all H W pixels, so that the two add up to the MSE), the
    highest predicted value in the peak region and the highest elsewhere. An MLP maps them,
    squashed by ``tanh`` so that the net never extrapolates (a spiked heatmap reads like a high
    one), through a sigmoid to two weights in (``floor``, 1): one for the peak region's squared
    error, one for the rest's. An instance's value is the mean over its keypoints of
    ``weight_in * mse_in + weight_out * mse_out``, weighted by the keypoint weights (0 for
    invisible joints). The authors' pose surrogate is one learned weight per keypoint times its
    MSE; re-weighting whole keypoints did not train better than MSE here, while weighing the
    peak, which decides the argmax, above the background did (README, "Training with a
    surrogate").

    The weights are computed without gradient: at each pixel the gradient is MSE's, scaled by
    its keypoint's and region's weight. So there is nothing to game: the target is the minimum
    of every keypoint's loss, and no prediction lowers its loss by moving its weights.
    Pretraining learns the weights by ranking (the value depends on them), and its gradient
    penalty sees only the gradient that training uses.

    Args:
        hidden (int): width of the MLP.
        depth (int): number of hidden layers.
        region (float): fraction of the target peak that delimits the peak region.
        floor (float): the lowest weight, in [0, 1). Ranking alone drives the background's
            weight to ~1/50 of the peak's; trained with that, a model leaves its background
            untaught and ends far below MSE (``tools/benchmark_training.py --task pose``: PCK
            0.47 against 0.64, 3 seeds). A floor of 0.1 bounds the re-weighting to 10x.

    Note:
        N instances, K keypoints, H x W heatmaps; any H and W.
    """

    task, num_features = "pose", 4

    def __init__(self, hidden=32, depth=2, region=0.1, floor=0.1):
        super().__init__()
        if not 0 <= floor < 1:
            raise ValueError(f"'floor' should be in [0, 1) but got {floor!r}")
        self.hidden, self.depth, self.region, self.floor = hidden, depth, region, floor
        self.net = _mlp([self.num_features] + [hidden] * depth + [2])

    def config(self):
        return dict(hidden=self.hidden, depth=self.depth, region=self.region, floor=self.floor)

    _EPS = 1e-6
    # The log errors are centred and scaled before tanh: real predictions read -14 to -2.
    _LOG_CENTRE, _LOG_SCALE = -7.0, 4.0

    def _read(self, pred, target, weight, peak_pixels=False):
        """Features, weights, and what the loss needs (errors and their sums); with
        ``peak_pixels``, also where the two peaks are, which the features' gradients need."""
        check_heatmaps("pred", pred, "target", target, "(N, K, H, W)")
        weight = _unit_weights(weight, pred, "(N, K)", "keypoint weights")
        pred, target = pred.flatten(-2), target.to(pred.dtype).flatten(-2)
        pixels = pred.shape[-1]
        peak = target.amax(-1, keepdim=True)
        threshold = self.region * peak.clamp_min(1e-6)
        # 1 on the peak region, 0 elsewhere (arithmetic masks: faster than torch.where on CPU).
        near = (target - threshold).sign_().clamp_(min=0)
        error = pred - target
        error_in = error * near
        mse = torch.linalg.vector_norm(error, dim=-1).square() / pixels
        mse_in = torch.linalg.vector_norm(error_in, dim=-1).square() / pixels
        mse_out = (mse - mse_in).clamp_min(0)
        lowest = torch.tensor(-torch.finfo(pred.dtype).max, dtype=pred.dtype, device=pred.device)
        inside, outside = torch.addcmul(pred, 1 - near, lowest), torch.addcmul(pred, near, lowest)
        if peak_pixels:
            (inside, inside_at), (outside, outside_at) = inside.max(-1), outside.max(-1)
        else:
            inside, outside = inside.amax(-1), outside.amax(-1)
        # A heatmap without a peak region (or without anything outside it) reads 0 there.
        has_inside = (peak > threshold).squeeze(-1)
        has_outside = (target.amin(-1, keepdim=True) <= threshold).squeeze(-1)
        inside = torch.where(has_inside, inside, torch.zeros_like(inside))
        outside = torch.where(has_outside, outside, torch.zeros_like(outside))
        features = torch.stack((torch.log(mse_in + self._EPS), torch.log(mse_out + self._EPS),
                                inside, outside), -1)
        extra = dict(error=error, error_in=error_in, mse_in=mse_in, mse_out=mse_out,
                     has_inside=has_inside, has_outside=has_outside)
        if peak_pixels:
            extra.update(inside_at=inside_at, outside_at=outside_at)
        return features, weight.to(features.dtype), extra

    def features(self, pred, target, weight=None):
        return self._read(pred, target, weight)[:2]

    def region_weights(self, features):
        """The weights in (0, 1) of each keypoint's peak-region and background squared error,
        (N, K, 2), from features (N, K, 4); no gradient flows into the features."""
        features = features.detach()
        logs = (features[..., :2] - self._LOG_CENTRE) / self._LOG_SCALE
        squashed = torch.cat((logs, features[..., 2:]), -1).tanh()
        return self.floor + (1 - self.floor) * torch.sigmoid(self.net(squashed))

    def head(self, features, weights):
        errors = features[..., :2].exp() - self._EPS
        return weighted_unit_mean((self.region_weights(features) * errors).sum(-1), weights)

    def forward(self, pred, target, weight=None, reduction="mean"):
        check_choice("reduction", reduction, REDUCTIONS)
        with torch.no_grad():
            features, weights, extra = self._read(pred.detach(), target, weight)
            total = weights.sum(-1, keepdim=True)
            share = weights / total.clamp_min(torch.finfo(weights.dtype).tiny)
            coefficients = self.region_weights(features) * share.unsqueeze(-1)
        values = _RegionWeightedMSE.apply(pred, extra["error"], extra["error_in"], extra["mse_in"],
                                          extra["mse_out"], coefficients[..., 0],
                                          coefficients[..., 1])
        if reduction == "none":
            return values
        if reduction == "sum":
            return values.sum()
        return values.sum() / (total > 0).sum().clamp_min(1).to(values.dtype)

    def feature_gram(self, pred, target, weight=None):
        """Features, weights and the Gram matrices of the features' gradients, in closed form.

        d log(mse_in + eps) / d pred = 2 e near / (D (mse_in + eps)) over the D = H W pixels, and
        likewise for the rest with 1 - near; each peak value's gradient is the one-hot of its
        pixel, which lies in its own region. (Only the two error features' gradients reach the
        loss: see the class docstring.)
        """
        with torch.no_grad():
            features, weights, extra = self._read(pred, target, weight, peak_pixels=True)
            error = extra["error"]
            pixels = error.shape[-1]
            scale_in = 2 / (pixels * (extra["mse_in"] + self._EPS))
            scale_out = 2 / (pixels * (extra["mse_out"] + self._EPS))
            gram = features.new_zeros(*features.shape, 4)
            gram[..., 0, 0] = scale_in.square() * extra["mse_in"] * pixels
            gram[..., 1, 1] = scale_out.square() * extra["mse_out"] * pixels
            has_inside, has_outside = extra["has_inside"], extra["has_outside"]
            at_inside = error.gather(-1, extra["inside_at"].unsqueeze(-1)).squeeze(-1)
            at_outside = error.gather(-1, extra["outside_at"].unsqueeze(-1)).squeeze(-1)
            gram[..., 0, 2] = gram[..., 2, 0] = scale_in * at_inside * has_inside
            gram[..., 1, 3] = gram[..., 3, 1] = scale_out * at_outside * has_outside
            gram[..., 2, 2] = has_inside.to(gram.dtype)
            gram[..., 3, 3] = has_outside.to(gram.dtype)
        return features, weights, gram


def _sinusoid(positions, dim):
    """(T,) positions -> (T, dim) sinusoidal encodings (Vaswani et al., 2017)."""
    frequencies = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=positions.device)
                            * (-math.log(10000.0) / dim))
    angles = positions.float().unsqueeze(-1) * frequencies
    return torch.cat((angles.sin(), angles.cos()), -1)


class _TokenScores(torch.autograd.Function):
    """Per position, from logits (N, T, V) and token ids (N, T, 3) (target, previous and next
    target token): log p(target), log p(target) - max over other tokens of log p, log p(previous),
    log p(next), and with ``spread`` also the mean over the vocabulary of -log p (label
    smoothing's term), as (N, T, 4 or 5).

    Three passes over the vocabulary forward (log-sum-exp, top two; a mean with ``spread``) and
    one backward (the softmax, written in place of the gradient), instead of autograd's passes
    through log_softmax, scatter and max.
    """

    @staticmethod
    def forward(ctx, logits, tokens, spread):
        normalizer = torch.logsumexp(logits, -1, keepdim=True)
        picked = logits.gather(-1, tokens)
        top2, top2_index = logits.topk(2, dim=-1)
        is_top = top2_index[..., :1] == tokens[..., :1]
        best_other = torch.where(is_top, top2[..., 1:], top2[..., :1])
        best_other_index = torch.where(is_top, top2_index[..., 1:], top2_index[..., :1])
        log_p = picked - normalizer
        ctx.save_for_backward(logits, normalizer, tokens, best_other_index)
        out = [log_p[..., :1], picked[..., :1] - best_other, log_p[..., 1:]]
        if spread:
            out.append(normalizer - logits.mean(-1, keepdim=True))
        return torch.cat(out, -1)

    @staticmethod
    def backward(ctx, grad):
        logits, normalizer, tokens, best_other_index = ctx.saved_tensors
        own, margin, previous, following = grad[..., :4].unbind(-1)
        # d log p(k) / d z = onehot(k) - softmax; d margin / d z = onehot(target) - onehot(best);
        # d mean_k(-log p(k)) / d z = softmax - 1 / V.
        coefficient = -(own + previous + following)
        if grad.shape[-1] == 5:
            coefficient = coefficient + grad[..., 4]
        out = torch.sub(logits, normalizer).exp_().mul_(coefficient.unsqueeze(-1))
        if grad.shape[-1] == 5:
            out.sub_((grad[..., 4] / logits.shape[-1]).unsqueeze(-1))
        out.scatter_add_(-1, tokens, torch.stack((own + margin, previous, following), -1))
        out.scatter_add_(-1, best_other_index, -margin.unsqueeze(-1))
        return out, None, None


class SequenceSurrogate(Surrogate):
    """A learned loss for non-autoregressive translation, independent of vocabulary and model width.

    Per target position t it reads the log-probability of the target token, its margin to the
    best other token, and the log-probabilities the position gives the previous and next target
    tokens (high when the output is shifted by one: the typical NAT repetition and length errors).
    A small transformer encoder over the positions (sinusoidal positions, padding masked) gives a
    value per position; a sentence's value is their mean over non-padding positions.

    With ``reweight`` (the default) a position's value is ``c_t * (-log p(target))`` with
    ``c_t = 1 + spread * g_t * (1 - p(target))``: the transformer gives the gate ``g_t`` in (0, 1),
    computed without gradient. The gradient at each position's logits is then token
    cross-entropy's times ``c_t`` >= 1: it points as cross-entropy's does, the target tokens are
    the minimum (nothing to game), and the learned part can only add weight to positions that are
    not yet right (a weight that favours tokens already learned ranks as well but trains worse).
    Pretraining learns the gates by ranking. Without ``reweight`` the transformer's output is the
    value itself (free form, the earlier design).

    Args:
        dim (int): transformer width.
        layers (int): transformer encoder layers.
        heads (int): attention heads.
        floor (float): log-probabilities are read no lower than this.
        reweight (bool): the value is the token cross-entropy with learned extra weights.
        spread (float): with ``reweight``, the largest extra weight.

    Note:
        N sentences, T target positions, V vocabulary entries; any T and V.
    """

    task, num_features = "nat", 4

    def __init__(self, dim=32, layers=2, heads=4, floor=-20.0, reweight=True, spread=0.5):
        super().__init__()
        self.dim, self.layers, self.heads, self.floor = dim, layers, heads, floor
        self.reweight, self.spread = reweight, spread
        self.embed = _mlp([self.num_features, dim, dim])
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out = _mlp([dim, dim, 1])

    def config(self):
        return dict(dim=self.dim, layers=self.layers, heads=self.heads, floor=self.floor,
                    reweight=self.reweight, spread=self.spread)

    def features(self, pred, target, weight=None):
        """pred: (N, T, V) logits; target: (N, T) token ids; weight: (N, T), 0 at padding."""
        return self._features(pred, target, weight)[:2]

    def _features(self, pred, target, weight, spread=False):
        """(features, weights, log p(target) (N, T) before the floor, and with ``spread`` the mean
        of -log p over the vocabulary (N, T), else None)."""
        check_float("pred", pred)
        check_ndim("pred", pred, (3,), "3-D (N, T, V) logits")
        check_tensor("target", target)
        if target.shape != pred.shape[:2] or target.is_floating_point():
            raise ValueError(f"'target' should be (N, T) = {tuple(pred.shape[:2])} token ids but "
                             f"got {target.dtype} {tuple(target.shape)}")
        weight = _unit_weights(weight, pred, "(N, T)", "position weights (0 at padding)")
        target = target.long()
        vocabulary = pred.shape[-1]
        # An id out of range would fail inside gather; on an accelerator checking here would wait
        # for the device every step, so the toolkit criterion checks there (reloss.fairseq).
        if target.device.type == "cpu" and target.numel() and bool(
                (target < 0).any() | (target >= vocabulary).any()):
            raise ValueError(f"'target' should hold token ids in [0, {vocabulary}) (V of 'pred' "
                             f"{tuple(pred.shape)}) but holds ids from {int(target.min())} to "
                             f"{int(target.max())}")
        previous = torch.cat((target[:, :1], target[:, :-1]), 1)
        following = torch.cat((target[:, 1:], target[:, -1:]), 1)
        scores = _TokenScores.apply(upcast_half(pred), torch.stack((target, previous, following),
                                                                   -1), spread)
        own, margin, previous_lp, following_lp = scores[..., :4].unbind(-1)
        # Where there is no neighbour (sentence ends, padding), read the floor.
        floor = torch.full_like(own, self.floor)
        present = weight > 0
        none = torch.zeros_like(present[:, :1])
        previous_lp = torch.where(torch.cat((none, present[:, :-1]), 1), previous_lp, floor)
        following_lp = torch.where(torch.cat((present[:, 1:], none), 1), following_lp, floor)
        features = torch.stack((own, margin, previous_lp, following_lp), -1)
        features = torch.maximum(features, torch.full_like(features, self.floor))
        return features, weight.to(features.dtype), own, scores[..., 4] if spread else None

    def position_values(self, features, weights):
        """The transformer's output per position, (N, T), from features (N, T, F)."""
        positions = torch.arange(features.shape[1], device=features.device)
        hidden = self.embed(features) + _sinusoid(positions, self.dim).to(features.dtype)
        # A sentence with no position at all keeps them unmasked (its value is 0 either way).
        padding = (weights <= 0) & (weights > 0).any(-1, keepdim=True)
        hidden = self.encoder(hidden, src_key_padding_mask=padding)
        return self.out(hidden).squeeze(-1)

    def token_weights(self, features, weights):
        """With ``reweight``: each position's weight ``c_t`` (N, T), computed without gradient."""
        detached = features.detach()
        gate = torch.sigmoid(self.position_values(detached, weights))
        return 1 + self.spread * gate * -torch.expm1(detached[..., 0])

    def head(self, features, weights):
        if not self.reweight:
            return weighted_unit_mean(self.position_values(features, weights), weights)
        return weighted_unit_mean(self.token_weights(features, weights) * -features[..., 0],
                                  weights)

    def forward(self, pred, target, weight=None, reduction="mean"):
        """As :meth:`Surrogate.forward`, except that 'mean' weighs each sentence by its number of
        (weighted) target positions: a mean over tokens, as fairseq's criteria and token
        cross-entropy normalise."""
        if reduction != "mean":
            return super().forward(pred, target, weight, reduction)
        return self.training_terms(pred, target, weight)[0]

    def training_terms(self, pred, target, weight=None, label_smoothing=0.0):
        """(loss, the 'mean' value without gradient, the plain token NLL without gradient): means
        over the weighted positions, from one pass over the logits; 0 where no position has
        weight. The loss is the 'mean' value, or with ``label_smoothing`` e
        ``(1 - e) value + e mean_k(-log p(k))`` (the mean over the vocabulary, then over
        positions): label smoothing as fairseq applies it to token cross-entropy, with the
        surrogate in place of the cross-entropy.
        """
        if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float)) \
                or not 0 <= label_smoothing < 1:
            raise ValueError(f"'label_smoothing' should be in [0, 1) but got {label_smoothing!r}")
        features, weights, log_p, spread = self._features(pred, target, weight,
                                                          spread=label_smoothing > 0)
        tokens = weights.sum(-1)
        total = tokens.sum().clamp_min(torch.finfo(tokens.dtype).tiny)
        nll = -(log_p.detach() * weights).sum() / total
        value = (self.head(features, weights) * tokens).sum() / total
        loss = value
        if label_smoothing > 0:
            loss = (1 - label_smoothing) * value + label_smoothing * (
                (spread * weights).sum() / total)
        return loss, value.detach(), nll


#: Weight of the original loss (cross-entropy, heatmap MSE, token cross-entropy) that the toolkit
#: adapters add to the surrogate by default; 0 trains on the surrogate alone. Chosen with
#: ``tools/benchmark_training.py`` (README, "Training with a surrogate").
DEFAULT_ORIGINAL_WEIGHT = {"cls": 0.0, "pose": 0.0, "nat": 0.0}

SURROGATES = {
    "cls": ClassificationSurrogate,
    "pose": PoseSurrogate,
    "nat": SequenceSurrogate,
}
