"""Learning a surrogate: maximise the Spearman correlation of -loss with the metric over chunks.

objective = -rho + penalty_weight * P, where

- rho is the soft Spearman correlation of -L(chunk) with M(chunk) over a batch of chunks, averaged
  with the same correlation over the batch's chunks in the late-training band of the metric;
- P is a gradient penalty in the spirit of WGAN-GP (the ReLoss authors use
  (||dL/d pred|| - 1)^2 with weight 10): per chunk, the log of the ratio between the norm of the
  surrogate's gradient and the norm of the original loss's gradient with respect to the chunk's
  predictions, penalised (squared) where it leaves [-log tolerance, log tolerance]. The surrogate
  can neither go flat where the original loss still teaches nor turn spiky, its gradients keep
  the original loss's scale (so the original learning rate carries over), and between those
  bounds its shape is free. The authors' fixed target of 1 ranks about as well here, but gives
  gradients an order of magnitude larger than cross-entropy's.

The surrogates read predictions through a few features per unit (see :mod:`reloss.surrogate`),
so the data are prepared once: per unit its features, its weight, and the Gram matrix G_u of the
features' gradients with respect to the unit's predictions. Then
||d L / d pred||^2 = sum_u a_u^T G_u a_u with a_u = d L / d features_u, which is exact and keeps
pretraining independent of the size of the raw predictions (1000-class logits, full heatmaps,
32k-token vocabularies).
"""
from __future__ import annotations

import copy
import math
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from .spearman import soft_spearman, spearman
from .surrogate import Surrogate
from .tasks import Task, get_task


def prepare(surrogate: Surrogate, task: Task, pred: torch.Tensor, target: torch.Tensor,
            weight: torch.Tensor | None = None, metric: Callable | None = None) -> dict:
    """Features, unit weights, Gram matrices, metric and baseline loss of raw chunks.

    Args:
        surrogate: the net whose ``feature_gram`` (features and their Gram matrices) is used.
        task (Task): gives the default metric and the baseline loss.
        pred, target, weight: raw chunks with leading dims (S, N); ``weight`` is None for tasks
            without weights.
        metric: overrides ``task.metric``; must return (S,) finite values.

    Returns:
        dict: features (S, N, U, F), weights (S, N, U), gram (S, N, U, F, F), metric (S,),
        baseline (S,) and baseline_grad_norm (S,): the original loss and the norm of its gradient
        with respect to the chunk's predictions.
    """
    chunks, size = pred.shape[:2]
    extra = () if weight is None else (weight,)
    metric_fn = metric or task.metric
    with torch.no_grad():
        metric_values = torch.as_tensor(metric_fn(pred, target, *extra))
    if metric_values.shape != (chunks,):
        raise ValueError(f"the metric should return one value per chunk, shape ({chunks},), but "
                         f"returned shape {tuple(metric_values.shape)}")
    if not torch.isfinite(metric_values).all():
        raise ValueError("the metric returned NaN or Inf values")
    # The original loss and the norm of its gradient with respect to each chunk's predictions.
    leaf = pred.detach().float().requires_grad_()
    baseline = task.original_loss(leaf, target, *extra)
    (baseline_grad,) = torch.autograd.grad(baseline.sum(), leaf)
    baseline_grad_norm = baseline_grad.flatten(1).norm(dim=-1).double()
    flat_extra = tuple(x.flatten(0, 1) for x in extra)
    inputs = {key: value.flatten(0, 1) for key, value in surrogate.chunk_inputs(pred, target
                                                                                ).items()}
    features, weights, gram = surrogate.feature_gram(pred.flatten(0, 1), target.flatten(0, 1),
                                                     *flat_extra, **inputs)
    units = features.shape[1]
    shape = (chunks, size, units)
    return dict(features=features.view(*shape, -1), weights=weights.view(shape),
                gram=gram.view(*shape, *gram.shape[-2:]), metric=metric_values.double(),
                baseline=baseline.detach().double(), baseline_grad_norm=baseline_grad_norm)


