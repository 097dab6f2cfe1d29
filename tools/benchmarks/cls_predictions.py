"""Stored predictions of the matrix's MNIST design regimes, for pretraining a cls surrogate.

Trains the classification regime matrix's models (tools/benchmarks/reference/cls.py: its data,
models, optimisers and schedules) in MNIST DESIGN regimes, with cross-entropy ('original') and
with a cls surrogate ('surrogate', the shipped one unless --checkpoint names another), and stores
their logits after every tenth of training in the stored-predictions schema of
``reloss.predictions`` (task 'cls', one group per (regime, arm, seed, tenth), so that a chunk never
mixes snapshots), on MNIST training images that the regime does not train on, with their true
labels; the test set is never touched. Digits regimes are refused: digits has no images left
over for such a set.

    python -m tools.benchmarks.cls_predictions --out work_dirs/cls_predictions.pt
    reloss pretrain --task cls --data synthetic work_dirs/cls_predictions.pt --out DIR

The model seeds start at ``--first-seed`` (default 100), away from the matrix's 0 to 3.
"""
from __future__ import annotations

import os
import time

import torch

import reloss
from tools.benchmarks import experiment
from tools.benchmarks.reference import cls

ARMS = ("original", "surrogate")


def design_regimes():
    return [name for name, regime in cls.REGIMES.items()
            if regime.split == "design" and regime.options.get("data") == "mnist"]


def collect(regime, loss_fn, seed, images, labels):
    """Train one model as the matrix does; return its logits on ``images`` after every tenth of
    training, a list of (done, logits)."""
    out = []

    def store(done, net):
        out.append((done, cls.logits(net, images)))

    cls.train(cls.REGIMES[regime].options, loss_fn, seed, on_checkpoint=store)
    return out


def main(argv=None):
    parser = experiment.doc_parser(__doc__, "tools.benchmarks.cls_predictions")
    parser.add_argument("--out", required=True, help="file to write (.pt)")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    design = design_regimes()
    parser.add_argument("--regimes", nargs="+", default=design, metavar="REGIME",
                        help=f"MNIST design regimes only (default: all of them: "
                             f"{' '.join(design)})")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS,
                        help="losses to train with (default: both)")
    parser.add_argument("--checkpoint", default="cls",
                        help="the surrogate arm's surrogate (default: the shipped 'cls')")
    parser.add_argument("--seeds", type=int, default=2, help="models per regime and arm")
    parser.add_argument("--first-seed", type=int, default=100)
    parser.add_argument("--images", type=int, default=2000,
                        help="validation images the logits are stored on (default 2000)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    for name in args.regimes:
        if name not in design:
            parser.error(f"--regimes takes MNIST design regimes ({', '.join(design)}) but got "
                         f"{name!r}")
    for option in ("seeds", "images", "threads"):
        if getattr(args, option) < 1:
            parser.error(f"--{option} should be at least 1 but got {getattr(args, option)}")
    if os.path.exists(args.out) and not args.force:
        parser.error(f"--out {args.out} exists; pass --force to replace it, or choose another")
    try:
        surrogate = reloss.load_surrogate(args.checkpoint)
    except (FileNotFoundError, ValueError) as error:
        parser.error(f"--checkpoint {args.checkpoint!r}: {error}")
    if surrogate.task != "cls":
        parser.error(f"--checkpoint {args.checkpoint!r} is a '{surrogate.task}' surrogate, not "
                     f"a 'cls' one")
    functions = dict(original=cls.original_loss, surrogate=surrogate)
    torch.set_num_threads(args.threads)
    started = time.time()
    logits, labels, groups, snapshots = [], [], [], []
    for name in args.regimes:
        images, truth = cls.mnist_unused(cls.REGIMES[name].options["per_class"], args.images,
                                         cls.DATA_SEED + 1)
        for arm in args.arms:
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                t0 = time.time()
                stored = collect(name, functions[arm], seed, images, truth)
                for done, z in stored:
                    logits.append(z)
                    labels.append(truth)
                    groups.append(torch.full((truth.numel(),), len(snapshots)))
                    accuracy = 100 * float((z.argmax(-1) == truth).float().mean())
                    snapshots.append(dict(regime=name, arm=arm, seed=seed, done=done,
                                          accuracy=round(accuracy, 2)))
                print(f"[reloss] {name}, {arm}, seed {seed}: accuracy on the stored images "
                      f"{snapshots[-1]['accuracy']:.2f} at the end ({time.time() - t0:.0f} s)",
                      flush=True)
    data = dict(task="cls", logits=torch.cat(logits), labels=torch.cat(labels),
                group=torch.cat(groups), snapshots=snapshots,
                checkpoint=args.checkpoint, sha256=surrogate.sha256)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    torch.save(data, args.out)
    print(f"[reloss] wrote {args.out}: {data['labels'].numel()} predictions in {len(snapshots)} "
          f"groups ({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
