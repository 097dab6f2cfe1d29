"""Train a model from an OpenMMLab config (mmpretrain or mmpose) with mmengine's Runner.

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CHECKPOINT]] [--amp]
                          [--cfg-options KEY=VALUE ...] [--launcher none|pytorch|slurm]

One GPU: ``python tools/train.py CONFIG``; several: ``tools/dist_train.sh CONFIG GPUS``
(torchrun); a slurm cluster: ``tools/slurm_train.sh PARTITION JOB CONFIG``.
"""
import argparse
import os
import os.path as osp

import torch
from mmengine.config import Config, DictAction
from mmengine.runner import Runner


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


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n", 2)[2])
    parser.add_argument("config", help="config file")
    parser.add_argument("--work-dir", help="where logs and checkpoints go (default "
                                           "work_dirs/<config name>)")
    parser.add_argument("--resume", nargs="?", const="auto", metavar="CHECKPOINT",
                        help="resume from CHECKPOINT, or from the latest one in the work dir")
    parser.add_argument("--amp", action="store_true", help="automatic mixed precision")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, metavar="KEY=VALUE",
                        help="override config entries, e.g. train_cfg.max_epochs=1")
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    return parser, args


def build_config(parser, args):
    """The config with the command line's options applied."""
    try:
        cfg = load_config(args.config, args.cfg_options, args.launcher, args.work_dir)
    except FileNotFoundError as error:
        parser.error(str(error))
    if args.amp:
        wrapper = cfg.optim_wrapper.get("type", "OptimWrapper")
        if wrapper not in ("OptimWrapper", "AmpOptimWrapper"):
            parser.error(f"--amp needs an OptimWrapper or AmpOptimWrapper but the config has "
                         f"{wrapper}")
        cfg.optim_wrapper.type = "AmpOptimWrapper"
        cfg.optim_wrapper.setdefault("loss_scale", "dynamic")
    if args.resume == "auto":
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        cfg.resume, cfg.load_from = True, args.resume
    return cfg


def build_runner(argv=None):
    """The Runner for a command line, ready to train."""
    parser, args = parse_args(argv)
    cfg = build_config(parser, args)
    prepare_cpu_distributed(cfg)
    return Runner.from_cfg(cfg)


def main(argv=None):
    runner = build_runner(argv)
    try:
        runner.train()
    finally:
        finish_distributed()
    return runner


if __name__ == "__main__":
    main()