def concatenate(parts):
    """Concatenate prepared data along chunks, padding the unit dimension with weight 0."""
    units = max(p["features"].shape[2] for p in parts)
    out = {}
    for key in parts[0]:
        tensors = []
        for p in parts:
            t = p[key]
            if key in ("features", "weights", "gram") and t.shape[2] < units:
                pad = [0, 0] * (t.dim() - 3) + [0, units - t.shape[2]]
                t = F.pad(t, pad)
            tensors.append(t)
        out[key] = torch.cat(tensors)
    return out


def select(data, index):
    return {key: value[index] for key, value in data.items()}


def _chunk_loss(surrogate, features, weights):
    """Chunk losses (B,) from prepared features (B, N, U, F): the mean over counted samples."""
    batch, size = features.shape[:2]
    values = surrogate.head(features.flatten(0, 1), weights.flatten(0, 1)).view(batch, size)
    counted = (weights.sum(-1) > 0).to(values.dtype)
    return (values * counted).sum(-1) / counted.sum(-1).clamp_min(1)


def _loss_and_squared_gradient(surrogate, batch, create_graph=False):
    """Chunk losses (B,) and ||d loss / d raw predictions||^2 per chunk (B,), from the Gram
    matrices: sum over units of a_u^T G_u a_u with a_u = d loss / d features_u."""
    features = batch["features"].detach().requires_grad_()
    # The penalty differentiates twice; only the math attention kernel supports that everywhere.
    with sdpa_kernel(SDPBackend.MATH):
        chunk_loss = _chunk_loss(surrogate, features, batch["weights"])
    (grad,) = torch.autograd.grad(chunk_loss.sum(), features, create_graph=create_graph)
    return chunk_loss, torch.einsum("bnuf,bnufg,bnug->b", grad, batch["gram"], grad)


PENALTIES = ("relative", "unit")


def objective(surrogate: Surrogate, batch: dict, band: tuple[float, float] | None = None,
              penalty_weight: float = 10.0, tolerance: float | tuple[float, float] = 4.0,
              penalty="relative", regularization_strength=None):
    """(objective, soft rho, penalty) on a batch of prepared chunks.

    ``penalty`` is 'relative' (the default, see the module's docstring) or 'unit', the authors'
    (||dL/d pred|| - 1)^2 per chunk, kept for comparison. ``tolerance`` is one factor, or two:
    (below, above) the original loss's gradient norm.

    With a ``band``, rho is the mean of the soft Spearman over all the batch's chunks and over
    those whose metric lies in the band (when there are at least 8): within the band the loss
    values are close together, and a correlation over the whole range would blur their order.
    """
    chunk_loss, squared = _loss_and_squared_gradient(surrogate, batch, create_graph=True)
    metric = batch["metric"].to(chunk_loss.dtype)
    rho = soft_spearman(-chunk_loss, metric, regularization_strength)
    if band is not None:
        in_band = (metric >= band[0]) & (metric <= band[1])
        if int(in_band.sum()) >= 8:
            rho_band = soft_spearman(-chunk_loss[in_band], metric[in_band],
                                     regularization_strength)
            rho = (rho + rho_band) / 2
    if penalty == "unit":  # the authors' form
        value = ((squared + 1e-24).sqrt() - 1).square().mean()
    else:
        target = batch["baseline_grad_norm"].to(squared.dtype).clamp_min(1e-12)
        log_ratio = 0.5 * (squared + 1e-24).log() - target.log()
        below, above = tolerance if isinstance(tolerance, (tuple, list)) else (tolerance,) * 2
        excess = torch.maximum(log_ratio - math.log(above), -log_ratio - math.log(below))
        value = excess.clamp_min(0).square().mean()
    return -rho + penalty_weight * value, rho, value


