"""ReLoss for fairseq: the ``reloss_nat`` criterion for non-autoregressive translation.

Use it through the ``--user-dir`` package installed beside this one
(``reloss.fairseq_user_dir()``; ``plugins/fairseq_reloss`` in a source checkout)::

    USER_DIR=$(python -c 'import reloss; print(reloss.fairseq_user_dir())')
    fairseq-train data-bin --task translation_lev --arch nonautoregressive_transformer \\
        --criterion reloss_nat --user-dir $USER_DIR ...
    fairseq-generate data-bin --task translation_lev --user-dir $USER_DIR ...

Importing this module registers the criterion and lets ``torch.load(..., weights_only=True)``
(torch >= 2.6's default, which fairseq's loaders use) read fairseq's checkpoints.
"""
import argparse
import inspect
import os
from dataclasses import dataclass, field
from typing import Optional, Union

import torch
from fairseq import utils
from fairseq.criterions import register_criterion
from fairseq.criterions.nat_loss import LabelSmoothedDualImitationCriterion
from fairseq.dataclass import FairseqDataclass
from fairseq.tasks import FairseqTask

from ._adapter import FrozenSurrogateLoss
from ._validate import check_data, check_non_negative
from .tasks import get_task

# No ``from __future__ import annotations`` here: fairseq reads the config's field types.


def allow_fairseq_checkpoints() -> None:
    """Let ``torch.load(..., weights_only=True)`` read fairseq checkpoints (idempotent).

    Besides tensors, dicts and numbers, a fairseq 0.12 checkpoint of a model with a legacy
    (argparse) architecture, as the NAT models are, holds that model's ``argparse.Namespace``.
    A Namespace is rebuilt from a dict of plain values, so allowing it allows no code.
    """
    torch.serialization.add_safe_globals([argparse.Namespace])


allow_fairseq_checkpoints()


@dataclass
class ReLossNATConfig(FairseqDataclass):
    label_smoothing: float = field(
        default=0.0,
        metadata={"help": "epsilon for label smoothing (as nat_loss): the surrogate becomes "
                          "(1 - eps) surrogate + eps mean over the vocabulary of -log p, as "
                          "nat_loss smooths its NLL"})
    reloss_checkpoint: str = field(
        default="nat",
        metadata={"help": "the translation surrogate: 'nat' (shipped, sha256-checked) or a path "
                          "to a checkpoint written by reloss pretrain --task nat"})
    reloss_weight: float = field(
        default=1.0,
        metadata={"help": "multiplies the whole word-insertion loss, the (label-smoothed) "
                          "surrogate plus --reloss-ce-weight times nat_loss's cross-entropy, as "
                          "loss_weight does in ReLossCls and ReLossPose; the length and other "
                          "terms are nat_loss's, unscaled. Finite, > 0"})
    reloss_ce_weight: float = field(
        default=get_task("nat").default_original_weight,
        metadata={"help": "weight of nat_loss's label-smoothed token cross-entropy added to the "
                          "surrogate in the word-insertion loss (0, the default: the surrogate "
                          "alone). Finite, >= 0"})


class _WordInsertionLoss(FrozenSurrogateLoss):
    """The word-insertion term: ``reloss_weight * (smoothed surrogate + ce_weight * CE)``."""

    def __init__(self, checkpoint: Union[str, os.PathLike], reloss_weight: float,
                 ce_weight: float) -> None:
        reloss_weight = check_non_negative("--reloss-weight", reloss_weight)
        check_non_negative("--reloss-ce-weight", ce_weight)
        if not reloss_weight:
            raise ValueError("'--reloss-weight' is 0: there would be no word-insertion loss; set "
                             "it above 0 (or train with --criterion nat_loss)")
        try:
            super().__init__(checkpoint, "nat", reloss_weight, ce_weight, "--reloss-ce-weight")
        except (ValueError, FileNotFoundError) as error:
            raise ValueError(f"--reloss-checkpoint {checkpoint!r}: {error}") from None

    def check_targets(self, logits: torch.Tensor, targets: torch.Tensor,
                      masks: torch.Tensor) -> torch.Tensor:
        """Ids outside the model's output vocabulary fail with a clear error (on a GPU a step or
        so later, without waiting for the device); until then they are clamped, harmlessly."""
        vocabulary = logits.shape[-1]
        bad = ((targets < 0) | (targets >= vocabulary)) & masks
        self.check(bad, f"target ids should be in [0, {vocabulary}) (the model's output "
                        f"vocabulary: logits {tuple(logits.shape)}) but some are not; is the "
                        f"data binarised with the model's dictionary?")
        return targets.clamp(0, vocabulary - 1)


