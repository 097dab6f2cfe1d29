"""ReLoss for Hugging Face transformers: ``ReLossQA``, the learned loss of extractive question
answering, and ``ReLossQATrainer``, a ``transformers.Trainer`` that trains QA models with it.

With the Trainer::

    from reloss.transformers import ReLossQA, ReLossQATrainer

    trainer = ReLossQATrainer(model=model, args=training_args, train_dataset=features,
                              reloss=ReLossQA())       # the default: the shipped 'qa' surrogate
    trainer.train()

In a loop of your own::

    loss_fn = ReLossQA()
    out = model(input_ids=..., attention_mask=...)
    loss = loss_fn(out.start_logits, out.end_logits, start_positions, end_positions)
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from transformers import Trainer

from ._adapter import FrozenSurrogateLoss
from ._validate import check_choice, check_data, check_float, check_ndim, check_not_bool
from .surrogate import REDUCTIONS, reduce_values


def _positions(name, positions, count):
    """(N,) integer positions from (N,) or (N, 1), as the QA models take them."""
    check_data(name, positions)
    check_not_bool(name, positions, "(N,) integer token indices")
    if positions.is_floating_point() or positions.is_complex():
        raise TypeError(f"'{name}' should be (N,) integer token indices but got dtype "
                        f"{positions.dtype}")
    if positions.dim() > 1:
        positions = positions.squeeze(-1)
    if tuple(positions.shape) != (count,):
        raise ValueError(f"'{name}' should be (N,) = ({count},) token indices but got shape "
                         f"{tuple(positions.shape)}")
    return positions


class ReLossQA(FrozenSurrogateLoss):
    """The learned loss of extractive question answering, called like the loss of transformers'
    ``*ForQuestionAnswering`` models.

    ``loss_weight * (surrogate + ce_weight * (CE(start) + CE(end)) / 2)`` per question, averaged
    over the questions that count. Positions are clamped to [0, L] as the models' default loss
    clamps them, and position L (an answer outside the sequence) is ignored; a question counts
    where both its start and its end count, since the surrogate reads the pair. The surrogate
    (:class:`reloss.tasks.qa.QASurrogate`) is frozen and held outside the model (see
    :class:`reloss._adapter.FrozenSurrogateLoss`).

    Args:
        checkpoint (str): a shipped surrogate name ('qa') or a path to one.
        ce_weight (float | None): weight of the default QA loss added to the surrogate; None
            takes the task's default (0: the shipped surrogate holds the default loss).
        loss_weight (float): multiplies the whole loss.

    Note:
        N questions (sequences), L tokens. ``start_logits``, ``end_logits`` (N, L) float;
        ``start_positions``, ``end_positions`` (N,) or (N, 1) integer token indices.
    """

    def __init__(self, checkpoint: str | os.PathLike = "qa", ce_weight: float | None = None,
                 loss_weight: float = 1.0) -> None:
        super().__init__(checkpoint, "qa", loss_weight, ce_weight, "ce_weight")

    def _inputs(self, start_logits, end_logits, start_positions, end_positions):
        for name, logits in (("start_logits", start_logits), ("end_logits", end_logits)):
            check_float(name, logits)
            check_data(name, logits)
            check_ndim(name, logits, (2,), "2-D (N, L)")
        if start_logits.shape != end_logits.shape:
            raise ValueError(f"'start_logits' and 'end_logits' should have the same (N, L) shape "
                             f"but got {tuple(start_logits.shape)} and "
                             f"{tuple(end_logits.shape)}")
        count, length = start_logits.shape
        if length < 1:
            raise ValueError(f"'start_logits' should have L >= 1 tokens but got shape "
                             f"{tuple(start_logits.shape)}")
        positions = torch.stack([_positions("start_positions", start_positions, count),
                                 _positions("end_positions", end_positions, count)], -1)
        positions = positions.to(start_logits.device).long().clamp(0, length)
        counted = (positions < length).all(-1)
        logits = torch.stack([start_logits, end_logits], 1).float()
        self.check(~torch.isfinite(logits).all(),
                   "'start_logits' and 'end_logits' should hold only finite values but hold NaN "
                   "or Inf")
        return logits, positions.masked_fill(~counted.unsqueeze(-1), 0), counted

    def forward(self, start_logits: torch.Tensor, end_logits: torch.Tensor,
                start_positions: torch.Tensor, end_positions: torch.Tensor,
                reduction: str = "mean") -> torch.Tensor:
        """The loss: 'mean' over the questions that count (0 if none does), 'sum', or 'none'
        (N,) with 0 for questions that do not count."""
        check_choice("reduction", reduction, REDUCTIONS)
        logits, positions, counted = self._inputs(start_logits, end_logits, start_positions,
                                                  end_positions)
        values = self.surrogate_on(logits.device)(logits, positions, reduction="none")
        if self.original_weight:
            ce = F.cross_entropy(logits.flatten(0, 1), positions.flatten(), reduction="none")
            values = values + self.original_weight * ce.view(-1, 2).mean(-1)
        values = self.loss_weight * torch.where(counted, values, 0.0)
        return reduce_values(values, reduction, counted)

    @staticmethod
    def count(start_positions: torch.Tensor, end_positions: torch.Tensor,
              length: int) -> torch.Tensor:
        """How many questions count (both positions inside [0, L) after clamping), a 0-D
        tensor."""
        start = start_positions.reshape(-1).clamp_min(0)
        end = end_positions.reshape(-1).clamp_min(0)
        return ((start < length) & (end < length)).sum()


class ReLossQATrainer(Trainer):
    """A ``transformers.Trainer`` whose training loss is :class:`ReLossQA` on the model's start
    and end logits. Takes every argument of ``Trainer``, and:

    Args:
        reloss (ReLossQA | None): the loss (default: ``ReLossQA()``, the shipped surrogate).

    Batches must hold ``start_positions`` and ``end_positions``; they are taken out before the
    forward pass, so the model computes no loss of its own. Under gradient accumulation the loss
    of each micro-batch is its sum over questions divided by the questions of the whole
    accumulated batch (over all processes when ``average_tokens_across_devices``, as the Trainer
    does for tokens), so the gradient and the logged loss do not depend on how a batch is split.
    The surrogate lives on the trainer: it is not in the model's parameters, state dict or
    ``save_pretrained`` output, and every process and every resume rebuilds it from its
    sha256-checked checkpoint.
    """

    def __init__(self, *args, reloss: ReLossQA | None = None, **kwargs) -> None:
        missing = [name for name in ("loss_is_scaled_for_ga", "_get_num_items_in_batch")
                   if not hasattr(Trainer, name)]
        if missing:  # the Trainer would scale the loss for gradient accumulation a second time
            import transformers

            raise ImportError(f"ReLossQATrainer needs a transformers Trainer with "
                              f"{' and '.join(missing)} (transformers >= 5.24 is tested) but "
                              f"transformers {transformers.__version__} has none: its Trainer "
                              f"would divide ReLossQATrainer's loss by the gradient accumulation "
                              f"steps a second time. Upgrade: pip install 'reloss[transformers]'")
        if reloss is not None and not isinstance(reloss, ReLossQA):
            raise TypeError(f"'reloss' should be a ReLossQA or None but got "
                            f"{type(reloss).__name__}")
        super().__init__(*args, **kwargs)
        self.reloss = ReLossQA() if reloss is None else reloss

    def _get_num_items_in_batch(self, batch_samples, device):
        """The number of questions that count in the accumulated batch (the Trainer counts
        ``labels``, which QA batches do not have)."""
        if not batch_samples or not all("start_positions" in b and "end_positions" in b
                                        and "input_ids" in b for b in batch_samples):
            return super()._get_num_items_in_batch(batch_samples, device)
        count = sum(ReLossQA.count(b["start_positions"], b["end_positions"],
                                   b["input_ids"].shape[-1]) for b in batch_samples)
        count = torch.as_tensor(count, device=device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            count = self.accelerator.gather(count).sum()
        return count

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        missing = [k for k in ("start_positions", "end_positions") if k not in inputs]
        if missing:
            raise ValueError(f"ReLossQATrainer needs {' and '.join(map(repr, missing))} in every "
                             f"batch (the answer's token positions) but the batch holds "
                             f"{', '.join(map(repr, inputs))}")
        inputs = dict(inputs)
        start_positions = inputs.pop("start_positions")
        end_positions = inputs.pop("end_positions")
        outputs = model(**inputs)
        start_logits, end_logits = ((outputs["start_logits"], outputs["end_logits"])
                                    if isinstance(outputs, dict) else outputs[:2])
        if num_items_in_batch is None:  # a mean per micro-batch; the Trainer divides it
            loss = self.reloss(start_logits, end_logits, start_positions, end_positions)
            self.loss_is_scaled_for_ga = False
        else:
            loss = self.reloss(start_logits, end_logits, start_positions, end_positions,
                               reduction="sum")
            loss = loss / torch.as_tensor(num_items_in_batch, device=loss.device).clamp_min(1)
            if self.args.average_tokens_across_devices and self.args.world_size > 1:
                loss = loss * self.accelerator.num_processes  # DDP averages the gradients
            self.loss_is_scaled_for_ga = True
        return (loss, outputs) if return_outputs else loss
