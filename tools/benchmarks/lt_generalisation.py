"""A class-aware surrogate learned to rank models by how they do on examples they did not train on.

Learned on chunks ranked by their own metric, a surrogate learns what makes the predictions it
is given good: on a model's training set, fitting them. What separates the long-tail losses on
long schedules (LDAM-DRW's larger margins for the rare classes) shows only on new examples, so
no such chunk shows it. This tool builds chunks that do: the predictions the loss sees (the
model's logits on its own long-tailed training examples), ranked by that model's validation
score after post-hoc adjustment (tau chosen on the same validation split, as the long-tail
benchmark tunes every arm).

    python -m tools.benchmarks.lt_generalisation collect --out work_dirs/ltg/snapshots.pt
    python -m tools.benchmarks.lt_generalisation pretrain work_dirs/ltg/snapshots.pt \\
        --out work_dirs/ltg/balanced
    python -m tools.benchmarks.imbalanced --regimes design --seeds 5 --arms ce \\
        --surrogates work_dirs/ltg/balanced/surrogate.pt

``collect`` trains the long-tail benchmark's models (tools/benchmarks/imbalanced.py: its data,
models, optimisers, schedules and losses) on DESIGN regimes only, from --first-seed (default
100, away from the benchmark's 0 to 4), and keeps after several epochs the logits of up to
--train-samples of the regime's training examples (drawn once per model), their labels and the
model's tuned validation scores. The test splits are never touched.

``pretrain`` starts from a class-aware surrogate (default: the shipped cls-balanced) and learns
it with ``reloss.pretrain`` on chunks ranked within strata, never across: one stratum of the
synthetic long-tailed chunks ``reloss pretrain`` learns from (ranked by their own metric), and
one per regime of chunks of --chunk-size training predictions of a snapshot (ranked by that
snapshot's validation score). The models of the last seed of each regime and arm validate (early
stopping); the others train.
"""
from __future__ import annotations

import json
import os
import sys
import time

import torch

import reloss
from reloss import checkpoint
from reloss import pretrain as core
from reloss.metrics import chunk_balanced_accuracy, chunk_macro_f1
from reloss.tasks import get_task
from tools.benchmarks import experiment, imbalanced
from tools.benchmarks.lt_predictions import snapshot_epochs
from tools.benchmarks.reference import cls

FRACTIONS = (0.1, 0.2, 0.35, 0.5, 0.65, 0.8, 0.9, 1.0)  # of training, when to keep a snapshot
CHUNK_METRICS = {"balanced": chunk_balanced_accuracy, "macro-f1": chunk_macro_f1}


def collect(regime, arm, seed, surrogates, train_samples):
    """Train one model as the benchmark does; a list of dict(epoch, logits, labels, scores):
    the logits of up to ``train_samples`` training examples after each snapshot epoch, and the
    validation scores {metric: value (%)} after post-hoc adjustment."""
    options = imbalanced.REGIMES[regime].options
    data = imbalanced.dataset(options["data"], options["imbalance"])
    x, y = data["train"]
    keep = torch.randperm(y.numel(), generator=torch.Generator().manual_seed(seed))
    keep = keep[:train_samples]
    wanted = set(snapshot_epochs(options["epochs"], FRACTIONS))
    factor, log_prior = imbalanced.logit_scale(arm), imbalanced.log_priors(data["counts"])
    out = []

    def store(epoch, net):
        if epoch not in wanted:
            return
        scores = {}
        for metric, split in imbalanced.SPLITS.items():
            x_val, y_val = data[f"val_{split}"]
            z = factor * cls.logits(net, x_val, 2000)
            tau = imbalanced.best_tau(metric, z, y_val, log_prior)
            scores[metric] = imbalanced.score(metric, z - tau * log_prior, y_val)
        out.append(dict(epoch=epoch, logits=factor * cls.logits(net, x[keep], 2000),
                        labels=y[keep], scores=scores))

    imbalanced.train(options, arm, seed, surrogates, on_epoch=store)
    return out


def snapshot_chunks(snapshot, chunks, size, generator):
    """(pred (S, size, C), target (S, size)): ``chunks`` draws without replacement of ``size``
    of a snapshot's training predictions (a draw may share examples with another)."""
    count = snapshot["labels"].numel()
    index = torch.stack([torch.randperm(count, generator=generator)[:size]
                         for _ in range(chunks)])
    return snapshot["logits"][index], snapshot["labels"][index]


