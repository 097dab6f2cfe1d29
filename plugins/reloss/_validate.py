"""Checks at the public boundary: each error names the argument, what was expected and what came."""
from __future__ import annotations

import math
import numbers

import torch


def check_tensor(name: str, value: object) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"'{name}' should be a torch.Tensor but got {type(value).__name__}")


def check_data(name: str, value: torch.Tensor) -> None:
    """A tensor the toolkit adapters can read values from: not a meta (shape-only) tensor."""
    check_tensor(name, value)
    if value.is_meta:
        raise ValueError(f"'{name}' should be a tensor with data (on a CPU or GPU) but got one on "
                         f"the meta device, which holds shapes only")


def check_not_bool(name: str, value: torch.Tensor, expected: str) -> None:
    """Refuses bool tensors where numbers are expected (True would read as index 1)."""
    if value.dtype == torch.bool:
        raise TypeError(f"'{name}' should be {expected} but got a torch.bool tensor")


def check_float(name: str, value: object) -> None:
    check_tensor(name, value)
    if not value.is_floating_point():
        raise TypeError(f"'{name}' should be a floating-point tensor but got dtype {value.dtype}")


def check_ndim(name: str, value: object, ndims: tuple[int, ...], form: str) -> None:
    check_tensor(name, value)
    if value.dim() not in ndims:
        raise ValueError(f"'{name}' should be a {form} tensor but got shape {tuple(value.shape)}")


def check_finite(name: str, value: torch.Tensor) -> None:
    if value.is_floating_point() or value.is_complex():
        bad = ~torch.isfinite(value)
        if bool(bad.any()):
            raise ValueError(
                f"'{name}' should hold only finite values but got {int(bad.sum())} NaN or Inf "
                f"of {value.numel()} elements")


def check_same_shape(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"'{name_a}' and '{name_b}' should have the same shape but got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")


def check_min_size(name: str, value: torch.Tensor, dim: int, minimum: int, symbol: str
                   ) -> None:
    size = value.shape[dim]
    if size < minimum:
        raise ValueError(f"'{name}' should have {symbol} >= {minimum} (size of dim {dim}) but got "
                         f"{symbol}={size} in shape {tuple(value.shape)}")


def check_non_negative(name: str, value: object) -> float:
    """A finite number >= 0 (a weight), as a float."""
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or not math.isfinite(value) or value < 0):
        raise ValueError(f"'{name}' should be a finite number >= 0 but got {value!r}")
    return float(value)


def check_positive(name: str, value: object) -> None:
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or not math.isfinite(value) or value <= 0):
        raise ValueError(f"'{name}' should be a positive finite number but got {value!r}")


def check_choice(name: str, value: object, choices: tuple) -> None:
    if value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"'{name}' should be one of {allowed} but got {value!r}")


class DeferredCheck:
    """Value checks (label ranges, NaN) that never stall an accelerator.

    On the CPU (and any device other than a CUDA GPU) a failed check raises at once. On a CUDA GPU,
    reading a flag would wait for the device every step; instead the flag is copied to pinned host
    memory without blocking, and a later call raises once the copy has landed (within a step or
    two of the bad batch). Until then the adapters keep the bad values harmless (clamped, masked).
    """

    def __init__(self) -> None:
        self._pending = []

    def __call__(self, bad: torch.Tensor, message: str) -> None:
        """``bad``: a bool tensor, True where something is wrong; ``message``: the error text."""
        self.poll()
        if bad.device.type != "cuda":  # read at once where waiting costs nothing (or no more)
            if bool(bad.any()):
                raise ValueError(message)
            return
        host = torch.empty((), dtype=torch.bool, pin_memory=True)
        host.copy_(bad.any(), non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self._pending.append((event, host, message))

    @staticmethod
    def deferred(value: torch.Tensor) -> bool:
        """Whether checks of ``value`` report later (on a CUDA GPU) rather than at once."""
        return value.device.type == "cuda"

    def finite(self, value: torch.Tensor, message: str) -> None:
        """Refuses NaN and Inf anywhere in ``value``. At once (off a CUDA GPU) a finite sum
        proves every element finite, in one read-only pass; only a sum that is not finite (NaN,
        Inf, or an overflow of finite values) is followed by the element-wise test."""
        if self.deferred(value):
            self(~torch.isfinite(value).all(), message)
            return
        self.poll()
        value = value.detach()
        # Half precision sums in float32, where a sum of finite values does not overflow.
        total = value.sum(dtype=torch.float32) if value.dtype in (torch.float16, torch.bfloat16) \
            else value.sum()
        if not math.isfinite(total) and not bool(torch.isfinite(value).all()):
            raise ValueError(message)

    def within(self, value: torch.Tensor, low: int, high: int, message: str) -> None:
        """Refuses integers outside [low, high); at once, from the smallest and the largest."""
        if self.deferred(value):
            self((value < low) | (value >= high), message)
            return
        self.poll()
        if value.numel():
            least, most = torch.aminmax(value.detach())
            if least.item() < low or most.item() >= high:
                raise ValueError(message)

    def poll(self) -> None:
        """Raises for the first pending check whose flag has landed and is set."""
        while self._pending:
            event, host, message = self._pending[0]
            if not event.query():
                return
            self._pending.pop(0)
            if bool(host):
                raise ValueError(f"{message} (seen on the GPU a step or so before this one: the "
                                 f"check does not wait for the device)")


def check_heatmaps(pred_name: str, pred: torch.Tensor, target_name: str, target: torch.Tensor,
                   dims: str) -> None:
    """``pred``: 4-D float heatmaps (``dims`` names the axes); ``target``: a tensor of its shape."""
    check_float(pred_name, pred)
    check_ndim(pred_name, pred, (4,), f"4-D {dims} heatmaps")
    check_min_size(pred_name, pred, 2, 1, "H")
    check_min_size(pred_name, pred, 3, 1, "W")
    check_tensor(target_name, target)
    if target.shape != pred.shape:
        raise ValueError(f"'{target_name}' should have the shape of '{pred_name}' "
                         f"{tuple(pred.shape)} but got {tuple(target.shape)}")


def check_count(name: str, value: object, minimum: int) -> None:
    """An int (not a bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"'{name}' should be an int >= {minimum} but got {value!r}")


def check_range(name: str, value: object, least: float, most: float,
                pair: bool = False) -> tuple[float, float]:
    """(low, high) with least <= low <= high <= most, from a pair or (unless ``pair``) from one
    number, which gives low = high; a ValueError naming ``name`` otherwise."""
    bounds = value if pair or not is_real(value) else (value, value)
    if (not isinstance(bounds, (tuple, list)) or len(bounds) != 2 or not all(map(is_real, bounds))
            or not least <= bounds[0] <= bounds[1] <= most or math.isinf(bounds[1])):
        form = "a pair (low, high)" if pair else "a number or a pair (low, high)"
        limit = "" if math.isinf(most) else f" <= {most:g}"
        raise ValueError(f"'{name}' should be {form} with {least:g} <= low <= high{limit} but "
                         f"got {value!r}")
    return float(bounds[0]), float(bounds[1])


def is_real(value: object) -> bool:
    """A real number that is not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_class_indices(name: str, labels: torch.Tensor, classes: int) -> None:
    """Every value of the integer tensor ``labels`` in [0, classes) (reads the values: on an
    accelerator this waits for the device)."""
    if labels.numel():
        least, most = int(labels.min()), int(labels.max())
        if least < 0 or most >= classes:
            raise ValueError(f"'{name}' should hold class indices in [0, C) = [0, {classes}) but "
                             f"got values from {least} to {most}")
