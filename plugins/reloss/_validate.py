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
