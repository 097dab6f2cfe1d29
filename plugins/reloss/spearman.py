"""Spearman rank correlation: exact (ties averaged, like scipy) and soft (differentiable)."""
from __future__ import annotations

import torch

from ._validate import (
    check_finite,
    check_float,
    check_min_size,
    check_ndim,
    check_positive,
    check_same_shape,
    check_tensor,
)
from .rank import resolve_backend, soft_rank_unchecked
from .surrogate import upcast_half


def exact_rank(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Ranks from 1 to n along ``dim``; tied values get the average of their ranks.

    Not differentiable. Returns float64 when ``x`` is float64, float32 otherwise.
    """
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    rows = x.movedim(dim, -1).contiguous()
    if rows.dtype == torch.bool:
        rows = rows.to(torch.uint8)
    ordered = rows.sort(dim=-1).values
    # A value's tie group spans positions [below, below_or_equal) of the sorted row: its average
    # rank is the mean of below + 1 .. below_or_equal.
    below = torch.searchsorted(ordered, rows)
    below_or_equal = torch.searchsorted(ordered, rows, right=True)
    return ((below + below_or_equal + 1).to(dtype) / 2).movedim(-1, dim)


def pearson(a: torch.Tensor, b: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Pearson correlation along ``dim``; 0 where either side is constant (zero variance)."""
    a = a - a.mean(dim, keepdim=True)
    b = b - b.mean(dim, keepdim=True)
    denominator = (a.square().sum(dim) * b.square().sum(dim)).sqrt()
    tiny = torch.finfo(denominator.dtype).tiny
    return (a * b).sum(dim) / denominator.clamp_min(tiny)


def _check_pair(name_a, a, name_b, b, dim):
    check_tensor(name_a, a)
    check_tensor(name_b, b)
    check_same_shape(name_a, a, name_b, b)
    if a.dim() == 0:
        raise ValueError(f"'{name_a}' should have at least 1 dimension but got a 0-D tensor")
    check_min_size(name_a, a, dim, 2, "n")
    check_finite(name_a, a)
    check_finite(name_b, b)


def spearman(a: torch.Tensor, b: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Exact Spearman rank correlation of ``a`` and ``b`` along ``dim``, batched over the rest.

    Equals ``scipy.stats.spearmanr`` (ties get average ranks). Where either side is constant
    along ``dim`` the correlation is undefined (scipy returns NaN); here it is defined as 0.

    Args:
        a (Tensor): values of any real dtype, at least 2 along ``dim``.
        b (Tensor): same shape as ``a``.
        dim (int): the dimension to correlate along.

    Returns:
        Tensor: ``a.shape`` without ``dim``; float64 if ``a`` or ``b`` is float64, else float32.
    """
    _check_pair("a", a, "b", b, dim)
    ranks_a, ranks_b = exact_rank(a, dim), exact_rank(b, dim)
    dtype = torch.promote_types(ranks_a.dtype, ranks_b.dtype)
    return pearson(ranks_a.to(dtype), ranks_b.to(dtype), dim)


class _Standardize(torch.autograd.Function):
    """(x - mean) / std along the last dim, with a hand-written backward (fewer small kernels)."""

    @staticmethod
    def forward(ctx, x):
        centered = x - x.mean(-1, keepdim=True)
        scale = centered.square().mean(-1, keepdim=True).sqrt().clamp_min(torch.finfo(x.dtype).tiny)
        z = centered / scale
        ctx.save_for_backward(z, scale)
        return z

    @staticmethod
    def backward(ctx, grad):
        z, scale = ctx.saved_tensors
        grad = grad - grad.mean(-1, keepdim=True) - (grad * z).mean(-1, keepdim=True) * z
        return grad / scale


class _CorrelateWithFixed(torch.autograd.Function):
    """Pearson correlation of ``x`` with a constant ``target``, both (B, n), differentiable in x.

    Rows where either side is constant give 0 (and a zero gradient).
    """

    @staticmethod
    def forward(ctx, x, target):
        tiny = torch.finfo(x.dtype).tiny
        target = target - target.mean(-1, keepdim=True)
        target = target / target.norm(dim=-1, keepdim=True).clamp_min(tiny)
        x = x - x.mean(-1, keepdim=True)
        norm = x.norm(dim=-1, keepdim=True).clamp_min(tiny)
        unit = x / norm
        rho = (unit * target).sum(-1)
        ctx.save_for_backward(unit, target, norm, rho)
        return rho

    @staticmethod
    def backward(ctx, grad):
        unit, target, norm, rho = ctx.saved_tensors
        grad_x = (target - rho.unsqueeze(-1) * unit) * (grad.unsqueeze(-1) / norm)
        return grad_x, None


def correlate_with_fixed(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each row of ``x`` (B, n) with the constant ``target`` (B, n),
    differentiable in ``x`` only: (B,); 0 where either row is constant. Soft Spearman is this on
    soft ranks and exact ranks."""
    return _CorrelateWithFixed.apply(x, target)


def soft_spearman(pred: torch.Tensor, target: torch.Tensor,
                  regularization_strength: float | None = None,
                  backend: str = "auto") -> torch.Tensor:
    """Differentiable Spearman correlation: soft ranks of ``pred``, exact ranks of ``target``.

    Each row of ``pred`` is divided by its standard deviation before soft ranking (ranks do not
    change), so ``regularization_strength`` means the same at any scale of ``pred``. Gradients
    flow into ``pred`` only; ``target`` is ranked exactly and may be of any real dtype.

    Args:
        pred (Tensor): (n,) or (B, n) floating-point values.
        target (Tensor): same shape as ``pred``.
        regularization_strength (float, optional): softness of the ranks of the standardised
            ``pred``; see :func:`reloss.soft_rank`. Smaller is closer to the exact correlation.
            None takes the backend's default.
        backend (str): 'auto', 'torchsort' or 'pairwise'.

    Returns:
        Tensor: () for 1-D input, (B,) for 2-D input, dtype of ``pred``. Rows where ``pred`` or
        ``target`` is constant give 0.

    Note:
        B is the number of independent correlations, n the number of samples in each.
    """
    check_float("pred", pred)
    check_ndim("pred", pred, (1, 2), "1-D (n,) or 2-D (B, n)")
    _check_pair("pred", pred, "target", target, -1)
    rows = pred if pred.dim() == 2 else pred.unsqueeze(0)
    name = resolve_backend(backend, rows)
    if regularization_strength is not None:
        check_positive("regularization_strength", regularization_strength)
    ranks = soft_rank_unchecked(_Standardize.apply(upcast_half(rows)), regularization_strength,
                                name)
    target_ranks = exact_rank(target.detach().reshape(rows.shape)).to(ranks.dtype)
    rho = correlate_with_fixed(ranks, target_ranks)
    return rho.reshape(pred.shape[:-1]).to(pred.dtype)
