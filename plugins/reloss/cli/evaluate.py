"""Spearman of a surrogate and of the loss it replaces with the metric, on stored predictions.

    reloss evaluate cls --data work_dirs/digits_predictions.pt
    reloss evaluate DIR/surrogate.pt --data my_predictions.pt --chunk-size 64

Prints Spearman(-loss, metric) over chunks of the stored predictions (reloss/predictions.py gives
the schema), on all chunks and on those in the task's late-training band.
"""
import argparse
import os

import torch

import reloss
from reloss import pretrain
from reloss.cli.pretrain import table
from reloss.predictions import load_predictions


def evaluate(surrogate, path, chunk_size=None, band=None, seed=0):
    """Figures of ``surrogate`` and of the original loss on the stored predictions at ``path``."""
    task = reloss.get_task(surrogate.task)
    generator = torch.Generator().manual_seed(seed)
    batches = load_predictions(path, task.name, chunk_size or task.chunk_size, generator)
    data = pretrain.prepare_batches(surrogate, task.name, batches)
    return pretrain.evaluate(surrogate, data, band or task.band)


def main(argv=None, prog="reloss evaluate"):
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n", 2)[2])
    parser.add_argument("surrogate", help="a shipped name (cls, pose, nat, qa) or a checkpoint "
                                          "path")
    parser.add_argument("--data", required=True, nargs="+", help="stored-prediction files (.pt)")
    parser.add_argument("--chunk-size", type=int)
    parser.add_argument("--band", type=float, nargs=2, metavar=("LOW", "HIGH"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for path in args.data:
        if not os.path.isfile(path):
            parser.error(f"--data {path!r}: no such file")
    surrogate = reloss.load_surrogate(args.surrogate)
    task = reloss.get_task(surrogate.task)
    band = tuple(args.band) if args.band else task.band
    rows = [(path, evaluate(surrogate, path, args.chunk_size, band, args.seed))
            for path in args.data]
    print(table(rows, task, band, surrogate.metric or task.metric_name))

