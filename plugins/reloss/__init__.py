"""reloss: learned metric-surrogate losses (Relational Surrogate Loss Learning, ICLR 2022).

The core imports torch only; the toolkit adapters live in their own modules and are imported by
the toolkits' configs or plugin mechanisms.
"""
import importlib.util
import os

from .checkpoint import load_surrogate, save_surrogate
from .metrics import chunk_balanced_accuracy, chunk_macro_f1
from .rank import BACKENDS, DEFAULT_STRENGTH, resolve_backend, soft_rank, torchsort_available
from .spearman import exact_rank, pearson, soft_spearman, spearman
from .surrogate import Surrogate
from .tasks import TASKS, Task, get_task
from .tasks.cls import ClassAwareSurrogate, ClassificationSurrogate, class_priors
from .tasks.nat import SequenceSurrogate, TokenSequenceSurrogate
from .tasks.pose import PoseSurrogate
from .tasks.qa import QARiskSurrogate, QAStepsSurrogate, QASurrogate

__version__ = "0.1.0"


def fairseq_user_dir() -> str:
    """The folder to pass to fairseq's ``--user-dir`` for ``--criterion reloss_nat``: the
    ``fairseq_reloss`` package installed beside ``reloss`` (found without importing it, since
    fairseq refuses a user dir whose module is already imported)."""
    spec = importlib.util.find_spec("fairseq_reloss")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("the 'fairseq_reloss' package that ships with reloss is not "
                                  "installed beside it; reinstall reloss")
    return os.path.dirname(spec.origin)


__all__ = [
    "BACKENDS", "DEFAULT_STRENGTH", "TASKS", "ClassAwareSurrogate", "ClassificationSurrogate",
    "PoseSurrogate", "QARiskSurrogate", "QAStepsSurrogate", "QASurrogate", "SequenceSurrogate",
    "Surrogate", "Task", "TokenSequenceSurrogate", "chunk_balanced_accuracy", "chunk_macro_f1",
    "class_priors", "exact_rank",
    "fairseq_user_dir", "get_task", "load_surrogate", "pearson", "resolve_backend",
    "save_surrogate", "soft_rank", "soft_spearman", "spearman", "torchsort_available",
]
