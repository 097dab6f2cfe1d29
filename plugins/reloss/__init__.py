"""reloss: learned metric-surrogate losses (Relational Surrogate Loss Learning, ICLR 2022).

The core imports torch only; the toolkit adapters live in their own modules and are imported by
the toolkits' configs or plugin mechanisms.
"""
from .checkpoint import load_surrogate, save_surrogate
from .rank import BACKENDS, DEFAULT_STRENGTH, resolve_backend, soft_rank, torchsort_available
from .spearman import exact_rank, pearson, soft_spearman, spearman
from .surrogates import ClassificationSurrogate, PoseSurrogate, SequenceSurrogate

__version__ = "0.1.0"

__all__ = [
    "BACKENDS", "DEFAULT_STRENGTH", "ClassificationSurrogate", "PoseSurrogate",
    "SequenceSurrogate", "exact_rank", "load_surrogate", "pearson", "resolve_backend",
    "save_surrogate", "soft_rank", "soft_spearman", "spearman", "torchsort_available",
]
