"""ReLoss for mmpretrain: the ``ReLossCls`` loss.

In a config::

    custom_imports = dict(imports=['reloss.mmpretrain'], allow_failed_imports=False)
    model = dict(head=dict(loss=dict(type='ReLossCls')))

Importing this module registers it in mmpretrain's ``MODELS``, and with it the CIFAR ResNets of
the paper (:mod:`reloss.mmpretrain_backbones`), so configs that use both need this import alone.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from ._mmpretrain_import import skip_multimodal_models_that_cannot_import

skip_multimodal_models_that_cannot_import()

from mmpretrain.models.losses.utils import weight_reduce_loss  # noqa: E402
from mmpretrain.registry import MODELS  # noqa: E402

from ._adapter import FrozenSurrogateLoss  # noqa: E402
from ._mmengine import allow_mmengine_checkpoints  # noqa: E402
from ._validate import (  # noqa: E402
    check_choice,
    check_data,
    check_float,
    check_min_size,
    check_ndim,
    check_non_negative,
    check_not_bool,
    check_tensor,
)
from .mmpretrain_backbones import ResNetCIFARPaper  # noqa: E402,F401  (registers it)
from .surrogate import REDUCTIONS  # noqa: E402
from .tasks.cls import ClassAwareSurrogate, class_priors  # noqa: E402

allow_mmengine_checkpoints()


@MODELS.register_module()
class ReLossCls(FrozenSurrogateLoss):
    """The learned classification loss, with the call of mmpretrain's ``CrossEntropyLoss``.

    ``loss_weight * (surrogate + ce_weight * cross-entropy)``, per sample, then reduced by
    mmpretrain's own ``weight_reduce_loss``: multiplied by ``weight``, summed and divided by
    ``avg_factor`` (the head passes the batch size) or averaged. The surrogate is frozen and lives
    outside the module's parameters and state dict: no optimizer, weight decay or DDP gradient hook
    ever sees it, and a checkpoint of the model neither holds nor overrides it (it is rebuilt,
    sha256-checked, from ``checkpoint`` on every rank and at every resume).

    A class-aware surrogate ('cls-balanced', 'cls-macro-f1', or one of your own learned with
    ``reloss pretrain --arch type=ClassAwareSurrogate``) reads how common each class is: from
    ``class_counts``, the training set's images per class, or where it is not given from each
    batch's labels.

    Args:
        checkpoint (str): a shipped surrogate name ('cls', 'cls-balanced', 'cls-macro-f1') or a
            path to one.
        loss_weight (float): multiplies the whole loss (surrogate and cross-entropy).
        ce_weight (float | None): weight of cross-entropy added to the surrogate; None takes the
            task's default (0: the surrogate alone).
        label_smooth_val (float): smooth hard labels to ``(1 - e) onehot + e / C`` first.
        reduction (str): 'mean', 'sum' or 'none'.
        class_counts (sequence of numbers | None): the training images of each class, C counts
            >= 0 (class-aware surrogates only); a class with a label in a batch needs a count > 0.

    Note:
        N samples, C classes (C >= 2). ``cls_score`` (N, C) logits; ``label`` (N,) integer class
        indices or (N, C) scores >= 0 whose rows sum to 1 (what Mixup/CutMix put in
        ``gt_score``); ``weight`` (N,) sample weights.
    """

    def __init__(self, checkpoint: str | os.PathLike = "cls", loss_weight: float = 1.0,
                 ce_weight: float | None = None, label_smooth_val: float = 0.0,
                 reduction: str = "mean", class_counts=None) -> None:
        check_choice("reduction", reduction, REDUCTIONS)
        super().__init__(checkpoint, "cls", loss_weight, ce_weight, "ce_weight")
        self.class_aware = isinstance(self.surrogate, ClassAwareSurrogate)
        self.priors = None
        if class_counts is not None:
            if not self.class_aware:
                raise ValueError(f"'class_counts' is read by class-aware surrogates only "
                                 f"('cls-balanced', 'cls-macro-f1', ...) but checkpoint "
                                 f"{checkpoint!r} is a {type(self.surrogate).__name__}")
            self.priors = class_priors(class_counts)
            # Whether a class has count 0: only then are the batch's labels checked against them.
            self.some_absent = bool((self.priors == 0).any())
        self.label_smooth_val = check_non_negative("label_smooth_val", label_smooth_val)
        if self.label_smooth_val >= 1:
            raise ValueError(f"'label_smooth_val' should be in [0, 1) but got {label_smooth_val!r}")
        self.reduction = reduction

    def _labels(self, cls_score, label):
        check_float("cls_score", cls_score)
        check_data("cls_score", cls_score)
        check_ndim("cls_score", cls_score, (2,), "2-D (N, C) logits")
        check_min_size("cls_score", cls_score, 1, 2, "C")
        check_data("label", label)
        check_not_bool("label", label, "(N,) integer class indices or (N, C) float scores")
        count, classes = cls_score.shape
        self.check.finite(cls_score, "'cls_score' should hold only finite values but holds NaN "
                                     "or Inf")
        if label.dim() == 1 and not (label.is_floating_point() or label.is_complex()):
            if label.shape[0] != count:
                raise ValueError(f"'label' should be (N,) = ({count},) class indices or (N, C) = "
                                 f"{tuple(cls_score.shape)} scores but got shape "
                                 f"{tuple(label.shape)}")
            self.check.within(label, 0, classes, f"'label' should hold class indices in [0, "
                                                 f"{classes}) for {classes} classes but holds "
                                                 f"values outside it")
            if self.check.deferred(label):  # elsewhere the check has raised
                label = label.clamp(0, classes - 1)  # harmless until the check reports
            if self.label_smooth_val > 0:
                smooth = torch.full_like(cls_score, self.label_smooth_val / classes,
                                         dtype=torch.float32)
                label = smooth.scatter_add(1, label.long().unsqueeze(1),
                                           smooth.new_full((count, 1),
                                                           1 - self.label_smooth_val))
            return label
        if label.shape != cls_score.shape or not label.is_floating_point():
            raise ValueError(f"'label' should be (N,) = ({count},) class indices or (N, C) = "
                             f"{tuple(cls_score.shape)} float scores but got {label.dtype} "
                             f"{tuple(label.shape)}")
        label = label.float()
        # Written so that NaN fails too: NaN compares False.
        valid = (label >= 0).all(-1) & ((label.sum(-1) - 1).abs() <= 1e-3)
        self.check(~valid, "'label' scores should be >= 0 with rows that sum to 1 (as Mixup/CutMix "
                           "make them) but some row does not (or holds NaN or Inf)")
        if self.check.deferred(label):  # elsewhere the check has raised
            label = torch.where(valid.unsqueeze(-1), label, 1 / classes)  # harmless until then
        if self.label_smooth_val > 0:
            label = label * (1 - self.label_smooth_val) + self.label_smooth_val / classes
        return label

    def forward(self, cls_score: torch.Tensor, label: torch.Tensor,
                weight: torch.Tensor | None = None, avg_factor: float | None = None,
                reduction_override: str | None = None, **kwargs) -> torch.Tensor:
        """The loss, as mmpretrain's ``CrossEntropyLoss.forward`` takes its arguments."""
        reduction = reduction_override or self.reduction
        check_choice("reduction_override", reduction, REDUCTIONS)
        label = self._labels(cls_score, label)
        if weight is not None:
            check_tensor("weight", weight)
            if weight.numel() != cls_score.shape[0]:
                raise ValueError(f"'weight' should be (N,) = ({cls_score.shape[0]},) sample "
                                 f"weights but got shape {tuple(weight.shape)}")
            weight = weight.float().reshape(-1)
        logits = cls_score.float()
        surrogate, count = self.surrogate_on(logits.device), logits.shape[0]
        # A class-aware surrogate is also given the class frequencies.
        inputs = dict(priors=self._priors(logits, label)) if self.class_aware else {}
        if weight is None and not self.original_weight and reduction == "mean" and count and (
                avg_factor is None or (isinstance(avg_factor, (int, float))
                                       and not isinstance(avg_factor, bool) and avg_factor > 0)):
            # mmpretrain's mean (the sum over avg_factor, which heads pass as N, or over N):
            # the surrogate's own mean, reduced inside its autograd node, then rescaled.
            factor = self.loss_weight * (1 if avg_factor is None else count / avg_factor)
            if label.dim() == 1 and (surrogate.frozen or not torch.is_grad_enabled()):
                # Checked above: the frozen evaluation itself, its scale folded in.
                return surrogate.frozen_mean(logits, label, factor, **inputs)
            loss = surrogate(logits, label, reduction="mean", **inputs)
            return loss if factor == 1 else loss * factor
        loss = surrogate(logits, label, reduction="none", **inputs)
        if self.original_weight:
            if label.dim() == 1:
                ce = nn.functional.cross_entropy(logits, label.long(), reduction="none")
            else:
                ce = -(label * logits.log_softmax(-1)).sum(-1)
            loss = loss + self.original_weight * ce
        loss = weight_reduce_loss(loss, weight, reduction, avg_factor)
        return loss if self.loss_weight == 1 else self.loss_weight * loss

    def _priors(self, logits, label):
        """The class frequencies of ``class_counts`` on the logits' device, checked against the
        batch (None without ``class_counts``: the surrogate reads the batch's labels)."""
        if self.priors is None:
            return None
        classes = logits.shape[1]
        if self.priors.numel() != classes:
            raise ValueError(f"'class_counts' should hold one count per class, {classes} for "
                             f"'cls_score' {tuple(logits.shape)}, but holds {self.priors.numel()}")
        if self.priors.device != logits.device:
            self.priors = self.priors.to(logits.device)
        if not self.some_absent:
            return self.priors
        absent = self.priors == 0
        labelled = (label > 0).any(0) if label.dim() == 2 else torch.zeros_like(absent).index_fill_(
            0, label.long(), True)
        self.check(absent & labelled, "'class_counts' should be > 0 for every class that has a "
                                      "label in the batch but one of them has count 0")
        if self.check.deferred(logits):  # harmless until the check reports
            return self.priors.clamp_min(torch.finfo(self.priors.dtype).tiny)
        return self.priors