def prepared_snapshots(surrogate, snapshots, metric, chunks, size, generator):
    """The snapshots' chunks prepared for ``reloss.pretrain``, each ranked by its snapshot's
    validation ``metric``, with the stratum of its regime; split into (train, val) by seed (the
    last seed of each regime and arm validates)."""
    task = get_task("cls")
    regimes = sorted({s["regime"] for s in snapshots})
    last = {}
    for s in snapshots:
        key = (s["regime"], s["arm"])
        last[key] = max(last.get(key, s["seed"]), s["seed"])
    parts = ([], [])
    for s in snapshots:
        if s["labels"].numel() < size:
            raise ValueError(f"snapshot of {s['regime']}, {s['arm']}, seed {s['seed']}: "
                             f"{s['labels'].numel()} training predictions, fewer than a chunk "
                             f"of {size}")
        pred, target = snapshot_chunks(s, chunks, size, generator)
        value = torch.full((chunks,), s["scores"][metric] / 100, dtype=torch.float64)
        part = core.prepare(surrogate, task, pred, target, metric=lambda p, t, v=value: v)
        part["stratum"] = torch.full((chunks,), 1 + regimes.index(s["regime"]))
        parts[s["seed"] == last[(s["regime"], s["arm"])]].append(part)
    return tuple(core.concatenate(p) for p in parts)


def prepared_synthetic(surrogate, metric, count, size, generator):
    """Synthetic long-tailed chunks ranked by their own ``metric``, stratum 0."""
    data = core.prepare_batches(surrogate, "cls", core.synthetic_chunks(
        "cls", count, generator, size, surrogate=surrogate), CHUNK_METRICS[metric])
    data["stratum"] = torch.zeros(data["metric"].shape[0], dtype=torch.long)
    return data


def per_stratum(surrogate, data, names):
    """{stratum name: Spearman(-loss, metric) of the surrogate and of cross-entropy}."""
    losses = core.chunk_losses(surrogate, data)
    out = {}
    for name, index in zip(names, core.strata_of(data), strict=True):
        metric = data["metric"][index]
        out[name] = dict(surrogate=core.correlations(losses[index], metric, None)["full"],
                         cross_entropy=core.correlations(data["baseline"][index], metric,
                                                         None)["full"],
                         chunks=int(index.numel()))
    return out


def run_collect(args):
    regimes = args.regimes or [n for n, r in imbalanced.REGIMES.items() if r.split == "design"]
    for name in regimes:
        if name not in imbalanced.REGIMES or imbalanced.REGIMES[name].split != "design":
            raise SystemExit(f"--regimes takes design regimes only but got {name!r}")
    if os.path.exists(args.out) and not args.force:
        raise SystemExit(f"--out {args.out} exists; pass --force to replace it")
    surrogates = {name.split(":", 1)[1]: reloss.load_surrogate(name.split(":", 1)[1])
                  for name in args.arms if name.startswith("reloss:")}
    torch.set_num_threads(args.threads)
    started, snapshots = time.time(), []
    for name in regimes:
        for arm in args.arms:
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                t0 = time.time()
                for s in collect(name, arm, seed, surrogates, args.train_samples):
                    snapshots.append(dict(regime=name, arm=arm, seed=seed, **s))
                last = snapshots[-1]["scores"]
                print(f"[reloss] {name}, {arm}, seed {seed}: last snapshot " + ", ".join(
                    f"{m} {v:.2f}" for m, v in last.items()) + f" ({time.time() - t0:.0f} s)",
                    flush=True)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    torch.save(dict(snapshots=snapshots), args.out)
    print(f"[reloss] wrote {args.out}: {len(snapshots)} snapshots; "
          f"{time.time() - started:.0f} s in all")


