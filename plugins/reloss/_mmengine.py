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

Also the config handling that ``tools/train.py`` and ``tools/test.py`` share: :func:`load_config`
and :func:`prepare_cpu_distributed`.
"""
import os.path as osp

import numpy
import torch
from mmengine.config import Config
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


def load_config(config, cfg_options=None, launcher="none", work_dir=None):
    """An OpenMMLab config file with ``--cfg-options``, ``--launcher`` and ``--work-dir`` applied;
    the work dir defaults to the config's own, else work_dirs/<config name>."""
    if not osp.isfile(config):
        raise FileNotFoundError(f"config {config!r}: no such file")
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    cfg.launcher = launcher
    cfg.work_dir = work_dir or cfg.get("work_dir") or osp.join(
        "work_dirs", osp.splitext(osp.basename(config))[0])
    return cfg


def prepare_cpu_distributed(cfg):
    """mmengine 0.10's 'pytorch' launcher assumes GPUs: it calls torch.cuda.set_device and gives
    DDP device_ids. On a machine without a GPU, join the process group that torchrun set up with
    gloo first (mmengine then uses it as it is) and wrap the model in DDP without device_ids."""
    import torch.distributed as dist

    if cfg.launcher != "pytorch" or torch.cuda.is_available():
        return
    if not dist.is_initialized():
        backend = cfg.get("env_cfg", {}).get("dist_cfg", {}).get("backend", "gloo")
        dist.init_process_group(backend="gloo" if backend == "nccl" else backend)
    wrapper = cfg.get("model_wrapper_cfg") or dict(
        type="MMDistributedDataParallel", broadcast_buffers=False,
        find_unused_parameters=cfg.get("find_unused_parameters", False))
    wrapper.setdefault("device_ids", None)
    cfg.model_wrapper_cfg = wrapper


def finish_distributed():
    """Leave the process group, if any, while the interpreter is still whole. mmengine's Runner
    never destroys it, and a gloo process group left to the interpreter's exit can abort the
    process (SIGABRT, "terminate called without an active exception") when its worker threads
    are torn down after Python: a rare race that fails a finished run (pytorch/pytorch#190489)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
