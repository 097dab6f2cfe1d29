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
from torch import nn

from ._validate import check_choice, check_float, check_ndim, check_tensor
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


class ClassificationSurrogate(Surrogate):
    """A learned function of the probability of the true class and its lead over the runner-up.

    Per sample it reads ``p_y`` (softmax probability of the label) and ``asinh`` of the margin
    ``z_y - max_{c != y} z_c`` (logit of the label minus the best other logit); an MLP with ELU
    maps them to the sample's loss. The authors' surrogate reads ``p_y`` alone (MLP
    1-128-128-128-1); the margin is what top-1 accuracy actually decides on (its sign), so the
    learned loss can rank by it at any number of classes, and a 64-wide, 2-hidden-layer MLP ranks
    as well as the authors' size at a quarter of the cost. Soft or mixup labels (N, C) give
    ``sum_c y_c f(c) / sum_c y_c`` (as cross-entropy treats them), evaluated only for classes with
    a non-zero label.

    Args:
        hidden (int): width of the MLP.
        depth (int): number of hidden layers.
        margin (bool): read the margin; False reads ``p_y`` alone, as the authors' net.

    Note:
        N samples, C classes; any C >= 2.
    """

    task = "cls"

    def __init__(self, hidden=64, depth=2, margin=True):
        super().__init__()
        self.hidden, self.depth, self.margin = hidden, depth, margin
        self.num_features = 2 if margin else 1
        self.net = _mlp([self.num_features] + [hidden] * depth + [1])

    def config(self):
        return dict(hidden=self.hidden, depth=self.depth, margin=self.margin)

    def features(self, pred, target, weight=None):
        check_float("pred", pred)
        check_ndim("pred", pred, (2,), "2-D (N, C) logits")
        check_tensor("target", target)
        if pred.shape[-1] < 2:
            raise ValueError(f"'pred' should have C >= 2 classes but got shape {tuple(pred.shape)}")
        logits = upcast_half(pred)
        if target.dim() == 1 and target.shape[0] == pred.shape[0] and not (
                target.is_floating_point() or target.is_complex()):
            index = target.long().unsqueeze(-1)
            weights = torch.ones(index.shape, dtype=logits.dtype, device=logits.device)
        elif target.shape == pred.shape and target.is_floating_point():
            # Evaluate only where the label is non-zero (2 classes per row for mixup).
            k = max(int((target != 0).sum(-1).max()), 1)
            weights, index = target.topk(k, dim=-1)
            weights = weights.to(logits.dtype)
        else:
            raise ValueError(f"'target' should be (N,) = ({pred.shape[0]},) class indices or "
                             f"(N, C) = {tuple(pred.shape)} soft labels but got {target.dtype} "
                             f"{tuple(target.shape)}")
        probability = logits.softmax(-1).gather(-1, index)
        if weight is not None:
            weights = weights * weight.reshape(-1, 1).to(weights.dtype)
        if not self.margin:
            return probability.unsqueeze(-1), weights
        own = logits.gather(-1, index)
        # Best logit other than the unit's class: the top one, or the second where the top is it.
        top2, top2_index = logits.topk(2, dim=-1)
        is_top = top2_index[..., :1] == index
        best_other = torch.where(is_top, top2[..., 1:], top2[..., :1])
        margin = torch.asinh(own - best_other)
        return torch.stack((probability, margin), -1), weights


class PoseSurrogate(Surrogate):
    """A learned loss on keypoint heatmaps that works at any heatmap size.

    Per keypoint it reads three size-free numbers: the log mean squared error of the heatmap, the
    highest predicted value near the target's peak (where the target heatmap exceeds
    ``region`` x its maximum), and the highest predicted value away from it. An MLP maps them to a
    per-keypoint loss; an instance's value is the mean over its keypoints, weighted by the
    keypoint weights (0 for invisible joints). The MSE term gives every pixel a gradient; the two
    peak terms push the right peak up and a competing peak down, which is what the PCK of argmax
    locations rewards.

    Args:
        hidden (int): width of the MLP.
        depth (int): number of hidden layers.
        region (float): fraction of the target peak that delimits "near the peak".

    Note:
        N instances, K keypoints, H x W heatmaps; any H and W.
    """

    task, num_features = "pose", 3

    def __init__(self, hidden=32, depth=2, region=0.1):
        super().__init__()
        self.hidden, self.depth, self.region = hidden, depth, region
        self.net = _mlp([self.num_features] + [hidden] * depth + [1])

    def config(self):
        return dict(hidden=self.hidden, depth=self.depth, region=self.region)

    def _read(self, pred, target, weight):
        """Features, weights and what their gradients need: errors and the two peak indices."""
        check_float("pred", pred)
        check_ndim("pred", pred, (4,), "4-D (N, K, H, W) heatmaps")
        check_tensor("target", target)
        if target.shape != pred.shape:
            raise ValueError(f"'target' should have the shape of 'pred' {tuple(pred.shape)} but "
                             f"got {tuple(target.shape)}")
        weight = _unit_weights(weight, pred, "(N, K)", "keypoint weights")
        pred, target = pred.flatten(-2), target.to(pred.dtype).flatten(-2)
        error = pred - target
        mse = error.square().mean(-1)
        near = target >= self.region * target.amax(-1, keepdim=True).clamp_min(1e-6)
        lowest = torch.finfo(pred.dtype).min
        inside, inside_at = pred.masked_fill(~near, lowest).max(-1)
        outside, outside_at = pred.masked_fill(near, lowest).max(-1)
        # A heatmap without a peak region (or without anything outside it) reads 0 there.
        has_inside, has_outside = near.any(-1), (~near).any(-1)
        inside = torch.where(has_inside, inside, torch.zeros_like(inside))
        outside = torch.where(has_outside, outside, torch.zeros_like(outside))
        features = torch.stack((torch.log(mse + self._EPS), inside, outside), -1)
        peaks = (inside_at, outside_at, has_inside, has_outside)
        return features, weight.to(features.dtype), error, mse, peaks

    _EPS = 1e-6

    def features(self, pred, target, weight=None):
        return self._read(pred, target, weight)[:2]

    def feature_gram(self, pred, target, weight=None):
        """Features, weights and the Gram matrices of the features' gradients, in closed form.

        d log(mse + eps) / d pred = 2 e / (D (mse + eps)) with e = pred - target over the D = H W
        pixels; each peak value's gradient is the one-hot of its pixel; the two peaks never share
        a pixel.
        """
        with torch.no_grad():
            features, weights, error, mse, peaks = self._read(pred, target, weight)
            inside_at, outside_at, has_inside, has_outside = peaks
            pixels = error.shape[-1]
            scale = 2 / (pixels * (mse + self._EPS))
            gram = features.new_zeros(*features.shape, 3)
            gram[..., 0, 0] = scale.square() * error.square().sum(-1)
            cross_in = scale * error.gather(-1, inside_at.unsqueeze(-1)).squeeze(-1) * has_inside
            cross_out = scale * error.gather(-1, outside_at.unsqueeze(-1)).squeeze(-1) * has_outside
            gram[..., 0, 1] = gram[..., 1, 0] = cross_in
            gram[..., 0, 2] = gram[..., 2, 0] = cross_out
            gram[..., 1, 1] = has_inside.to(gram.dtype)
            gram[..., 2, 2] = has_outside.to(gram.dtype)
        return features, weights, gram


