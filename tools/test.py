"""Evaluate a trained checkpoint with the test set and metrics of an OpenMMLab config.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--cfg-options KEY=VALUE ...]
                         [--launcher none|pytorch|slurm]
"""
import argparse
import os
import os.path as osp

from mmengine.config import DictAction
from mmengine.runner import Runner

if __package__:
    from .train import finish_distributed, load_config, prepare_cpu_distributed
else:  # run by path, as OpenMMLab's tools are: this folder is on sys.path
    from train import finish_distributed, load_config, prepare_cpu_distributed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config", help="config file")
    parser.add_argument("checkpoint", help="checkpoint file")
    parser.add_argument("--work-dir", help="where logs and results go")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, metavar="KEY=VALUE")
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    if not osp.isfile(args.checkpoint):
        parser.error(f"checkpoint {args.checkpoint!r}: no such file")
    try:
        cfg = load_config(args.config, args.cfg_options, args.launcher, args.work_dir)
    except FileNotFoundError as error:
        parser.error(str(error))
    cfg.load_from = args.checkpoint
    prepare_cpu_distributed(cfg)
    runner = Runner.from_cfg(cfg)
    try:
        return runner.test()
    finally:
        finish_distributed()


if __name__ == "__main__":
    main()
