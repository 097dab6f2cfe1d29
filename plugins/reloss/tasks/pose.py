"""Pose estimation (heatmaps): PoseSurrogate, PCK per chunk, mmpose's KeypointMSELoss, and
synthetic heatmaps whose PCK spreads over [0, 1].

Stored predictions: ``heatmaps`` (M, K, H, W) float, ``target_heatmaps`` (M, K, H, W) float and
``target_weights`` (M, K).
"""
from __future__ import annotations

import math

import torch

from .._validate import check_choice, check_heatmaps
from ..metrics import pck_accuracy
from ..surrogate import (
    REDUCTIONS,
    Surrogate,
    mlp,
    reduce_values,
    refuse_second_derivative,
    unit_weights,
    upcast_half,
    weighted_unit_mean,
)
from .base import Task, quality, uniform


class _Masked:
    """``torch.where(near, a, b)`` for heatmaps shaped like ``like``, written into one reused
    buffer when no gradient is recorded (each result must be used before the next call)."""

    def __init__(self, near, like):
        self.near = near
        self.buffer = None if torch.is_grad_enabled() and like.requires_grad else \
            torch.empty_like(like)

    def __call__(self, a, b):
        if self.buffer is None:
            return torch.where(self.near, a, b)
        a, b = (torch.as_tensor(x, dtype=self.buffer.dtype) for x in (a, b))
        return torch.where(self.near, a, b, out=self.buffer)


def _largest(values, where):
    """The maximum over the last dim and, if ``where``, its index (else None)."""
    return values.max(-1) if where else (values.amax(-1), None)


