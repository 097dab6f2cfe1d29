"""What the toolkit adapters share: a frozen surrogate held outside the model."""
from __future__ import annotations

import os

import torch
from torch import nn

from ._validate import DeferredCheck, check_non_negative
from .checkpoint import load_surrogate
from .surrogate import Surrogate
from .tasks import get_task


class FrozenSurrogateLoss(nn.Module):
    """Base of the toolkit losses: loads the surrogate (sha256-checked) and keeps it frozen and
    outside ``parameters()`` and ``state_dict()``, so that no optimizer, weight decay or DDP
    gradient hook ever sees it and a model checkpoint neither holds nor overrides it; it is moved
    to the predictions' device on first use.

    Args:
        checkpoint (str): a shipped surrogate name or a path to one.
        task (str): the task the surrogate must be for ('cls', 'pose', 'nat', 'qa').
        loss_weight (float): multiplies the whole loss.
        original_weight (float | None): weight of the original loss added to the surrogate;
            None takes the task's ``default_original_weight``.
        original_name (str): that weight's argument name, for error messages.
    """

    def __init__(self, checkpoint: str | os.PathLike, task: str, loss_weight: float,
                 original_weight: float | None, original_name: str) -> None:
        super().__init__()
        self.loss_weight = check_non_negative("loss_weight", loss_weight)
        self.original_weight = check_non_negative(
            original_name,
            get_task(task).default_original_weight if original_weight is None else original_weight)
        if not isinstance(checkpoint, (str, os.PathLike)):
            raise TypeError(f"'checkpoint' should be a shipped surrogate name or a path (str or "
                            f"os.PathLike) but got {type(checkpoint).__name__}")
        surrogate = load_surrogate(checkpoint)
        if surrogate.task != task:
            raise ValueError(f"'checkpoint' should be a {get_task(task).description} ('{task}') "
                             f"surrogate but "
                             f"{checkpoint!r} is a '{surrogate.task}' one")
        self.checkpoint = checkpoint
        self.__dict__["surrogate"] = surrogate  # not a submodule
        # Moving a module keeps its Parameter objects: one of them tells where it is.
        self.__dict__["_surrogate_parameter"] = next(surrogate.parameters())
        self.check = DeferredCheck()

    def surrogate_on(self, device: torch.device) -> Surrogate:
        """The surrogate, moved to ``device`` if it is not there yet."""
        if self._surrogate_parameter.device != device:
            self.surrogate.to(device)
        return self.surrogate
