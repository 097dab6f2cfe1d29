"""Metrics as batched tensor code: one value per chunk or sentence (each task module picks its own).

Each function takes a leading batch of chunks (S) and is not differentiable (argmax inside).
"""
from __future__ import annotations

import torch

from ._validate import check_class_indices, check_ndim, check_tensor

MAX_NGRAM_ORDER = 4


def _chunk_labels(logits, labels):
    """Checks (S, N, C) ``logits`` and (S, N) or (S, N, C) ``labels``; the (S, N) labels, the
    soft ones replaced by their argmax."""
    check_ndim("logits", logits, (3,), "3-D (S, N, C)")
    check_tensor("labels", labels)
    if labels.shape != logits.shape[:2] and labels.shape != logits.shape:
        raise ValueError(f"'labels' should have shape (S, N) = {tuple(logits.shape[:2])} (or "
                         f"(S, N, C) = {tuple(logits.shape)} soft labels) but got "
                         f"{tuple(labels.shape)}")
    return labels.argmax(-1) if labels.dim() == 3 else labels


def _output_dtype(logits):
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


def chunk_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Top-1 accuracy of each chunk of predictions.

    Args:
        logits (Tensor): (S, N, C) class scores (logits or probabilities).
        labels (Tensor): (S, N) class indices, or (S, N, C) soft labels (their argmax counts).

    Returns:
        Tensor: (S,) accuracies in [0, 1], float32 (float64 for float64 logits).

    Note:
        S is the number of chunks, N the predictions in each, C the number of classes.
    """
    labels = _chunk_labels(logits, labels)
    return (logits.argmax(-1) == labels).to(_output_dtype(logits)).mean(-1)


def _confusion_counts(logits, labels):
    """Per chunk and class: true positives, predictions and labels of the class, each (S, C) in
    the output dtype (the diagonal, column sums and row sums of each chunk's confusion matrix)."""
    labels = _chunk_labels(logits, labels)
    classes = logits.shape[-1]
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"'labels' should be (S, N) integer class indices or (S, N, C) float soft "
                        f"labels but got dtype {labels.dtype} {tuple(labels.shape)}")
    check_class_indices("labels", labels, classes)
    labels = labels.long()
    predicted = logits.argmax(-1)
    dtype = _output_dtype(logits)
    counts = torch.zeros(labels.shape[0], classes, dtype=dtype, device=logits.device)
    ones = torch.ones(labels.shape, dtype=dtype, device=logits.device)
    true_positives = counts.scatter_add(1, labels, (predicted == labels).to(dtype))
    predictions = counts.scatter_add(1, predicted, ones)
    actual = counts.scatter_add(1, labels, ones)
    return true_positives, predictions, actual


