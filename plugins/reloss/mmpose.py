"""ReLoss for mmpose: the ``ReLossPose`` heatmap loss.

In a top-down heatmap config::

    custom_imports = dict(imports=['reloss.mmpose'], allow_failed_imports=False)
    model = dict(head=dict(loss=dict(type='ReLossPose', use_target_weight=True)))

Importing this module registers it in mmpose's ``MODELS``.
"""
from __future__ import annotations

import os

import torch
from mmpose.models.losses import KeypointMSELoss
from mmpose.registry import MODELS

from ._adapter import FrozenSurrogateLoss
from ._mmengine import allow_mmengine_checkpoints
from ._validate import check_data, check_heatmaps, check_tensor

allow_mmengine_checkpoints()


@MODELS.register_module()
class ReLossPose(FrozenSurrogateLoss):
    """The learned heatmap loss, with the interface of mmpose's ``KeypointMSELoss``.

    ``loss_weight * (surrogate + mse_weight * MSE)``: the surrogate's per-instance values are
    averaged over the instances with a visible keypoint; MSE is mmpose's ``KeypointMSELoss`` on the
    same arguments (with ``target_weights`` only where ``use_target_weight``). Any heatmap size.
    The surrogate is frozen and held outside the model (see
    :class:`reloss._adapter.FrozenSurrogateLoss`).

    Args:
        use_target_weight (bool): weigh keypoints by ``target_weights`` (0: invisible).
        skip_empty_channel (bool): give weight 0 to heatmaps whose target is all zero.
        loss_weight (float): multiplies the whole loss (surrogate and MSE).
        checkpoint (str): a shipped surrogate name ('pose') or a path to one.
        mse_weight (float | None): weight of ``KeypointMSELoss`` added to the surrogate; None
            takes the task's default (0: the surrogate alone).

    Note:
        B instances, K keypoints, H x W heatmaps (H, W >= 1). ``output`` and ``target``
        (B, K, H, W); ``target_weights`` (B, K) or (B, K, H, W), finite and >= 0 (mmpose's
        keypoint weights are visibilities in [0, 1]; a negative weight, which would reward
        error, is refused); ``mask`` (B, K, H, W) or (B, 1, H, W) valid pixels, >= 0. Pixel-wise
        weights and masks act as masks: they zero the masked pixels of both heatmaps, and a
        keypoint with no valid pixel does not count. Heatmaps must be finite everywhere, masked
        keypoints included.
    """

    def __init__(self, use_target_weight: bool = False, skip_empty_channel: bool = False,
                 loss_weight: float = 1.0, checkpoint: str | os.PathLike = "pose",
                 mse_weight: float | None = None) -> None:
        super().__init__(checkpoint, "pose", loss_weight, mse_weight, "mse_weight")
        self.use_target_weight = bool(use_target_weight)
        self.skip_empty_channel = bool(skip_empty_channel)
        self.mse = KeypointMSELoss(self.use_target_weight, self.skip_empty_channel)

    def _weights(self, name, weights, dtype):
        """``weights`` as ``dtype``, refused (on a GPU a step or so later) where negative, NaN
        or Inf, and until then read as 0 there."""
        weights = weights.to(dtype)
        valid = (weights >= 0) & torch.isfinite(weights)
        self.check(~valid, f"'{name}' should hold finite values >= 0 but holds negative, NaN or "
                           f"Inf ones")
        return torch.where(valid, weights, torch.zeros((), dtype=dtype, device=weights.device))

    def _inputs(self, output, target, target_weights, mask):
        """(keypoint weights (B, K) or None, pixel mask or None, target_weights, mask), checked;
        the last two as the original loss takes them (negative or NaN entries read as 0 until
        the check reports)."""
        check_heatmaps("output", output, "target", target, "(B, K, H, W)")
        check_data("output", output)
        check_data("target", target)
        self.check.finite(output, "'output' should hold only finite values but holds NaN or Inf")
        pixels, keypoints, weights = None, None, None
        if self.use_target_weight:
            if target_weights is None:
                raise ValueError("'target_weights' are needed with use_target_weight=True")
            check_tensor("target_weights", target_weights)
            if tuple(target_weights.shape) == tuple(output.shape[:2]):
                keypoints = weights = self._weights("target_weights", target_weights, torch.float32)
            elif tuple(target_weights.shape) == tuple(output.shape):
                pixels = weights = self._weights("target_weights", target_weights, torch.float32)
            else:
                raise ValueError(f"'target_weights' should be (B, K) = {tuple(output.shape[:2])} "
                                 f"or (B, K, H, W) = {tuple(output.shape)} but got "
                                 f"{tuple(target_weights.shape)}")
        if mask is not None:
            check_tensor("mask", mask)
            if mask.dim() != 4 or any(m not in (1, o) for m, o in
                                      zip(mask.shape, output.shape, strict=True)):
                raise ValueError(f"'mask' should be (B, K, H, W) = {tuple(output.shape)} or "
                                 f"(B, 1, H, W) but got {tuple(mask.shape)}")
            mask = self._weights("mask", mask, torch.float32)
            pixels = mask if pixels is None else pixels * mask
        if pixels is not None:  # a keypoint without any valid pixel does not count
            covered = (pixels.flatten(2).amax(-1) > 0).float().expand(output.shape[:2])
            keypoints = covered if keypoints is None else keypoints * covered
        if self.skip_empty_channel:
            present = (target != 0).flatten(2).any(-1).float()
            keypoints = present if keypoints is None else keypoints * present
        return keypoints, pixels, weights, mask

    def forward(self, output: torch.Tensor, target: torch.Tensor,
                target_weights: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """The loss, as mmpose's ``KeypointMSELoss.forward`` takes its arguments."""
        keypoints, pixels, weights, mask = self._inputs(output, target, target_weights, mask)
        heatmaps, targets = output.float(), target.float()
        loss = self.surrogate_on(output.device)(
            heatmaps if pixels is None else heatmaps * pixels,
            targets if pixels is None else targets * pixels, keypoints)
        if self.original_weight:
            loss = loss + self.original_weight * self.mse(heatmaps, targets, weights, mask)
        return self.loss_weight * loss