def run_pretrain(args):
    outputs = [os.path.join(args.out, n) for n in ("surrogate.pt", "model_card.json")]
    if any(map(os.path.exists, outputs)) and not args.force:
        raise SystemExit(f"--out {args.out} already holds outputs; pass --force to replace them")
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    surrogate = reloss.load_surrogate(args.init, trainable=True)
    if not isinstance(surrogate, reloss.ClassAwareSurrogate):
        raise SystemExit(f"--init {args.init!r} is a {type(surrogate).__name__}, not a "
                         f"class-aware surrogate")
    snapshots = []
    for path in args.snapshots:
        snapshots += [s for s in torch.load(path, weights_only=True)["snapshots"] if s["epoch"]
                      >= args.late * imbalanced.REGIMES[s["regime"]].options["epochs"]]
    started = time.time()
    train, val = prepared_snapshots(surrogate, snapshots, args.metric, args.chunks,
                                    args.chunk_size, generator)
    names = ["synthetic", *sorted({s["regime"] for s in snapshots})]
    if args.synthetic:
        train = core.concatenate([prepared_synthetic(surrogate, args.metric, args.synthetic,
                                                     args.chunk_size, generator), train])
        val = core.concatenate([prepared_synthetic(surrogate, args.metric, args.synthetic // 4,
                                                   args.chunk_size, generator), val])
    else:
        names = names[1:]
    before = per_stratum(surrogate, val, names)
    history = core.pretrain(surrogate, train, val, None, steps=args.steps,
                            chunks_per_step=args.chunks_per_step, lr=args.lr,
                            tolerance=tuple(args.tolerance), seed=args.seed)
    after = per_stratum(surrogate, val, names)
    os.makedirs(args.out, exist_ok=True)
    metric_name = f"reloss.metrics:{CHUNK_METRICS[args.metric].__name__}"
    sha256 = checkpoint.save_surrogate(surrogate, outputs[0], "cls", metric_name, force=True)
    card = dict(checkpoint="surrogate.pt", sha256=sha256, task="cls", metric=metric_name,
                architecture=dict(type=type(surrogate).__name__, **surrogate.config()),
                command="python -m tools.benchmarks.lt_generalisation pretrain " +
                " ".join(args.argv), init=args.init, seed=args.seed,
                steps_run=history[-1]["step"] if history else 0,
                seconds=round(time.time() - started, 1),
                validation=dict(before=before, after=after),
                beta=float(surrogate.beta.detach()))
    with open(outputs[1], "w", encoding="utf-8") as f:
        json.dump(card, f, indent=2)
        f.write("\n")
    print("| stratum | chunks | cross-entropy | surrogate before | surrogate after |")
    print("|---|---|---|---|---|")
    for name in names:
        print(f"| {name} | {after[name]['chunks']} | {after[name]['cross_entropy']:.3f} | "
              f"{before[name]['surrogate']:.3f} | {after[name]['surrogate']:.3f} |")
    print(f"[reloss] {card['seconds']:.0f} s, {card['steps_run']} steps, beta "
          f"{card['beta']:.3f}; wrote {outputs[0]} (sha256 {sha256[:12]}...) and "
          f"model_card.json")


def main(argv=None):
    parser = experiment.doc_parser(__doc__, "tools.benchmarks.lt_generalisation")
    commands = parser.add_subparsers(dest="command", required=True)
    c = commands.add_parser("collect", help="train models and keep their snapshots")
    c.add_argument("--out", required=True, help="the .pt file to write")
    c.add_argument("--force", action="store_true", help="replace --out")
    c.add_argument("--regimes", nargs="+", metavar="REGIME", help="design regimes (default: all)")
    c.add_argument("--arms", nargs="+", default=["ce", "la", "ldam-drw", "reloss:cls-balanced"],
                   help="losses to train with (default: ce la ldam-drw reloss:cls-balanced)")
    c.add_argument("--seeds", type=int, default=4, help="models per regime and arm")
    c.add_argument("--first-seed", type=int, default=100)
    c.add_argument("--train-samples", type=int, default=1024)
    c.add_argument("--threads", type=int, default=1)
    p = commands.add_parser("pretrain", help="learn a surrogate from collected snapshots")
    p.add_argument("snapshots", nargs="+", help="files written by collect")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--force", action="store_true", help="replace outputs in --out")
    p.add_argument("--metric", choices=sorted(CHUNK_METRICS), default="balanced")
    p.add_argument("--init", default="cls-balanced", help="the surrogate to start from")
    p.add_argument("--late", type=float, default=0.0, metavar="FRACTION",
                   help="only the snapshots after this fraction of training (default 0: all)")
    p.add_argument("--chunks", type=int, default=8, help="chunks drawn per snapshot")
    p.add_argument("--chunk-size", type=int, default=128)
    p.add_argument("--synthetic", type=int, default=1000,
                   help="synthetic long-tailed training chunks (0: none)")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--chunks-per-step", type=int, default=256)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--tolerance", type=float, nargs=2, default=[2.0, 1.5],
                   metavar=("BELOW", "ABOVE"))
    p.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "collect":
        run_collect(args)
    else:
        args.argv = list(argv) if argv is not None else sys.argv[2:]
        run_pretrain(args)


if __name__ == "__main__":
    main()
