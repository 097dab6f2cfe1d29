"""Stored predictions of real long-tailed training, for pretraining the class-aware surrogates.

Trains the long-tail benchmark's models (tools/benchmarks/imbalanced.py: its data, models,
optimisers, schedules and losses) on DESIGN regimes only, and stores the validation logits at
several points along training in the stored-predictions schema of ``reloss.predictions``
(task 'cls', one group per (regime, arm, seed, epoch), so that a chunk never mixes snapshots),
one file per number of classes, OUT/classes_C.pt (a file holds logits of one width):

    python -m tools.benchmarks.lt_predictions --out work_dirs/lt_predictions
    reloss pretrain --task cls --data synthetic work_dirs/lt_predictions/classes_10.pt \
        work_dirs/lt_predictions/classes_20.pt --out DIR

The class-aware surrogates read the class frequencies from each chunk's labels when they
pretrain, so the stored validation set has the training set's long-tailed profile: the
benchmark's imbalanced validation split, or, on digits, whose validation pool is too small for
a long-tailed draw, a draw with replacement of ``--digits-largest`` examples of the largest class
down to the training profile, a fresh draw per snapshot. The test splits are never touched.
The model seeds start at ``--first-seed`` (default 100), away from the benchmark's 0 to 4.
"""
from __future__ import annotations

import os
import time

import torch

from tools.benchmarks import experiment, imbalanced
from tools.benchmarks.data import long_tailed_counts
from tools.benchmarks.reference import cls

FRACTIONS = (0.05, 0.1, 0.2, 0.35, 0.5, 0.65, 0.8, 0.9, 1.0)  # of training, when to store


def snapshot_epochs(epochs, fractions=FRACTIONS):
    """The epochs (1 to ``epochs``, each once, sorted) after which the logits are stored."""
    return sorted({min(epochs, max(1, round(f * epochs))) for f in fractions})


def validation_view(name, data, generator, digits_largest):
    """(inputs, labels) of a long-tailed validation set."""
    if name != "digits":
        x, y = data["val_imbalanced"]
        return x, y
    x, y = data["val_balanced"]
    counts = long_tailed_counts(data["imbalance"], digits_largest, data["classes"])
    index = []
    for c, count in enumerate(counts):
        pool = (y == c).nonzero().flatten()
        index.append(pool[torch.randint(pool.numel(), (count,), generator=generator)])
    index = torch.cat(index)
    return x[index], y[index]


def collect(regime, arm, seed, digits_largest=120):
    """Train one model as the benchmark does and return a list of (epoch, logits, labels)."""
    options = imbalanced.REGIMES[regime].options
    data = dict(imbalanced.dataset(options["data"], options["imbalance"]),
                imbalance=options["imbalance"])
    wanted = set(snapshot_epochs(options["epochs"]))
    generator = torch.Generator().manual_seed(seed)
    factor = imbalanced.logit_scale(arm)
    out = []

    def store(epoch, net):
        if epoch in wanted:
            x, y = validation_view(options["data"], data, generator, digits_largest)
            out.append((epoch, factor * cls.logits(net, x, 2000), y))

    imbalanced.train(options, arm, seed, {}, on_epoch=store)
    return out


def main(argv=None):
    parser = experiment.doc_parser(__doc__, "tools.benchmarks.lt_predictions")
    parser.add_argument("--out", required=True, help="folder to write classes_C.pt to")
    parser.add_argument("--force", action="store_true",
                        help="replace the classes_C.pt files --out already holds")
    design = [n for n, r in imbalanced.REGIMES.items() if r.split == "design"]
    parser.add_argument("--regimes", nargs="+", default=design, metavar="REGIME",
                        help=f"design regimes only (default: all of them: {' '.join(design)})")
    parser.add_argument("--arms", nargs="+", default=["ce", "la"],
                        choices=["ce", "la", "ldam-drw"],
                        help="losses to train with (default: ce la)")
    parser.add_argument("--seeds", type=int, default=3, help="models per regime and arm")
    parser.add_argument("--first-seed", type=int, default=100)
    parser.add_argument("--digits-largest", type=int, default=120,
                        help="digits: examples of the largest class in each validation draw")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    for name in args.regimes:
        if name not in imbalanced.REGIMES or imbalanced.REGIMES[name].split != "design":
            parser.error(f"--regimes takes design regimes ({', '.join(design)}) but got {name!r}")
    if args.seeds < 1:
        parser.error(f"--seeds should be >= 1 but got {args.seeds}")
    present = sorted(n for n in os.listdir(args.out) if n.startswith("classes_")
                     and n.endswith(".pt")) if os.path.isdir(args.out) else []
    if present and not args.force:
        parser.error(f"--out {args.out} already holds {present[0]}; pass --force to replace "
                     f"it, or choose another --out")
    for name in present:
        os.remove(os.path.join(args.out, name))
    torch.set_num_threads(args.threads)
    started = time.time()
    stored = {}  # classes: dict(logits=[...], labels=[...], group=[...], snapshots=[...])
    for name in args.regimes:
        for arm in args.arms:
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                t0 = time.time()
                snapshots = collect(name, arm, seed, args.digits_largest)
                for epoch, z, y in snapshots:
                    part = stored.setdefault(z.shape[-1], dict(logits=[], labels=[], group=[],
                                                               snapshots=[]))
                    part["logits"].append(z)
                    part["labels"].append(y)
                    part["group"].append(torch.full((y.numel(),), len(part["snapshots"])))
                    part["snapshots"].append(dict(regime=name, arm=arm, seed=seed, epoch=epoch,
                                                  samples=y.numel()))
                print(f"[reloss] {name}, {arm}, seed {seed}: {len(snapshots)} snapshots "
                      f"({time.time() - t0:.0f} s)", flush=True)
    os.makedirs(args.out, exist_ok=True)
    for classes, part in sorted(stored.items()):
        path = os.path.join(args.out, f"classes_{classes}.pt")
        data = dict(task="cls", snapshots=part.pop("snapshots"),
                    **{key: torch.cat(values) for key, values in part.items()})
        torch.save(data, path)
        print(f"[reloss] wrote {path}: {data['labels'].numel()} predictions in "
              f"{len(data['snapshots'])} groups")
    print(f"[reloss] {time.time() - started:.0f} s in all")


if __name__ == "__main__":
    main()
