"""Learn a surrogate loss whose values rank predictions the way a metric does.

    reloss pretrain --task cls --out work_dirs/surrogate_cls
    reloss pretrain --task cls --metric my_metrics:macro_f1 --out DIR
    reloss pretrain --task cls --metric path/to/metrics.py:macro_f1 --out DIR
    reloss pretrain --task cls --data synthetic my_model_predictions.pt --out DIR

Writes DIR/surrogate.pt (load it with ``reloss.load_surrogate('DIR/surrogate.pt')``, or pass the
path as a loss's ``checkpoint=``), DIR/model_card.json, DIR/results.md and, where matplotlib is
installed (``pip install reloss[pretrain]``), DIR/scatter.png, and
prints the held-out table: Spearman(-loss, metric) of the surrogate and of the loss it replaces,
on the whole range and on the late-training band.

--metric module:function (a module importable from the current directory) or file.py:function
names any function ``metric(pred, target[, weight]) -> (S,)`` over S chunks: for 'cls' logits
(S, N, C) and labels (S, N); for 'pose' heatmaps and target heatmaps (S, N, K, H, W) and keypoint
weights (S, N, K); for 'nat' logits (S, N, T, V), target ids (S, N, T) and position weights
(S, N, T). --data takes 'synthetic' and/or stored predictions (.pt; reloss/predictions.py gives
the schema).
"""
import argparse
import importlib
import importlib.util
import itertools
import json
import os
import platform
import shlex
import sys
import time

import torch

import reloss
from reloss import checkpoint, pretrain
from reloss.predictions import load_predictions
from reloss.tasks import TASKS

OUTPUTS = ("surrogate.pt", "model_card.json", "scatter.png", "results.md")


