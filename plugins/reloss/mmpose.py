"""ReLoss for mmpose: the ``ReLossPose`` heatmap loss.

In a top-down heatmap config::

    custom_imports = dict(imports=['reloss.mmpose'], allow_failed_imports=False)
    model = dict(head=dict(loss=dict(type='ReLossPose', use_target_weight=True)))

Importing this module registers it in mmpose's ``MODELS``.
"""
import torch
import torch.nn.functional as F
from mmpose.registry import MODELS

from ._adapter import FrozenSurrogateLoss
from ._mmengine import allow_mmengine_checkpoints
from ._validate import check_heatmaps, check_tensor

allow_mmengine_checkpoints()


@MODELS.register_module()
class ReLossPose(FrozenSurrogateLoss):
    """The learned heatmap loss, with the interface of mmpose's ``KeypointMSELoss``.

    ``loss_weight * (surrogate + mse_weight * MSE)``: the surrogate's per-instance values are
    averaged over the instances with a visible keypoint; MSE is ``KeypointMSELoss``'s. Any heatmap
    size. The surrogate is frozen and held outside the model (see
    :class:`reloss._adapter.FrozenSurrogateLoss`).

    Args:
        use_target_weight (bool): weigh keypoints by ``target_weights`` (0: invisible).
        skip_empty_channel (bool): give weight 0 to heatmaps whose target is all zero.
        loss_weight (float): multiplies the whole loss.
        checkpoint (str): a shipped surrogate name ('pose') or a path to one.
        mse_weight (float | None): weight of ``KeypointMSELoss`` added to the surrogate; None
            takes the default that ``tools/benchmark_training.py`` chose (0: the surrogate alone).

    Note:
        B instances, K keypoints, H x W heatmaps. ``output`` and ``target`` (B, K, H, W);
        ``target_weights`` (B, K) or (B, K, H, W); ``mask`` (B, K, H, W) or (B, 1, H, W) valid
        pixels. Pixel-wise weights and masks act as masks: they zero the masked pixels of both
        heatmaps, and a keypoint with no valid pixel does not count.
    """

    def __init__(self, use_target_weight=False, skip_empty_channel=False, loss_weight=1.0,
                 checkpoint="pose", mse_weight=None):
        super().__init__(checkpoint, "pose", loss_weight, mse_weight, "mse_weight")
        self.use_target_weight = bool(use_target_weight)
        self.skip_empty_channel = bool(skip_empty_channel)

    def _inputs(self, output, target, target_weights, mask):
        """(output, target, keypoint weights (B, K) or None, pixel mask or None), checked."""
        check_heatmaps("output", output, "target", target, "(B, K, H, W)")
        self.check(~torch.isfinite(output).all(),
                   "'output' should hold only finite values but holds NaN or Inf")
        pixels, keypoints = None, None
        if self.use_target_weight:
            if target_weights is None:
                raise ValueError("'target_weights' are needed with use_target_weight=True")
            check_tensor("target_weights", target_weights)
            if tuple(target_weights.shape) == tuple(output.shape[:2]):
                keypoints = target_weights.to(output.dtype)
            elif tuple(target_weights.shape) == tuple(output.shape):
                pixels = target_weights.to(output.dtype)
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
            pixels = mask.to(output.dtype) if pixels is None else pixels * mask
        if pixels is not None:  # a keypoint without any valid pixel does not count
            covered = (pixels.flatten(2).amax(-1) > 0).to(output.dtype).expand(output.shape[:2])
            keypoints = covered if keypoints is None else keypoints * covered
        if self.skip_empty_channel:
            present = (target != 0).flatten(2).any(-1).to(output.dtype)
            keypoints = present if keypoints is None else keypoints * present
        return output, target, keypoints, pixels

    def forward(self, output, target, target_weights=None, mask=None):
        output, target, keypoints, pixels = self._inputs(output, target, target_weights, mask)
        heatmaps, targets = output.float(), target.float()
        if pixels is not None:
            heatmaps, targets = heatmaps * pixels, targets * pixels
        loss = self.surrogate_on(output.device)(heatmaps, targets, keypoints)
        if self.original_weight:
            squared = F.mse_loss(heatmaps, targets, reduction="none")
            if keypoints is not None:
                squared = squared * keypoints[..., None, None]
            loss = loss + self.original_weight * squared.mean()
        return self.loss_weight * loss
