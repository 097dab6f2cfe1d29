"""Resuming mmengine 0.10 checkpoints with torch >= 2.6, where ``torch.load`` defaults to
``weights_only=True``: an allowlist of exactly what mmengine's checkpoints hold besides tensors.

Besides tensors, an mmengine checkpoint holds its message hub's ``HistoryBuffer`` objects (numpy
arrays of logged scalars inside). mmengine 0.10.7 also pickles the buffer's statistics functions
(``HistoryBuffer.min`` and co.) by attribute lookup, which needs ``getattr`` itself on the
allowlist, and that would let a checkpoint call any attribute of any allowed object. Those four
functions are restored by ``HistoryBuffer.__setstate__`` anyway, so the buffers written while this
module is imported leave them out and keep only statistics a user registered. Checkpoints written
without it still need ``getattr`` to load; re-save them once, or load them trusting their source.
Imported by the toolkit adapters (``reloss.mmpretrain``, ``reloss.mmpose``).
"""
import numpy
import torch
from mmengine.logging.history_buffer import HistoryBuffer

_BUILT_IN = ("min", "max", "current", "mean")


def _state_without_built_in_statistics(self):
    state = dict(self.__dict__)
    state["statistics_methods"] = {name: method for name, method
                                   in self._statistics_methods.items()
                                   if name not in _BUILT_IN}
    return state


def allow_mmengine_checkpoints():
    """Let ``torch.load(..., weights_only=True)`` read mmengine checkpoints (idempotent)."""
    HistoryBuffer.__getstate__ = _state_without_built_in_statistics
    numpy_types = [numpy.ndarray, numpy.dtype, numpy._core.multiarray._reconstruct,
                   numpy._core.multiarray.scalar]
    numpy_types += [type(numpy.dtype(name)) for name in
                    ("float64", "float32", "float16", "int64", "int32", "int16", "int8",
                     "uint64", "uint32", "uint16", "uint8", "bool")]
    torch.serialization.add_safe_globals([HistoryBuffer, *numpy_types])
