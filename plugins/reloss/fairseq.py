"""ReLoss for fairseq: the ``reloss_nat`` criterion for non-autoregressive translation.

Use it through the ``--user-dir`` package next to this one::

    fairseq-train data-bin --task translation_lev --arch nonautoregressive_transformer \\
        --criterion reloss_nat --user-dir plugins/fairseq_reloss ...
    fairseq-generate data-bin --task translation_lev --user-dir plugins/fairseq_reloss ...

Importing this module registers the criterion and lets ``torch.load(..., weights_only=True)``
(torch >= 2.6's default, which fairseq's loaders use) read fairseq's checkpoints.
"""
import argparse
import inspect
from dataclasses import dataclass, field

import torch
from fairseq import utils
from fairseq.criterions import register_criterion
from fairseq.criterions.nat_loss import LabelSmoothedDualImitationCriterion
from fairseq.dataclass import FairseqDataclass

from ._adapter import FrozenSurrogateLoss, non_negative
from .surrogates import DEFAULT_ORIGINAL_WEIGHT


def allow_fairseq_checkpoints():
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
        metadata={"help": "epsilon for label smoothing (as nat_loss): the word-insertion loss "
                          "becomes (1 - eps) surrogate + eps mean over the vocabulary of -log p, "
                          "as nat_loss smooths its NLL"})
    reloss_checkpoint: str = field(
        default="nat",
        metadata={"help": "the translation surrogate: 'nat' (shipped, sha256-checked) or a path "
                          "to a checkpoint written by tools/pretrain_surrogate.py --task nat"})
    reloss_weight: float = field(
        default=1.0, metadata={"help": "weight of the (label-smoothed) surrogate in the "
                                       "word-insertion loss"})
    reloss_ce_weight: float = field(
        default=DEFAULT_ORIGINAL_WEIGHT["nat"],
        metadata={"help": "weight of nat_loss's label-smoothed token cross-entropy added to the "
                          "surrogate in the word-insertion loss. Default 0, the surrogate alone: "
                          "mixed 1:1 it trained worse in tools/nat_proxy.py and in "
                          "tools/benchmark_training.py --task nat (README, 'Translation with "
                          "fairseq'); 1 with --reloss-weight 0 is nat_loss"})