@torch.no_grad()
def chunk_losses(surrogate: Surrogate, data: dict, batch: int = 512) -> torch.Tensor:
    """The surrogate's loss for every chunk of prepared data, (S,) float64."""
    out = []
    for start in range(0, data["metric"].shape[0], batch):
        part = slice(start, start + batch)
        out.append(_chunk_loss(surrogate, data["features"][part], data["weights"][part]))
    return torch.cat(out).double()


def correlations(losses, metric, band):
    """Spearman(-loss, metric) on all chunks and on those whose metric lies in ``band`` (None:
    no band)."""
    full = float(spearman(-losses, metric))
    if band is None:
        return dict(full=full, band=None, chunks=int(metric.numel()), band_chunks=0)
    in_band = (metric >= band[0]) & (metric <= band[1])
    banded = float(spearman(-losses[in_band], metric[in_band])) if in_band.sum() >= 2 else None
    return dict(full=full, band=banded, chunks=int(metric.numel()), band_chunks=int(in_band.sum()))


def strata_of(data):
    """The chunk indices of each stratum of prepared ``data`` (its optional ``stratum`` (S,)
    integer key; one stratum of all chunks without it), in the order of the stratum numbers."""
    stratum = data.get("stratum")
    if stratum is None:
        return [torch.arange(data["metric"].shape[0])]
    return [torch.nonzero(stratum == s).flatten() for s in torch.unique(stratum)]


def stratified_correlations(surrogate, data, band):
    """:func:`correlations` taken within each stratum of ``data`` (see :func:`strata_of`) and
    averaged over them: chunks of different strata (e.g. models of different datasets, whose
    losses and metrics live on different scales) are never compared."""
    losses = chunk_losses(surrogate, data)
    parts = [correlations(losses[i], data["metric"][i], band) for i in strata_of(data)]
    if len(parts) == 1:
        return parts[0]
    bands = [p["band"] for p in parts if p["band"] is not None]
    return dict(full=sum(p["full"] for p in parts) / len(parts),
                band=sum(bands) / len(bands) if bands else None,
                chunks=sum(p["chunks"] for p in parts),
                band_chunks=sum(p["band_chunks"] for p in parts))


def gradient_norms(surrogate, data, batch=512):
    """||d L(chunk) / d pred(chunk)|| of the surrogate for every chunk of prepared data, (S,)."""
    out = []
    for start in range(0, data["metric"].shape[0], batch):
        part = select(data, slice(start, start + batch))
        out.append(_loss_and_squared_gradient(surrogate, part)[1].detach().sqrt())
    return torch.cat(out).double()


def evaluate(surrogate: Surrogate, data: dict, band: tuple[float, float]) -> dict:
    """Held-out figures of the surrogate and of the original loss: Spearman correlations, and the
    median and 10th percentile over chunks of the ratio of the surrogate's gradient norm to the
    original loss's (a low 10th percentile means chunks where the surrogate is flat)."""
    ratio = gradient_norms(surrogate, data) / data["baseline_grad_norm"].clamp_min(1e-30)
    return dict(surrogate=dict(correlations(chunk_losses(surrogate, data), data["metric"], band),
                               gradient_ratio=float(ratio.median()),
                               gradient_ratio_p10=float(ratio.quantile(0.1))),
                baseline=correlations(data["baseline"], data["metric"], band))


def _selection_score(figures):
    full, band = figures["full"], figures["band"]
    return full if band is None else (full + band) / 2