class _RegionWeightedMSE(torch.autograd.Function):
    """Per-sample sum_k (a_k mse_in_k + b_k mse_out_k): the squared error of heatmap k summed
    over its peak region and over the rest (each divided by all its pixels), with coefficients
    a, b that receive no gradient. The forward pass is given the errors e, the peak region (a
    bool mask) and the two sums; the backward pass is 2 e (a on the peak region, b elsewhere)
    / pixels, in one new tensor."""

    @staticmethod
    def forward(ctx, pred, error, near, mse_in, mse_out, coefficient_in, coefficient_out):
        ctx.save_for_backward(error, near, coefficient_in, coefficient_out)
        ctx.shape = pred.shape
        return (coefficient_in * mse_in + coefficient_out * mse_out).sum(-1)

    @staticmethod
    def backward(ctx, grad_values):
        refuse_second_derivative("the pose surrogate has no other path: its second derivative "
                                 "is not computed")
        error, near, coefficient_in, coefficient_out = ctx.saved_tensors
        scale = grad_values.unsqueeze(-1) * (2.0 / error.shape[-1])
        grad = torch.where(near, (coefficient_in * scale).unsqueeze(-1),
                           (coefficient_out * scale).unsqueeze(-1)).mul_(error)
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
    peak, which decides the argmax, above the background did (docs/design.md).

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
            weight to a small fraction of the peak's; trained with that, a model leaves its
            background untaught and ends far below MSE (docs/design.md). A floor of 0.1 bounds
            the re-weighting to 10x.

    Note:
        N instances, K keypoints, H x W heatmaps; any H and W.
    """

    task, num_features = "pose", 4

    def __init__(self, hidden=32, depth=2, region=0.1, floor=0.1):
        super().__init__()
        if not 0 <= floor < 1:
            raise ValueError(f"'floor' should be in [0, 1) but got {floor!r}")
        self.hidden, self.depth, self.region, self.floor = hidden, depth, region, floor
        self.net = mlp([self.num_features] + [hidden] * depth + [2])

    def config(self):
        return dict(hidden=self.hidden, depth=self.depth, region=self.region, floor=self.floor)

    _EPS = 1e-6
    # The log errors are centred and scaled before tanh: real predictions read -14 to -2.
    _LOG_CENTRE, _LOG_SCALE = -7.0, 4.0

    def _read(self, pred, target, weight, peak_pixels=False):
        """Features, weights, and what the loss needs (errors and their sums); with
        ``peak_pixels``, also where the two peaks are, which the features' gradients need."""
        check_heatmaps("pred", pred, "target", target, "(N, K, H, W)")
        weight = unit_weights(weight, pred, "(N, K)", "keypoint weights")
        pred = upcast_half(pred)  # half precision cannot carry squared errors and their sums
        pred, target = pred.flatten(-2), target.to(pred.dtype).flatten(-2)
        pixels = pred.shape[-1]
        peak = target.amax(-1, keepdim=True)
        threshold = self.region * peak.clamp_min(1e-6)
        # The peak region as a bool mask; every pass below reads or writes each pixel once.
        near = target > threshold
        error = pred - target
        # The three masked copies below share one buffer unless autograd needs them: a fresh
        # heatmap-sized buffer costs about as much as a pass over it on a CPU.
        masked = _Masked(near, pred)
        mse = torch.linalg.vector_norm(error, dim=-1).square() / pixels
        mse_in = torch.linalg.vector_norm(masked(error, 0.0), dim=-1).square() / pixels
        mse_out = (mse - mse_in).clamp_min(0)
        lowest = -torch.finfo(pred.dtype).max
        inside, inside_at = _largest(masked(pred, lowest), peak_pixels)
        outside, outside_at = _largest(masked(lowest, pred), peak_pixels)
        # A heatmap without a peak region (or without anything outside it) reads 0 there.
        has_inside = (peak > threshold).squeeze(-1)
        has_outside = (target.amin(-1, keepdim=True) <= threshold).squeeze(-1)
        inside = torch.where(has_inside, inside, 0.0)
        outside = torch.where(has_outside, outside, 0.0)
        features = torch.stack((torch.log(mse_in + self._EPS), torch.log(mse_out + self._EPS),
                                inside, outside), -1)
        extra = dict(error=error, near=near, mse_in=mse_in, mse_out=mse_out,
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
        scores = self.net(squashed.to(self.net[0].weight.dtype)).to(features.dtype)
        return self.floor + (1 - self.floor) * torch.sigmoid(scores)

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
        values = _RegionWeightedMSE.apply(pred, extra["error"], extra["near"], extra["mse_in"],
                                          extra["mse_out"], coefficients[..., 0],
                                          coefficients[..., 1])
        return reduce_values(values, reduction, total.squeeze(-1) > 0)

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


def gaussian_heatmaps(centers, size, sigma, amplitude=1.0):
    """(..., 2) (x, y) centres -> (..., H, W) Gaussians of peak ``amplitude`` (unnormalised).

    ``sigma`` and ``amplitude`` are numbers or tensors of the centres' leading shape.
    """
    height, width = size
    sigma = torch.as_tensor(sigma, dtype=torch.float32).expand(centers.shape[:-1]).unsqueeze(-1)
    amplitude = torch.as_tensor(amplitude, dtype=torch.float32).expand(centers.shape[:-1])
    # Separable: exp(-(dx^2 + dy^2) / 2s^2) = exp(-dx^2 / 2s^2) * exp(-dy^2 / 2s^2).
    along_x = torch.exp(-(torch.arange(width) - centers[..., :1]).square() / (2 * sigma.square()))
    along_y = torch.exp(-(torch.arange(height) - centers[..., 1:]).square() / (2 * sigma.square()))
    return (amplitude.unsqueeze(-1) * along_y).unsqueeze(-1) * along_x.unsqueeze(-2)


def sample_pose(num_chunks, chunk_size=8, num_keypoints=17, heatmap_size=(64, 48), sigma=None,
                generator=None, late_fraction=0.5, late_band=(0.85, 0.99), visible_rate=0.85):
    """Heatmaps, target heatmaps (S, N, K, H, W) and keypoint weights (S, N, K).

    Targets are mmpose-style Gaussians (sigma 2 at 64x48, scaled with the size), zero with weight 0
    for invisible joints. A prediction is right with the chunk's probability (a peak within about
    a pixel, varied height and width) and otherwise fails in one of four ways: a peak displaced by
    3-20 pixels, a missing peak (low flat response), two peaks (the wrong one higher), or a blurred
    displaced peak. Every map gets background noise.
    """
    height, width = heatmap_size
    sigma = 2.0 * height / 64 if sigma is None else sigma
    shape = (num_chunks, chunk_size, num_keypoints)
    margin = torch.tensor([width, height], dtype=torch.float32) * 0.1
    span = torch.tensor([width, height], dtype=torch.float32) - 2 * margin
    centers = margin + span * torch.rand(shape + (2,), generator=generator)
    visible = torch.rand(shape, generator=generator) < visible_rate
    target = gaussian_heatmaps(centers, heatmap_size, sigma) * visible[..., None, None]

    level = quality(num_chunks, late_fraction, late_band, generator).view(-1, 1, 1)
    right = torch.rand(shape, generator=generator) < level
    failure = torch.randint(4, shape, generator=generator)
    scale = height / 64
    jitter = torch.randn(shape + (2,), generator=generator) * 0.6 * scale
    angle = 2 * math.pi * torch.rand(shape, generator=generator)
    distance = uniform(shape, 3.0, 20.0, generator) * scale
    far = torch.stack((angle.cos(), angle.sin()), -1) * distance.unsqueeze(-1)
    displaced = (~right) & (failure != 1)
    peak_at = centers + torch.where(displaced.unsqueeze(-1), far, jitter)
    height_main = uniform(shape, 0.3, 1.1, generator)
    height_main = torch.where((~right) & (failure == 1), 0.1 * height_main, height_main)
    width_main = sigma * uniform(shape, 0.8, 1.4, generator)
    width_main = torch.where((~right) & (failure == 3), width_main * 2.5, width_main)
    pred = gaussian_heatmaps(peak_at, heatmap_size, width_main, height_main)
    # Two peaks: the displaced one above, a lower one at the right place.
    second = (~right) & (failure == 2)
    pred += gaussian_heatmaps(centers + jitter, heatmap_size, sigma,
                              height_main * uniform(shape, 0.3, 0.9, generator) * second)
    noise = uniform((num_chunks, 1, 1, 1, 1), 0.0, 0.06, generator)
    pred += noise * torch.randn(pred.shape, generator=generator)
    return pred, target, visible.float()


def pose_metric(heatmaps: torch.Tensor, target_heatmaps: torch.Tensor,
                weights: torch.Tensor) -> torch.Tensor:
    """PCK (thr 0.05) of argmax locations per chunk, keypoints with weight > 0."""
    return pck_accuracy(heatmaps, target_heatmaps, weights > 0).double()


def keypoint_mse_per_chunk(heatmaps: torch.Tensor, targets: torch.Tensor,
                           weights: torch.Tensor) -> torch.Tensor:
    """mmpose's KeypointMSELoss with use_target_weight=True, per chunk."""
    weighted = (heatmaps - targets) * weights[..., None, None]
    return weighted.square().flatten(1).mean(-1)


TASK = Task(
    name="pose", description="pose estimation", surrogate=PoseSurrogate,
    metric=pose_metric, metric_label="PCK",
    original_loss=keypoint_mse_per_chunk, original_name="MSE",
    band=(0.85, 0.99), chunk_size=8,
    sample=sample_pose,
    sample_kinds=tuple(dict(heatmap_size=size) for size in ((64, 48), (96, 72))),
    prediction_fields=("heatmaps", "target_heatmaps", "target_weights"), prediction_ndim=4,
    prediction_shapes=lambda heatmaps: {"target_heatmaps": tuple(heatmaps.shape),
                                        "target_weights": tuple(heatmaps.shape[:2])},
    pretrain_steps=300, pretrain_tolerance=(4.0,),
)