class _WordInsertionLoss(FrozenSurrogateLoss):
    """The word-insertion term: ``reloss_weight * smoothed surrogate + ce_weight * CE``."""

    def __init__(self, checkpoint, reloss_weight, ce_weight):
        reloss_weight = non_negative("--reloss-weight", reloss_weight)
        ce_weight = non_negative("--reloss-ce-weight", ce_weight)
        if not reloss_weight and not ce_weight:
            raise ValueError("--reloss-weight and --reloss-ce-weight are both 0: there would be "
                             "no word-insertion loss; set at least one above 0")
        try:
            super().__init__(checkpoint, "nat", reloss_weight, ce_weight, "reloss_ce_weight")
        except (ValueError, FileNotFoundError) as error:
            raise ValueError(f"--reloss-checkpoint {checkpoint!r}: {error}") from None

    def check_targets(self, logits, targets, masks):
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
    terms) is ``nat_loss``'s, unchanged.

    The word-insertion loss is ``reloss_weight * S + reloss_ce_weight * CE``, where CE is
    ``nat_loss``'s label-smoothed token cross-entropy, ``S = (1 - e) surrogate + e mean_k(-log
    p(k))`` is the surrogate smoothed the same way (``e`` = ``--label-smoothing``; NAT recipes use
    0.1, and without it the surrogate trained several BLEU worse), and all are means over the
    positions the model marks (non-padding for ``nonautoregressive_transformer``, the masked ones
    for ``cmlm_transformer``). The surrogate is frozen and held outside the criterion's parameters,
    so no optimizer, DDP hook or checkpoint ever sees it: a checkpoint trained with it loads in
    ``fairseq-generate`` and resumes with ``nat_loss`` (``--reset-optimizer``, as for any change
    of criterion). It is rebuilt, sha256-checked, on every worker.

    Logged: ``loss``, ``nll_loss`` (plain token NLL, as with nat_loss), ``word_ins`` (the term
    above), ``reloss`` (the surrogate alone, unsmoothed) and ``length``.

    Works for any model whose training output has a ``word_ins`` entry of (B, T, V) logits;
    targets of any length (the surrogate's positions are sinusoidal, with no maximum).
    """

    def __init__(self, task, label_smoothing, reloss_checkpoint, reloss_weight,
                 reloss_ce_weight):
        super().__init__(task, label_smoothing)
        self.word_insertion = _WordInsertionLoss(reloss_checkpoint, reloss_weight,
                                                 reloss_ce_weight)
        self.checked_model = False

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

    def _check_model(self, model, outputs=None):
        """Before the first forward: the model must take NAT's arguments; after it: its output
        must have a 'word_ins' entry. Runs once."""
        if self.checked_model:
            return
        model, name = self._model_name(model)
        if outputs is None:
            if "tgt_tokens" not in inspect.signature(model.forward).parameters:
                self._refuse(name, "does not take tgt_tokens (not a non-autoregressive model)")
            return
        entry = outputs.get("word_ins") if isinstance(outputs, dict) else None
        if not isinstance(entry, dict) or not torch.is_tensor(entry.get("out")) \
                or entry["out"].dim() != 3:
            got = (f"a dict with {sorted(outputs)}" if isinstance(outputs, dict)
                   else type(outputs).__name__)
            self._refuse(name, f"returned {got}")
        self.checked_model = True

    def _word_insertion(self, entry):
        logits, targets = entry["out"], entry["tgt"]
        masks = entry.get("mask")
        if masks is None:
            masks = targets.ne(self.padding_idx)
        loss_fn = self.word_insertion
        targets = loss_fn.check_targets(logits, targets, masks)
        surrogate = loss_fn.surrogate_on(logits.device)
        # 0 where nothing is marked, as nat_loss (without asking the device whether it is so).
        smoothed, reloss, nll = surrogate.training_terms(logits, targets,
                                                         masks.to(torch.float32),
                                                         entry.get("ls", 0.0))
        loss_fn.check(~torch.isfinite(smoothed), "the model's word-insertion logits should be "
                                                 "finite but hold NaN or Inf")
        loss = loss_fn.loss_weight * smoothed
        if loss_fn.original_weight:
            ce = self._compute_loss(logits, targets, masks, entry.get("ls", 0.0))
            loss = loss + loss_fn.original_weight * ce["loss"].float()
        return {"name": "word_ins-loss", "loss": loss, "nll_loss": nll, "factor": 1.0,
                "reloss": reloss}

    def forward(self, model, sample, reduce=True):
        """As ``nat_loss``: returns (loss, sample size 1, logging output); the loss is already a
        mean over target positions."""
        if "prev_target" not in sample:
            raise ValueError("--criterion reloss_nat needs the noised decoder inputs of "
                             "--task translation_lev (the sample has no 'prev_target')")
        self._check_model(model)
        outputs = model(sample["net_input"]["src_tokens"], sample["net_input"]["src_lengths"],
                        sample["prev_target"], sample["target"])
        self._check_model(model, outputs)
        losses, nll_loss, reloss = [], [], None
        for name, entry in outputs.items():
            if name == "word_ins":
                part = self._word_insertion(entry)
                reloss = part.pop("reloss")
            elif entry.get("loss") is None:
                part = self._compute_loss(entry.get("out"), entry.get("tgt"), entry.get("mask"),
                                          entry.get("ls", 0.0), name=name + "-loss",
                                          factor=entry.get("factor", 1.0))
            else:
                part = self._custom_loss(entry["loss"], name=name + "-loss",
                                         factor=entry.get("factor", 1.0))
            losses.append(part)
            if entry.get("nll_loss", False):
                nll_loss.append(part.get("nll_loss", 0.0))
        loss = sum(part["loss"] for part in losses)
        nll_loss = sum(nll_loss) if nll_loss else loss.new_tensor(0)
        logging_output = {"loss": loss.data, "nll_loss": nll_loss.data,
                          "ntokens": sample["ntokens"], "nsentences": sample["nsentences"],
                          "sample_size": 1, "reloss-loss": utils.item(reloss.data)}
        for part in losses:
            logging_output[part["name"]] = utils.item(part["loss"].data / part["factor"])
        return loss, 1, logging_output