def chunk_macro_f1(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Macro-averaged F1 of each chunk: the mean of the per-class F1 over the classes that occur
    in the chunk's labels or predictions, as scikit-learn's
    ``f1_score(labels, predicted, average='macro', zero_division=0)``.

    Args:
        logits (Tensor): (S, N, C) class scores (logits or probabilities).
        labels (Tensor): (S, N) integer class indices in [0, C), or (S, N, C) soft labels (their
            argmax counts).

    Returns:
        Tensor: (S,) macro F1 in [0, 1], float32 (float64 for float64 logits); 0 for N = 0.

    Note:
        S is the number of chunks, N the predictions in each, C the number of classes.
    """
    true_positives, predictions, actual = _confusion_counts(logits, labels)
    occurring = predictions + actual
    f1 = 2 * true_positives / occurring.clamp_min(1)  # 2 TP / (2 TP + FP + FN)
    present = occurring > 0
    return (f1 * present).sum(-1) / present.sum(-1).clamp_min(1)


def chunk_balanced_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Balanced accuracy of each chunk: the mean recall over the classes present in the chunk's
    labels, as scikit-learn's ``balanced_accuracy_score(labels, predicted)`` (adjusted=False).

    Args:
        logits (Tensor): (S, N, C) class scores (logits or probabilities).
        labels (Tensor): (S, N) integer class indices in [0, C), or (S, N, C) soft labels (their
            argmax counts).

    Returns:
        Tensor: (S,) balanced accuracies in [0, 1], float32 (float64 for float64 logits); 0 for
        N = 0.

    Note:
        S is the number of chunks, N the predictions in each, C the number of classes.
    """
    true_positives, _, actual = _confusion_counts(logits, labels)
    recall = true_positives / actual.clamp_min(1)
    present = actual > 0
    return (recall * present).sum(-1) / present.sum(-1).clamp_min(1)


def heatmap_argmax(heatmaps: torch.Tensor) -> torch.Tensor:
    """(x, y) of each heatmap's maximum, (..., 2); (-1, -1) where the maximum is <= 0.

    The first maximum in row-major order wins ties, and the -1 convention is mmpose's
    ``get_heatmap_maximum``'s, so that :func:`pck_accuracy` agrees with ``pose_pck_accuracy``.
    """
    height, width = heatmaps.shape[-2:]
    values, index = heatmaps.flatten(-2).max(-1)
    locations = torch.stack((index % width, index // width), -1).to(torch.float32)
    return torch.where((values > 0).unsqueeze(-1), locations, torch.full_like(locations, -1.0))


def pck_accuracy(heatmaps: torch.Tensor, target_heatmaps: torch.Tensor, mask: torch.Tensor,
                 thr: float = 0.05) -> torch.Tensor:
    """PCK of heatmap argmax locations per chunk: what mmpose logs as ``acc_pose``.

    A keypoint is correct when the distance between the argmax of its predicted and target
    heatmaps, normalised by the heatmap size, is below ``thr``. Each keypoint's accuracy is taken
    over the chunk's visible instances; the chunk's value is the mean over keypoints that are
    visible at least once (0 if none is). This is mmpose's ``pose_pck_accuracy`` with its default
    normalisation, including its quirk: x is divided by H and y by W.

    Args:
        heatmaps (Tensor): (S, N, K, H, W) predicted heatmaps.
        target_heatmaps (Tensor): (S, N, K, H, W) target heatmaps.
        mask (Tensor): (S, N, K) bool, True where the keypoint is visible (target weight > 0).
        thr (float): distance threshold.

    Returns:
        Tensor: (S,) float32 accuracies in [0, 1].

    Note:
        S chunks of N instances with K keypoints, on H x W heatmaps.
    """
    check_ndim("heatmaps", heatmaps, (5,), "5-D (S, N, K, H, W)")
    if target_heatmaps.shape != heatmaps.shape:
        raise ValueError(f"'target_heatmaps' should have the shape of 'heatmaps' "
                         f"{tuple(heatmaps.shape)} but got {tuple(target_heatmaps.shape)}")
    if mask.shape != heatmaps.shape[:3]:
        raise ValueError(f"'mask' should have shape (S, N, K) = {tuple(heatmaps.shape[:3])} but "
                         f"got {tuple(mask.shape)}")
    height, width = heatmaps.shape[-2:]
    scale = torch.tensor([height, width], dtype=torch.float32, device=heatmaps.device)
    offset = (heatmap_argmax(heatmaps) - heatmap_argmax(target_heatmaps)) / scale
    correct = (offset.norm(dim=-1) < thr) & mask
    visible = mask.sum(1)  # (S, K)
    per_keypoint = correct.sum(1) / visible.clamp_min(1)
    counted = visible > 0
    return (per_keypoint * counted).sum(-1) / counted.sum(-1).clamp_min(1)


def _ngram_equal(a, b, order):
    """(S, Ta, Tb) bool: the n-gram starting at i in ``a`` equals the one at j in ``b``.

    Positions whose n-gram would run past the end are False.
    """
    length_a, length_b = a.shape[-1] - order + 1, b.shape[-1] - order + 1
    if length_a <= 0 or length_b <= 0:
        return a.new_zeros(a.shape[0], max(length_a, 0), max(length_b, 0), dtype=torch.bool)
    equal = a[:, :length_a, None] == b[:, None, :length_b]
    for k in range(1, order):
        equal &= a[:, k:k + length_a, None] == b[:, None, k:k + length_b]
    return equal


def _check_right_padded(name, tokens, pad):
    is_pad = tokens == pad
    if bool((is_pad[:, :-1] & ~is_pad[:, 1:]).any()):
        raise ValueError(f"'{name}' should be padded on the right only (no token after a pad "
                         f"index {pad}), but a row has a token after padding")
    return (~is_pad).sum(-1)


def bleu_statistics(hypotheses, references, pad, max_order=MAX_NGRAM_ORDER):
    """Clipped n-gram matches, n-gram totals and lengths, each (S, max_order) or (S,)."""
    hyp_len = _check_right_padded("hypotheses", hypotheses, pad)
    ref_len = _check_right_padded("references", references, pad)
    # Padding never matches: give hypotheses and references two values no token has.
    lowest = min(int(hypotheses.min()), int(references.min()), pad) if hypotheses.numel() \
        and references.numel() else pad
    hyp = hypotheses.long().masked_fill(hypotheses == pad, lowest - 1)
    ref = references.long().masked_fill(references == pad, lowest - 2)
    correct, total = [], []
    for order in range(1, max_order + 1):
        starts = torch.arange(max(hyp.shape[-1] - order + 1, 0), device=hyp.device)
        valid = starts < (hyp_len - order + 1).unsqueeze(-1)  # (S, Th)
        hyp_count = _ngram_equal(hyp, hyp, order).sum(-1)  # occurrences in the hypothesis
        ref_count = _ngram_equal(hyp, ref, order).sum(-1)  # occurrences in the reference
        # A distinct n-gram occurring c times in the hypothesis earns min(c, r) matches; share
        # them over its c occurrences.
        clipped = torch.minimum(hyp_count, ref_count) / hyp_count.clamp_min(1)
        correct.append((clipped * valid).sum(-1))
        total.append((hyp_len - order + 1).clamp_min(0))
    return torch.stack(correct, -1).round(), torch.stack(total, -1), hyp_len, ref_len


def sentence_bleu(hypotheses: torch.Tensor, references: torch.Tensor, pad: int = 0,
                  max_order: int = MAX_NGRAM_ORDER) -> torch.Tensor:
    """Sentence-level BLEU (0-100) of token-id sequences, as ``sacrebleu.sentence_bleu``.

    Same as sacrebleu's defaults for one reference: 'exp' smoothing, effective n-gram order,
    brevity penalty, 0 without any matching unigram; tokens are the ids themselves.

    Args:
        hypotheses (Tensor): (S, T) integer token ids, padded on the right with ``pad``.
        references (Tensor): (S, T') integer token ids, padded on the right with ``pad``.
        pad (int): the padding index.

    Returns:
        Tensor: (S,) float64 BLEU scores in [0, 100].
    """
    check_ndim("hypotheses", hypotheses, (2,), "2-D (S, T)")
    check_ndim("references", references, (2,), "2-D (S, T')")
    for name, tokens in (("hypotheses", hypotheses), ("references", references)):
        if tokens.is_floating_point() or tokens.is_complex():
            raise TypeError(f"'{name}' should hold integer token ids but got dtype {tokens.dtype}")
    if hypotheses.shape[0] != references.shape[0]:
        raise ValueError(f"'hypotheses' and 'references' should have the same number of rows but "
                         f"got {hypotheses.shape[0]} and {references.shape[0]}")
    correct, total, hyp_len, ref_len = bleu_statistics(hypotheses, references, pad, max_order)
    correct, total = correct.double(), total.double()
    counted = total > 0  # effective order: orders the hypothesis is long enough for
    missed = (correct == 0) & counted
    smoothing = torch.pow(2.0, missed.double().cumsum(-1))  # 'exp': halve again at each miss
    precision = torch.where(missed, 100.0 / (smoothing * total.clamp_min(1)),
                            100.0 * correct / total.clamp_min(1))
    log_mean = (precision.clamp_min(1e-300).log() * counted).sum(-1) / counted.sum(-1).clamp_min(1)
    hyp_len, ref_len = hyp_len.double(), ref_len.double()
    brevity = torch.where(hyp_len < ref_len, torch.exp(1 - ref_len / hyp_len.clamp_min(1)),
                          torch.ones_like(hyp_len))
    score = brevity * log_mean.exp()
    return torch.where((correct > 0).any(-1) & (hyp_len > 0), score, torch.zeros_like(score))
