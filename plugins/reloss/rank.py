"""Soft (differentiable) ranks along the last dimension of a (B, n) tensor.

Two backends compute them:

- ``'torchsort'``: the projection onto the permutahedron with l2 regularization (Blondel et al.,
  "Fast Differentiable Sorting and Ranking", ICML 2020) from the ``torchsort`` package; an
  O(n log n) C++ kernel, and a CUDA kernel when torchsort was built with one.
- ``'pairwise'``: plain torch, ``rank_i = 1/2 + sum_j sigmoid((x_i - x_j) / s)``; O(n^2) memory,
  few kernel launches, works on every device and dtype.

``'auto'`` picks the faster one for the input's device and size, from the measurements of
``tools/benchmarks/rank.py`` (docs/speed.md).
"""
from __future__ import annotations

import importlib.util
import warnings

import torch

from ._validate import (
    check_choice,
    check_finite,
    check_float,
    check_min_size,
    check_ndim,
    check_positive,
)
from .surrogate import upcast_half

BACKENDS = ("auto", "torchsort", "pairwise")

#: Default ``regularization_strength`` of each backend, for inputs of unit standard deviation
#: (what :func:`reloss.soft_spearman` feeds in). Both keep ``|rho_soft - rho_exact|`` well under
#: 0.01 for n >= 256 and give every input a non-negligible gradient (``tools/benchmarks/rank.py``).
#: The two backends soften in different ways (pairwise: a sigmoid of width s around each value;
#: torchsort: values pooled where the ranks would rise faster than 1/s per unit of x), so one
#: number does not mean exactly the same for both.
DEFAULT_STRENGTH = {"pairwise": 0.1, "torchsort": 1.0}

# On a GPU, the pairwise form was faster than torchsort's CUDA kernel at every size measured up to
# n = 4096 (an H200; docs/benchmark_rank_h200.md). Beyond that, or when its (B, n, n) work
# matrix would exceed this many elements, auto prefers torchsort's kernel.
_PAIRWISE_GPU_MAX_N = 4096
_PAIRWISE_MAX_ELEMENTS = 1 << 28

_warned = set()


def _warn_once(key, message):
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def torchsort_available(device_type: str = "cpu") -> bool:
    """Whether torchsort is importable and has a kernel for ``device_type`` ('cpu' or 'cuda')."""
    if importlib.util.find_spec("torchsort") is None:
        return False
    if device_type == "cpu":
        return True
    return device_type == "cuda" and importlib.util.find_spec("torchsort.isotonic_cuda") is not None


def resolve_backend(backend: str, x: torch.Tensor) -> str:
    """The backend that ``soft_rank(x, backend=backend)`` will run: 'torchsort' or 'pairwise'."""
    check_choice("backend", backend, BACKENDS)
    if backend == "pairwise":
        return "pairwise"
    batch, n = x.shape
    on_cpu = x.device.type == "cpu"
    if backend == "auto" and not on_cpu and n <= _PAIRWISE_GPU_MAX_N \
            and batch * n * n <= _PAIRWISE_MAX_ELEMENTS:
        return "pairwise"
    if torchsort_available(x.device.type):
        return "torchsort"
    if importlib.util.find_spec("torchsort") is None:
        reason = "torchsort is not installed"
    else:
        reason = f"torchsort has no kernel for device '{x.device.type}' (it was built without one)"
    _warn_once(reason, f"soft ranks: {reason}; using the 'pairwise' backend instead.")
    return "pairwise"


def _pairwise_rank(x, strength):
    diff = (x.unsqueeze(-1) - x.unsqueeze(-2)) / strength
    return torch.sigmoid(diff).sum(-1) + 0.5


def _torchsort_rank(x, strength):
    import torchsort

    # Ranks scaled to [0, 1] (epsilon / n) make the strength independent of n, like pairwise's.
    epsilon = strength / x.shape[-1]
    return torchsort.soft_rank(x, regularization="l2", regularization_strength=epsilon)


_RANKERS = {"pairwise": _pairwise_rank, "torchsort": _torchsort_rank}


def soft_rank(x: torch.Tensor, regularization_strength: float | None = None,
              backend: str = "auto") -> torch.Tensor:
    """Differentiable ranks of each row of ``x``, from 1 (smallest) to n (largest).

    Args:
        x (Tensor): (B, n) floating-point values, on any device. float16 and bfloat16 inputs are
            ranked in float32 and the ranks returned in the input dtype.
        regularization_strength (float, optional): how soft the ranks are, in the units of
            ``x``. 'pairwise': the sigmoid's temperature s. 'torchsort': torchsort's l2
            regularization applied to ranks scaled to [0, 1] (epsilon = s / n). Either way, as it
            goes to 0 the result tends to the exact ranks (ties averaged). None takes
            ``DEFAULT_STRENGTH[backend]``, calibrated for inputs of standard deviation 1.
        backend (str): 'auto', 'torchsort' or 'pairwise'. A missing torchsort, or one without a
            kernel for ``x``'s device, falls back to 'pairwise' with one warning.

    Returns:
        Tensor: (B, n) soft ranks, dtype and device of ``x``. Each row sums to n (n + 1) / 2.

    Note:
        B is the number of independent rows, n the number of values ranked in each.
    """
    check_float("x", x)
    check_ndim("x", x, (2,), "2-D (B, n)")
    check_min_size("x", x, -1, 2, "n")
    check_finite("x", x)
    name = resolve_backend(backend, x)
    if regularization_strength is not None:
        check_positive("regularization_strength", regularization_strength)
    return soft_rank_unchecked(x, regularization_strength, name)


def soft_rank_unchecked(x: torch.Tensor, strength: float | None, backend: str) -> torch.Tensor:
    """:func:`soft_rank` for callers that have checked ``x`` and resolved the backend (no check
    reads the values, so nothing waits for an accelerator); half precision is ranked in
    float32."""
    if strength is None:
        strength = DEFAULT_STRENGTH[backend]
    return _RANKERS[backend](upcast_half(x), strength).to(x.dtype)
