"""Checks at the public boundary: each error names the argument, what was expected and what came."""
import math
import numbers

import torch


def check_tensor(name, value):
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"'{name}' should be a torch.Tensor but got {type(value).__name__}")


def check_float(name, value):
    check_tensor(name, value)
    if not value.is_floating_point():
        raise TypeError(f"'{name}' should be a floating-point tensor but got dtype {value.dtype}")


def check_ndim(name, value, ndims, form):
    check_tensor(name, value)
    if value.dim() not in ndims:
        raise ValueError(f"'{name}' should be a {form} tensor but got shape {tuple(value.shape)}")


def check_finite(name, value):
    if value.is_floating_point() or value.is_complex():
        bad = ~torch.isfinite(value)
        if bool(bad.any()):
            raise ValueError(
                f"'{name}' should hold only finite values but got {int(bad.sum())} NaN or Inf "
                f"of {value.numel()} elements")


def check_same_shape(name_a, a, name_b, b):
    if a.shape != b.shape:
        raise ValueError(f"'{name_a}' and '{name_b}' should have the same shape but got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")


def check_min_size(name, value, dim, minimum, symbol):
    size = value.shape[dim]
    if size < minimum:
        raise ValueError(f"'{name}' should have {symbol} >= {minimum} (size of dim {dim}) but got "
                         f"{symbol}={size} in shape {tuple(value.shape)}")


def check_positive(name, value):
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or not math.isfinite(value) or value <= 0):
        raise ValueError(f"'{name}' should be a positive finite number but got {value!r}")


def check_choice(name, value, choices):
    if value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"'{name}' should be one of {allowed} but got {value!r}")


class DeferredCheck:
    """Value checks (label ranges, NaN) that never stall an accelerator.

    On the CPU a failed check raises at once. On a GPU, reading a flag would wait for the device
    every step; instead the flag is copied to pinned host memory without blocking, and a later
    call raises once the copy has landed (within a step or two of the bad batch).
    """

    def __init__(self):
        self._pending = []

    def __call__(self, bad, message):
        """``bad``: a bool tensor, True where something is wrong; ``message``: the error text."""
        self.poll()
        if bad.device.type == "cpu":
            if bool(bad.any()):
                raise ValueError(message)
            return
        host = torch.empty((), dtype=torch.bool, pin_memory=True)
        host.copy_(bad.any(), non_blocking=True)
        event = torch.cuda.Event() if bad.device.type == "cuda" else None
        if event is not None:
            event.record()
        self._pending.append((event, host, message))

    def poll(self):
        while self._pending:
            event, host, message = self._pending[0]
            if event is not None and not event.query():
                return
            self._pending.pop(0)
            if bool(host):
                raise ValueError(f"{message} (seen on the GPU a step or so before this one: the "
                                 f"check does not wait for the device)")


def check_heatmaps(pred_name, pred, target_name, target, dims):
    """``pred``: 4-D float heatmaps (``dims`` names the axes); ``target``: a tensor of its shape."""
    check_float(pred_name, pred)
    check_ndim(pred_name, pred, (4,), f"4-D {dims} heatmaps")
    check_tensor(target_name, target)
    if target.shape != pred.shape:
        raise ValueError(f"'{target_name}' should have the shape of '{pred_name}' "
                         f"{tuple(pred.shape)} but got {tuple(target.shape)}")