def parse_args(argv=None, prog="reloss pretrain"):
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n", 2)[2])
    parser.add_argument("--task", required=True, choices=sorted(TASKS))
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--force", action="store_true", help="replace outputs already in --out")
    parser.add_argument("--metric", help="module:function or file.py:function (default: the "
                                         "task's metric)")
    parser.add_argument("--data", nargs="+", default=["synthetic"],
                        help="'synthetic' and/or stored-prediction files (.pt)")
    parser.add_argument("--relabel", type=int, default=0, metavar="K",
                        help="add K relabelled copies of each stored training chunk (the "
                             "authors' augmentation; tasks that define one: "
                             + ", ".join(n for n, t in TASKS.items() if t.relabel) + ")")
    parser.add_argument("--eval-data", nargs="*", default=[],
                        help="stored-prediction files to report figures on (never trained on)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-chunks", type=int, default=3000,
                        help="synthetic training chunks (held-out: a quarter each for val, test)")
    parser.add_argument("--chunk-size", type=int, help="samples per chunk (default: per task)")
    parser.add_argument("--steps", type=int, help="training steps (default: the task's "
                                                  "pretrain_steps)")
    parser.add_argument("--chunks-per-step", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--weight-decay", type=float, default=1e-3)
    parser.add_argument("--penalty-weight", type=float, default=10.0)
    parser.add_argument("--penalty", choices=pretrain.PENALTIES, default="relative",
                        help="gradient penalty: 'relative' to the original loss's gradient "
                             "(default) or 'unit', the authors' (||grad|| - 1)^2")
    parser.add_argument("--tolerance", type=float, nargs="+", metavar="FACTOR",
                        help="free factor between the surrogate's and the original loss's "
                             "gradient norm per chunk; two values: BELOW ABOVE (default: the "
                             "task's pretrain_tolerance)")
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--patience", type=int, default=8)
    parser.add_argument("--band", type=float, nargs=2, metavar=("LOW", "HIGH"),
                        help="late-training band of the metric (default: per task)")
    parser.add_argument("--arch", nargs="*", default=[], metavar="KEY=VALUE",
                        help="the surrogate: type=CLASS picks another of the task's surrogate "
                             "classes (default: the one that ships), the rest are its "
                             "constructor arguments, e.g. type=QARiskSurrogate risk_weight=2")
    args = parser.parse_args(argv)
    task = TASKS[args.task]
    if args.steps is None:
        args.steps = task.pretrain_steps
    if args.tolerance is None:
        args.tolerance = list(task.pretrain_tolerance)
    if args.relabel < 0:
        parser.error(f"--relabel should be a count >= 0 but got {args.relabel}")
    if args.relabel and task.relabel is None:
        parser.error(f"--relabel: task '{args.task}' defines no relabelling")
    if len(args.tolerance) not in (1, 2) or min(args.tolerance) < 1:
        parser.error(f"--tolerance should be one factor or two (BELOW ABOVE), each >= 1, but got "
                     f"{' '.join(map(str, args.tolerance))}")
    args.tolerance = args.tolerance[0] if len(args.tolerance) == 1 else tuple(args.tolerance)
    return parser, args


def import_metric(parser, spec):
    """The function named by ``module:function`` (a module file in the current directory, or an
    importable module) or ``path/to/file.py:function``."""
    module_name, _, function_name = spec.rpartition(":")
    if not module_name or not function_name:
        parser.error(f"--metric {spec!r}: expected module:function or file.py:function")
    try:
        in_cwd = module_name + ".py"  # a module file here, read afresh on every call
        if module_name.endswith(".py") or ("." not in module_name and os.path.isfile(in_cwd)):
            path = module_name if module_name.endswith(".py") else in_cwd
            if not os.path.isfile(path):
                parser.error(f"--metric {spec!r}: no such file {module_name!r}")
            loader = importlib.util.spec_from_file_location(
                os.path.splitext(os.path.basename(path))[0], path)
            module = importlib.util.module_from_spec(loader)
            loader.loader.exec_module(module)
        else:  # as `python -m` finds modules (packages too): this directory first, then sys.path
            sys.path.insert(0, os.getcwd())
            try:
                module = importlib.import_module(module_name)
            finally:
                sys.path.remove(os.getcwd())
    except ImportError as error:
        parser.error(f"--metric {spec!r}: cannot import module {module_name!r} ({error})")
    function = getattr(module, function_name, None)
    if not callable(function):
        parser.error(f"--metric {spec!r}: module {module_name!r} has no function "
                     f"{function_name!r}")
    return function


def parse_arch(parser, pairs):
    arch = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            parser.error(f"--arch {pair!r}: expected KEY=VALUE")
        try:
            arch[key] = json.loads(value)
        except json.JSONDecodeError:
            arch[key] = value
    return arch


def split(batches, fractions, generator):
    """Split raw chunk batches into parts along chunks with a seeded permutation."""
    parts = [[] for _ in fractions]
    for batch in batches:
        count = batch[0].shape[0]
        order = torch.randperm(count, generator=generator)
        edges = [0]
        for fraction in fractions[:-1]:
            edges.append(edges[-1] + round(fraction * count))
        edges.append(count)
        for i, (start, stop) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
            index = order[start:stop]
            if index.numel():
                parts[i].append(tuple(None if t is None else t[index] for t in batch))
    return parts


def load_data(args, task, generator, surrogate=None):
    """(train, val, test) iterables of raw batches, and a description of where they came from.

    Synthetic chunks are generated lazily, batch by batch, while they are prepared.
    """
    train, val, test, described = [], [], [], []
    size = args.chunk_size or task.chunk_size
    for source in args.data:
        if source == "synthetic":
            count = args.train_chunks
            for part, n in ((train, count), (val, count // 4), (test, count // 4)):
                part.append(pretrain.synthetic_chunks(task.name, n, generator, size,
                                                      surrogate=surrogate))
            sampler = getattr(surrogate, "sample", None) or task.sample
            described.append(f"synthetic ({sampler.__name__}): {count} training, "
                             f"{count // 4} validation and {count // 4} test chunks of {size}")
            continue
        batches = load_predictions(source, task.name, size, generator)
        parts = split(batches, (0.7, 0.15, 0.15), generator)
        parts[0] = relabelled(parts[0], args.relabel, task, generator)
        for part, batches_of_part in zip((train, val, test), parts, strict=True):
            part.append(batches_of_part)
        described.append(f"{source}: {sum(b[0].shape[0] for b in batches)} chunks of {size}, "
                         f"70/15/15% train/val/test" + (f", training chunks relabelled "
                                                        f"x{args.relabel}" if args.relabel else ""))
    return (itertools.chain.from_iterable(part) for part in (train, val, test)), described


def relabelled(batches, copies, task, generator):
    """``batches`` followed by ``copies`` relabelled copies of each (``task.relabel``)."""
    out = list(batches)
    for _ in range(copies):
        out += [(p, task.relabel(p, t, generator), w) for p, t, w in batches]
    return out


def table(rows, task, band, metric_name):
    label = task.metric_label if metric_name == task.metric_name else metric_name
    lines = [f"Spearman(-loss, {label}) over chunks", "",
             f"| data | chunks | loss | all chunks | {label} in [{band[0]:g}, {band[1]:g}] "
             f"(chunks) | gradient norm / original's: median (10th percentile) |",
             "|---|---|---|---|---|---|"]
    for name, figures in rows:
        for loss_name, key in (("ReLoss surrogate", "surrogate"), (task.original_name, "baseline")):
            f = figures[key]
            banded = "-" if f["band"] is None else f"{f['band']:.3f} ({f['band_chunks']})"
            ratio = (f"{f['gradient_ratio']:.3g} ({f['gradient_ratio_p10']:.3g})"
                     if "gradient_ratio" in f else "1")
            lines.append(f"| {name} | {f['chunks']} | {loss_name} | {f['full']:.3f} | {banded} | "
                         f"{ratio} |")
    return "\n".join(lines) + "\n"


def scatter(path, surrogate, data, task, band, figures, label):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = data["metric"].numpy()
    losses = (pretrain.chunk_losses(surrogate, data).numpy(), data["baseline"].numpy())
    names = ("ReLoss surrogate", task.original_name)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, loss, name, key in zip(axes, losses, names, ("surrogate", "baseline"), strict=True):
        ax.axvspan(band[0], band[1], color="0.92", label="late-training band")
        ax.scatter(metric, loss, s=4, alpha=0.5)
        f = figures[key]
        banded = "-" if f["band"] is None else f"{f['band']:.3f}"
        ax.set_title(f"{name}: Spearman {f['full']:.3f} (band {banded})", fontsize=10)
        ax.set_xlabel(f"{label} per chunk")
        ax.set_ylabel("loss per chunk")
        ax.legend(fontsize=8, loc="upper right")
    fig.suptitle(f"held-out chunks, task '{task.name}'", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None, prog="reloss pretrain"):
    """Run the command on ``argv`` (default: ``sys.argv[1:]``); ``prog`` is how the user called
    it, for the usage line and the model card's ``command``. Returns the model card."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser, args = parse_args(argv, prog)
    plots = importlib.util.find_spec("matplotlib") is not None
    task = TASKS[args.task]
    band = tuple(args.band) if args.band else task.band
    present = [name for name in OUTPUTS if os.path.exists(os.path.join(args.out, name))]
    if present and not args.force:
        parser.error(f"--out {args.out} already holds {', '.join(present)}; pass --force to "
                     f"replace them")
    metric = import_metric(parser, args.metric) if args.metric else None
    arch = parse_arch(parser, args.arch)
    for source in args.data + args.eval_data:
        if source != "synthetic" and not os.path.isfile(source):
            parser.error(f"--data/--eval-data {source!r}: no such file")
    started = time.time()
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    try:
        surrogate = task.surrogate_class(arch.pop("type", None))(**arch)
    except (TypeError, ValueError) as error:
        parser.error(f"--arch: {error}")

    (train, val, test), described = load_data(args, task, generator, surrogate)
    print(f"[reloss] preparing features: {'; '.join(described)}", flush=True)
    try:
        train, val, test = (pretrain.prepare_batches(surrogate, args.task, part, metric)
                            for part in (train, val, test))
    except ValueError as error:
        if metric is not None and "metric" in str(error):
            parser.error(f"--metric {args.metric}: {error}")
        raise
    print(f"[reloss] {train['metric'].numel()} training chunks, metric "
          f"{float(train['metric'].min()):.3g}..{float(train['metric'].max()):.3g}; "
          f"{time.time() - started:.1f} s", flush=True)

    from tqdm import tqdm

    bar = tqdm(total=args.steps, desc=f"pretraining '{args.task}'", unit="step", mininterval=1.0)

    def progress(step, info):
        bar.update(1)
        if "val_full" in info:
            bar.set_postfix(rho=f"{info['rho']:.3f}", val=f"{info['val_full']:.3f}",
                            val_band=f"{info['val_band'] or 0:.3f}")

    history = pretrain.pretrain(
        surrogate, train, val, band, steps=args.steps, chunks_per_step=args.chunks_per_step,
        lr=args.lr, weight_decay=args.weight_decay, penalty_weight=args.penalty_weight,
        tolerance=args.tolerance, penalty=args.penalty, eval_every=args.eval_every,
        patience=args.patience,
        seed=args.seed, progress=progress)
    bar.close()
    seconds = time.time() - started

    rows = [("held-out " + ("synthetic" if args.data == ["synthetic"] else "test"),
             pretrain.evaluate(surrogate, test, band))]
    for source in args.eval_data:
        batches = load_predictions(source, args.task, args.chunk_size or task.chunk_size,
                                   generator)
        data = pretrain.prepare_batches(surrogate, args.task, batches, metric)
        rows.append((os.path.basename(source), pretrain.evaluate(surrogate, data, band)))
    metric_name = args.metric or task.metric_name
    results = table(rows, task, band, metric_name)

    os.makedirs(args.out, exist_ok=True)
    weights = os.path.join(args.out, "surrogate.pt")
    sha256 = checkpoint.save_surrogate(surrogate, weights, args.task, metric_name, force=True)
    if plots:
        scatter(os.path.join(args.out, "scatter.png"), surrogate, test, task, band, rows[0][1],
                task.metric_label if metric_name == task.metric_name else metric_name)
    card = dict(
        checkpoint="surrogate.pt", sha256=sha256, task=args.task, metric=metric_name,
        replaces=task.original_name, band=list(band),
        architecture=dict(type=type(surrogate).__name__, **surrogate.config()),
        parameters=sum(p.numel() for p in surrogate.parameters()),
        command=f"{prog} {shlex.join(argv)}",
        arguments=vars(args), seed=args.seed, data=described,
        results={name: figures for name, figures in rows},
        steps_run=history[-1]["step"] if history else 0, seconds=round(seconds, 1),
        machine=f"{platform.machine()}, {torch.get_num_threads()} threads",
        versions=dict(reloss=reloss.__version__, torch=torch.__version__))
    with open(os.path.join(args.out, "model_card.json"), "w", encoding="utf-8") as f:
        json.dump(card, f, indent=2)
        f.write("\n")
    with open(os.path.join(args.out, "results.md"), "w", encoding="utf-8") as f:
        f.write(results)
    print()
    print(results)
    print(f"[reloss] {seconds:.1f} s in all. Wrote {weights} (sha256 {sha256[:12]}...), "
          f"model_card.json, {'scatter.png ' if plots else ''}and results.md to {args.out}/"
          + ("" if plots else " (no scatter.png: matplotlib is not installed; pip install "
             "reloss[pretrain] draws it)"))
    return card

