"""What the toolkit adapters share: a frozen surrogate held outside the model."""
from torch import nn

from ._validate import DeferredCheck
from .checkpoint import load_surrogate
from .surrogates import DEFAULT_ORIGINAL_WEIGHT


def non_negative(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"'{name}' should be a number >= 0 but got {value!r}")
    return float(value)


class FrozenSurrogateLoss(nn.Module):
    """Base of the toolkit losses: loads the surrogate (sha256-checked) and keeps it frozen and
    outside ``parameters()`` and ``state_dict()``, so that no optimizer, weight decay or DDP
    gradient hook ever sees it and a model checkpoint neither holds nor overrides it; it is moved
    to the predictions' device on first use.

    Args:
        checkpoint (str): a shipped surrogate name or a path to one.
        task (str): the task the surrogate must be for ('cls', 'pose').
        loss_weight (float): multiplies the whole loss.
        original_weight (float | None): weight of the original loss added to the surrogate;
            None takes ``DEFAULT_ORIGINAL_WEIGHT[task]``.
        original_name (str): that weight's argument name, for error messages.
    """

    def __init__(self, checkpoint, task, loss_weight, original_weight, original_name):
        super().__init__()
        self.loss_weight = non_negative("loss_weight", loss_weight)
        self.original_weight = non_negative(original_name, DEFAULT_ORIGINAL_WEIGHT[task]
                                            if original_weight is None else original_weight)
        surrogate = load_surrogate(checkpoint)
        if surrogate.task != task:
            names = dict(cls="classification", pose="pose", nat="translation")
            raise ValueError(f"'checkpoint' should be a {names[task]} ('{task}') surrogate but "
                             f"{checkpoint!r} is a '{surrogate.task}' one")
        self.checkpoint = checkpoint
        self.__dict__["surrogate"] = surrogate  # not a submodule
        self.check = DeferredCheck()

    def surrogate_on(self, device):
        if next(self.surrogate.parameters()).device != device:
            self.surrogate.to(device)
        return self.surrogate