def _sinusoid(positions, dim):
    """(T,) positions -> (T, dim) sinusoidal encodings (Vaswani et al., 2017)."""
    frequencies = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=positions.device)
                            * (-math.log(10000.0) / dim))
    angles = positions.float().unsqueeze(-1) * frequencies
    return torch.cat((angles.sin(), angles.cos()), -1)


class SequenceSurrogate(Surrogate):
    """A learned loss for non-autoregressive translation, independent of vocabulary and model width.

    Per target position t it reads the log-probability of the target token, its margin to the
    best other token, and the log-probabilities the position gives the previous and next target
    tokens (high when the output is shifted by one: the typical NAT repetition and length errors).
    A small transformer encoder over the positions (sinusoidal positions, padding masked) gives a
    value per position; a sentence's value is their mean over non-padding positions.

    Args:
        dim (int): transformer width.
        layers (int): transformer encoder layers.
        heads (int): attention heads.
        floor (float): log-probabilities are read no lower than this.

    Note:
        N sentences, T target positions, V vocabulary entries; any T and V.
    """

    task, num_features = "nat", 4

    def __init__(self, dim=32, layers=2, heads=4, floor=-20.0):
        super().__init__()
        self.dim, self.layers, self.heads, self.floor = dim, layers, heads, floor
        self.embed = _mlp([self.num_features, dim, dim])
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out = _mlp([dim, dim, 1])

    def config(self):
        return dict(dim=self.dim, layers=self.layers, heads=self.heads, floor=self.floor)

    def features(self, pred, target, weight=None):
        """pred: (N, T, V) logits; target: (N, T) token ids; weight: (N, T), 0 at padding."""
        check_float("pred", pred)
        check_ndim("pred", pred, (3,), "3-D (N, T, V) logits")
        check_tensor("target", target)
        if target.shape != pred.shape[:2] or target.is_floating_point():
            raise ValueError(f"'target' should be (N, T) = {tuple(pred.shape[:2])} token ids but "
                             f"got {target.dtype} {tuple(target.shape)}")
        weight = _unit_weights(weight, pred, "(N, T)", "position weights (0 at padding)")
        log_p = upcast_half(pred).log_softmax(-1)
        target = target.long()
        previous = torch.cat((target[:, :1], target[:, :-1]), 1)
        following = torch.cat((target[:, 1:], target[:, -1:]), 1)
        gathered = log_p.gather(-1, torch.stack((target, previous, following), -1))
        own = gathered[..., 0]
        best_other = log_p.scatter(-1, target.unsqueeze(-1), float("-inf")).amax(-1)
        # Where there is no neighbour (sentence ends, padding), read the floor.
        floor = torch.full_like(own, self.floor)
        present = weight > 0
        none = torch.zeros_like(present[:, :1])
        has_previous = torch.cat((none, present[:, :-1]), 1)
        has_following = torch.cat((present[:, 1:], none), 1)
        previous_lp = torch.where(has_previous, torch.cat((floor[:, :1], gathered[:, 1:, 1]), 1),
                                  floor)
        following_lp = torch.where(has_following,
                                   torch.cat((gathered[:, :-1, 2], floor[:, -1:]), 1), floor)
        features = torch.stack((own, own - best_other, previous_lp, following_lp), -1)
        features = torch.maximum(features, torch.full_like(features, self.floor))
        return features, weight.to(features.dtype)

    def head(self, features, weights):
        positions = torch.arange(features.shape[1], device=features.device)
        hidden = self.embed(features) + _sinusoid(positions, self.dim).to(features.dtype)
        # A sentence with no position at all keeps them unmasked (its value is 0 either way).
        padding = (weights <= 0) & (weights > 0).any(-1, keepdim=True)
        hidden = self.encoder(hidden, src_key_padding_mask=padding)
        return weighted_unit_mean(self.out(hidden).squeeze(-1), weights)


SURROGATES = {
    "cls": ClassificationSurrogate,
    "pose": PoseSurrogate,
    "nat": SequenceSurrogate,
}
