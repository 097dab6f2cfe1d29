"""A metric the shipped surrogates do not cover, as a user would write one for
``reloss pretrain --metric projects/long_tailed_digits/worst_recall.py:worst_class_recall``."""
import torch


def worst_class_recall(logits, labels):
    """The lowest recall over the classes present in each chunk: logits (S, N, C), labels (S, N)
    -> (S,)."""
    classes = logits.shape[-1]
    right = (logits.argmax(-1) == labels).float()
    hits = torch.zeros(labels.shape[0], classes).scatter_add_(1, labels, right)
    counts = torch.zeros(labels.shape[0], classes).scatter_add_(1, labels, torch.ones_like(right))
    recall = torch.where(counts > 0, hits / counts.clamp_min(1), torch.ones(()))
    return recall.min(-1).values