@register_criterion("reloss_nat", dataclass=ReLossNATConfig)
class ReLossNATCriterion(LabelSmoothedDualImitationCriterion):
    """fairseq's ``nat_loss`` with the word-insertion cross-entropy replaced by the learned
    translation surrogate (``reloss.SequenceSurrogate``); every other term of the model's output
    (the length loss with its ``--length-loss-factor``, Levenshtein's deletion and insertion-count
    terms) is ``nat_loss``'s, unchanged: ``nat_loss``'s own ``forward`` runs, and only its
    ``_compute_loss`` hook differs, for the ``word_ins`` entry.

    The word-insertion loss is ``reloss_weight * (S + reloss_ce_weight * CE)``, where CE is
    ``nat_loss``'s label-smoothed token cross-entropy, ``S = (1 - e) surrogate + e mean_k(-log
    p(k))`` is the surrogate smoothed the same way (``e`` = ``--label-smoothing``; NAT recipes use
    0.1), and all are means over the positions the model marks (non-padding for
    ``nonautoregressive_transformer``, the masked ones for ``cmlm_transformer``); what unmarked
    positions hold never reaches the loss or its gradient. The surrogate is frozen and held
    outside the criterion's parameters, so no optimizer, DDP hook or checkpoint ever sees it: a
    checkpoint trained with it loads in ``fairseq-generate`` and resumes with ``nat_loss``
    (``--reset-optimizer``, as for any change of criterion). It is rebuilt, sha256-checked, on
    every worker.

    Logged: ``loss``, ``nll_loss`` (plain token NLL, as with nat_loss), ``word_ins`` (the term
    above), ``reloss`` (the surrogate alone, unsmoothed) and ``length``.

    Works for any model whose training output has a ``word_ins`` entry of (B, T, V) logits
    (V >= 2); targets of any length (the shipped surrogate reads whole sentences: their token
    cross-entropy and bag-of-n-grams distances, with no maximum length).
    """

    def __init__(self, task: FairseqTask, label_smoothing: float, reloss_checkpoint: str,
                 reloss_weight: float, reloss_ce_weight: float) -> None:
        super().__init__(task, label_smoothing)
        self.word_insertion = _WordInsertionLoss(reloss_checkpoint, reloss_weight,
                                                 reloss_ce_weight)
        self.checked_model = False
        self._seen, self._reloss, self._model_label = [], None, "the model"

    @staticmethod
    def _model_name(model):
        while hasattr(model, "module"):  # DDP and fairseq's wrappers
            model = model.module
        return model, type(model).__name__

    def _refuse(self, name, got):
        raise ValueError(
            f"--criterion reloss_nat needs a model whose training output has a 'word_ins' entry "
            f"with (B, T, V) logits (nonautoregressive_transformer, cmlm_transformer, "
            f"levenshtein_transformer, ...: forward(src_tokens, src_lengths, prev_output_tokens, "
            f"tgt_tokens)), but {name} {got}")

    def _word_insertion(self, logits, targets, masks, label_smoothing, name, factor):
        if not torch.is_tensor(logits) or logits.dim() != 3:
            got = f"of shape {tuple(logits.shape)}" if torch.is_tensor(logits) else "of type " \
                + type(logits).__name__
            self._refuse(self._model_label, f"returned 'word_ins' logits {got}")
        if logits.shape[-1] < 2:
            raise ValueError(f"the model's 'word_ins' logits should have V >= 2 vocabulary "
                             f"entries (B, T, V) but got shape {tuple(logits.shape)}")
        check_data("word_ins logits", logits)
        if masks is None:
            masks = targets.ne(self.padding_idx)
        loss_fn = self.word_insertion
        targets = loss_fn.check_targets(logits, targets, masks)
        surrogate = loss_fn.surrogate_on(logits.device)
        # 0 where nothing is marked, as nat_loss (without asking the device whether it is so).
        smoothed, reloss, nll = surrogate.training_terms(logits, targets, masks.to(torch.float32),
                                                         label_smoothing)
        loss_fn.check(~torch.isfinite(smoothed), "the model's word-insertion logits should be "
                                                 "finite at the marked positions but hold NaN or "
                                                 "Inf")
        if loss_fn.original_weight:
            ce = super()._compute_loss(logits, targets, masks, label_smoothing)["loss"]
            smoothed = smoothed + loss_fn.original_weight * ce.float()
        self._reloss = reloss
        return {"name": name, "loss": loss_fn.loss_weight * smoothed * factor, "nll_loss": nll,
                "factor": factor}

    def _compute_loss(self, outputs: torch.Tensor, targets: torch.Tensor,
                      masks: Optional[torch.Tensor] = None, label_smoothing: float = 0.0,
                      name: str = "loss", factor: float = 1.0) -> dict:
        """nat_loss's hook for one output entry: the word-insertion entry gets the surrogate,
        every other one nat_loss's loss."""
        self._seen.append(name)
        if name == "word_ins-loss":
            return self._word_insertion(outputs, targets, masks, label_smoothing, name, factor)
        return super()._compute_loss(outputs, targets, masks, label_smoothing, name, factor)

    def _custom_loss(self, loss: torch.Tensor, name: str = "loss", factor: float = 1.0) -> dict:
        self._seen.append(name)
        return super()._custom_loss(loss, name, factor)

    def forward(self, model: torch.nn.Module, sample: dict, reduce: bool = True
                ) -> tuple[torch.Tensor, int, dict]:
        """nat_loss's forward: returns (loss, sample size 1, logging output); the loss is already
        a mean over target positions. Logs the surrogate too (``reloss``)."""
        if "prev_target" not in sample:
            raise ValueError("--criterion reloss_nat needs the noised decoder inputs of "
                             "--task translation_lev (the sample has no 'prev_target')")
        inner, self._model_label = self._model_name(model)
        if not self.checked_model and "tgt_tokens" not in inspect.signature(
                inner.forward).parameters:
            self._refuse(self._model_label,
                         "does not take tgt_tokens (not a non-autoregressive model)")
        self._seen, self._reloss = [], None
        loss, sample_size, logging_output = super().forward(model, sample, reduce)
        if self._reloss is None:
            names = sorted(name[:-len("-loss")] for name in self._seen)
            self._refuse(self._model_label, f"returned a dict with {names}")
        self.checked_model = True
        # Logged before nat_loss's terms, so that logs read: loss, nll_loss, reloss, word_ins, ...
        totals = {k: v for k, v in logging_output.items() if not k.endswith("-loss")}
        terms = {k: v for k, v in logging_output.items() if k.endswith("-loss")}
        logging_output = {**totals, "reloss-loss": utils.item(self._reloss.data), **terms}
        self._reloss = None
        return loss, sample_size, logging_output