def pretrain(surrogate: Surrogate, train: dict, val: dict, band: tuple[float, float],
             steps: int = 2000, chunks_per_step: int = 256, lr: float = 1e-2,
             weight_decay: float = 1e-3, penalty_weight: float = 10.0,
             tolerance: float | tuple[float, float] = 4.0, penalty: str = "relative",
             warmup: int = 50, eval_every: int = 50, patience: int = 8, seed: int = 0,
             progress: Callable[[int, dict], None] | None = None) -> list[dict]:
    """Learn ``surrogate``'s head in place on prepared ``train`` chunks; returns a history.

    Adam (lr 0.01 with cosine decay, weight decay 1e-3, as the authors); each step draws
    ``chunks_per_step`` chunks (without replacement within an epoch) and takes the objective over
    them. Every ``eval_every`` steps the exact Spearman on ``val`` chunks is measured (the mean of
    the full-range and the late-band figure); training stops after ``patience`` evaluations
    without improvement and the best weights are kept. Everything is seeded by ``seed``.

    Data with a ``stratum`` key (S,) (see :func:`strata_of`) is ranked within strata only: each
    step draws its chunks from one stratum, the strata taking turns, and the validation figure
    is the mean over ``val``'s strata. ``band`` None ranks over the whole range only.

    The penalty weight ramps up linearly over the first ``warmup`` steps: a freshly initialised
    net may rank the wrong way round, and turning it round passes through a flat loss, which the
    full penalty would forbid.

    Args:
        progress: optional callable ``progress(step, info_dict)`` called after each step.
    """
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(surrogate.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    strata = strata_of(train)
    orders = [members[torch.randperm(members.numel(), generator=generator)] for members in strata]
    cursors = [0] * len(strata)
    best, best_state, waited, history = float("-inf"), None, 0, []
    for step in range(1, steps + 1):
        turn = (step - 1) % len(strata)
        members = strata[turn]
        if cursors[turn] + chunks_per_step > members.numel():  # a stratum smaller: all of it
            orders[turn] = members[torch.randperm(members.numel(), generator=generator)]
            cursors[turn] = 0
        index = orders[turn][cursors[turn]:cursors[turn] + chunks_per_step]
        cursors[turn] += chunks_per_step
        surrogate.train()
        weight = penalty_weight * min(1.0, step / warmup) if warmup else penalty_weight
        loss, rho, value = objective(surrogate, select(train, index), band, weight, tolerance,
                                     penalty)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        info = dict(step=step, rho=rho.item(), penalty=value.item())
        if step % eval_every == 0 or step == steps:
            surrogate.eval()
            figures = stratified_correlations(surrogate, val, band)
            info.update(val_full=figures["full"], val_band=figures["band"])
            score = _selection_score(figures)
            if score > best:
                best, best_state, waited = score, copy.deepcopy(surrogate.state_dict()), 0
                info["best"] = True
            else:
                waited += 1
            history.append(info)
        if progress is not None:
            progress(step, info)
        if waited >= patience:
            break
    surrogate.load_state_dict(best_state)
    surrogate.eval()
    return history


def _split(total, parts):
    """``total`` as ``parts`` near-equal non-negative counts."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def synthetic_chunks(task: str, num_chunks: int, generator: torch.Generator | None,
                     chunk_size: int | None = None, batch: int = 64,
                     surrogate: Surrogate | type | None = None):
    """Raw synthetic chunks for ``task``: yields (pred, target, weight) of <= ``batch`` chunks,
    weight None for tasks without weights. The chunks are shared out evenly over the task's
    ``sample_kinds`` (e.g. 10, 100 and 1000 classes for 'cls'). A ``surrogate`` (class or
    instance) that names its own ``sample`` and ``sample_kinds`` (a class-aware one learns on
    long-tailed chunks) is given those instead."""
    spec = get_task(task)
    size = chunk_size or spec.chunk_size
    sample = getattr(surrogate, "sample", None) or spec.sample
    kinds = getattr(surrogate, "sample_kinds", None) or spec.sample_kinds
    for kind, count in zip(kinds, _split(num_chunks, len(kinds)), strict=True):
        for n in _split(count, -(-count // batch)) if count else []:
            out = sample(n, size, generator=generator, **kind)
            yield out if len(out) == 3 else (*out, None)


def prepare_batches(surrogate: Surrogate, task: str, batches: Iterable[tuple],
                    metric: Callable | None = None) -> dict:
    """``prepare`` over an iterable of raw (pred, target, weight) batches, concatenated."""
    spec = get_task(task)
    return concatenate([prepare(surrogate, spec, pred, target, weight, metric)
                        for pred, target, weight in batches])
