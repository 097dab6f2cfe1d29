"""Train a model from an OpenMMLab config (mmpretrain or mmpose) with mmengine's Runner.

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CHECKPOINT]] [--amp]
                          [--cfg-options KEY=VALUE ...] [--launcher none|pytorch|slurm]

One GPU: ``python tools/train.py CONFIG``; several: ``tools/dist_train.sh CONFIG GPUS``
(torchrun); a slurm cluster: ``tools/slurm_train.sh PARTITION JOB CONFIG``.
"""
import argparse
import os

from mmengine.config import DictAction
from mmengine.runner import Runner

from reloss._mmengine import finish_distributed, load_config, prepare_cpu_distributed


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
