"""Is a surrogate worth training with? Train small reference models from scratch with the original
loss, with the surrogate alone and with the two mixed, on the same seeds, and compare.

    python -m tools.benchmark_training --task cls
    python -m tools.benchmark_training --task pose --checkpoint work_dirs/my_pose/surrogate.pt
    python -m tools.benchmark_training --task nat --seeds 3 --quick
    python -m tools.benchmark_training --task nat --label-smoothing 0.1

Every arm trains the same model from the same initialisation on the same data order (one seed
each); only the loss differs:

- original: the loss the surrogate replaces (cross-entropy, heatmap MSE, token cross-entropy);
- surrogate: the surrogate alone;
- mixed: ``w * original + surrogate``, with w the weight the toolkit adapters use by default
  (the task's ``default_original_weight`` in ``reloss.tasks``; ``--original-weight`` overrides
  it).

For 'nat', ``--label-smoothing E`` smooths the original loss as fairseq's ``nat_loss`` does and the
surrogate as ``reloss_nat`` does (``(1 - E) loss + E mean_k(-log p(k))``), in every arm.

The reference tasks (tools/reference/) need no download: 'cls' is a small CNN on scikit-learn's
digits, with clean labels and with 40% of the training labels flipped; 'pose' a small heatmap
model on generated keypoint images; 'nat' a small non-autoregressive transformer on a generated
parallel corpus, decoded with predicted lengths. Prints a progress bar per run, then the table
(final metric, worst seed, each arm against the original loss seed by seed: the paired
difference, its mean and standard error; the metric after the first 10% of training, collapsed
seeds, the surrogate's share of the gradient in the mixed arm, the loss-alone forward + backward
time against the original loss) and writes results.json (with provenance), results.md and
curves.png to --out.
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
from tools import experiment

ARMS = ("original", "surrogate", "mixed")
SHARE_EVERY = 5  # measure the gradient share on every 5th step of the mixed arm


def build_parser():
    parser = experiment.parser(__doc__, "benchmark_training", seeds=5,
                               out="work_dirs/benchmark_training/TASK",
                               module="tools.benchmark_training")
    parser.set_defaults(out=None)
    parser.add_argument("--task", required=True, choices=sorted(TASKS))
    parser.add_argument("--checkpoint", help="shipped surrogate name or checkpoint path "
                                             "(default: the shipped one for --task)")
    parser.add_argument("--quick", action="store_true", help="short runs, for checks and tests")
    parser.add_argument("--original-weight", type=float, metavar="W",
                        help="weight of the original loss in the mixed arm (default: the "
                             "adapters' default for --task, or 1 where that is 0)")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--label-smoothing", type=float, default=0.0, metavar="E",
                        help="nat: smooth token cross-entropy as fairseq's nat_loss does and the "
                             "surrogate as reloss_nat does, (1 - E) loss + E mean_k(-log p(k)) "
                             "(default 0)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: small models run fastest that way)")
    return parser


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads should be at least 1 but got {args.threads}")
    if args.original_weight is not None and not (math.isfinite(args.original_weight)
                                                 and args.original_weight >= 0):
        parser.error(f"--original-weight should be a finite number >= 0 but got "
                     f"{args.original_weight}")
    if not 0 <= args.label_smoothing < 1 or (args.label_smoothing and args.task != "nat"):
        parser.error(f"--label-smoothing should be in [0, 1), and is for --task nat only, but "
                     f"got {args.label_smoothing} with --task {args.task}")
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
        args.original_weight = default_weight or 1.0
    args.default_arm = "mixed" if default_weight > 0 else "surrogate"
    return args, surrogate


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


def loss_functions(task, surrogate, original_weight, label_smoothing=0.0):
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

    return dict(original=original, surrogate=learned,
                mixed=MixedLoss(original, learned, original_weight))


def time_losses(task, functions, repeats=50):
    """Median forward + backward ms of each loss alone, at the task's timing sizes."""
    pred, target, weight = task.timing_inputs(torch.Generator().manual_seed(0))
    out = {}
    for name, fn in functions.items():
        times = []
        for i in range(repeats + 5):
            leaf = pred.clone().requires_grad_()
            start = time.perf_counter()
            fn(leaf, target, weight).backward()
            if i >= 5:
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


def table(results, task_module, args, timings):
    header = [
        "data", "arm", f"final {task_module.METRIC}: mean +- std", "worst seed",
        "minus original's, paired by seed: mean +- SE", "after 10% of training", "collapsed seeds",
        "surrogate's share of the gradient", "loss time / original's"]
    rows = []
    for variant, arms in results.items():
        for arm, record in arms.items():
            s = record["summary"]
            name = {"mixed": f"{args.original_weight:g} x original + surrogate"}.get(arm, arm)
            if arm == args.default_arm:
                name += " (default)"
            share = record.get("gradient_share")
            ratio = timings[arm] / timings["original"] if "original" in timings else None
            paired = record.get("paired")
            rows.append([
                variant, name, f"{s['mean']:.3f} +- {s['std']:.3f}", f"{s['worst']:.3f}",
                "-" if paired is None else paired.format(3), f"{s['first_tenth']:.3f}",
                f"{s['collapsed']}/{s['seeds']}", "-" if share is None else f"{share:.2f}",
                "-" if ratio is None else f"{ratio:.2f}"])
    return experiment.markdown_table(header, rows)


def main(argv=None):
    args, surrogate = parse_args(argv)
    torch.set_num_threads(args.threads)
    task = importlib.import_module(f"tools.reference.{args.task}")
    functions = loss_functions(task, surrogate, args.original_weight, args.label_smoothing)
    started = time.time()
    print(f"[reloss] benchmark_training --task {args.task}: surrogate "
          f"{args.checkpoint or args.task} (sha256 {surrogate.sha256[:12]}...), arms "
          f"{', '.join(args.arms)}, {args.seeds} seed(s), data {', '.join(task.VARIANTS)}"
          f"{' (quick)' if args.quick else ''}", flush=True)
    results = {}
    for variant in task.VARIANTS:
        if len(task.VARIANTS) > 1:
            print(f"[reloss] data '{variant}':", flush=True)

        def train(run, bar, variant=variant):
            fn = functions[run.arm]
            if isinstance(fn, MixedLoss):
                fn.shares = []
            bar.reset(total=100)
            t0 = time.time()
            result = task.run(variant, fn, run.seed, quick=args.quick,
                              progress=lambda done: bar.update(round(100 * done) - bar.n))
            result["seed"] = run.seed
            result["seconds"] = round(time.time() - t0, 2)
            if isinstance(fn, MixedLoss) and fn.shares:
                result["gradient_share"] = statistics.fmean(fn.shares)
            return result

        by_arm = experiment.run_all(experiment.runs(args.arms, experiment.seeds(args)), train,
                                    lambda r: f"{r['final']:.3f}")
        results[variant] = {}
        for arm, runs in by_arm.items():
            shares = [run.pop("gradient_share") for run in runs if "gradient_share" in run]
            results[variant][arm] = dict(
                runs=runs, gradient_share=statistics.fmean(shares) if shares else None)
        originals = [r["final"] for r in results[variant].get("original", {}).get("runs", [])
                     if math.isfinite(r["final"])]
        reference = statistics.fmean(originals) if originals else None
        for arm, record in results[variant].items():
            finals = [r["final"] for r in record["runs"]]
            firsts = [c[1] for r in record["runs"] for c in r["curve"] if abs(c[0] - 0.1) < 1e-9]
            record["summary"] = summarise(finals, firsts, task.CHANCE, reference)
            if arm != "original" and "original" in results[variant]:
                record["paired"] = experiment.paired(
                    {r["seed"]: r["final"] for r in results[variant]["original"]["runs"]},
                    {r["seed"]: r["final"] for r in record["runs"]})
    timings = time_losses(task, {arm: functions[arm] for arm in ("original", *args.arms)})
    seconds = time.time() - started

    text = table(results, task, args, timings)
    for arms in results.values():
        for record in arms.values():
            if "paired" in record:
                record["paired"] = record["paired"].as_dict()
    title = f"task '{args.task}', surrogate {args.checkpoint or args.task}"
    experiment.plot_seeds(os.path.join(args.out, "curves.png"), [
        experiment.Panel("fraction of training", task.METRIC, {
            arm: ([x for x, _ in record["runs"][0]["curve"]],
                  [[value for _, value in run["curve"]] for run in record["runs"]])
            for arm, record in arms.items()}, title=variant)
        for variant, arms in results.items()], title)
    timing_line = ("loss alone, forward + backward, median ms: " + ", ".join(
        f"{arm} {ms:.3f}" for arm, ms in timings.items()) + f" ({platform.machine()}, "
        f"{torch.get_num_threads()} thread(s))")
    record = dict(task=args.task, checkpoint=args.checkpoint or args.task,
                  sha256=surrogate.sha256, metric=task.METRIC, chance=task.CHANCE,
                  original_weight=args.original_weight, default_arm=args.default_arm,
                  label_smoothing=args.label_smoothing, seeds=args.seeds,
                  first_seed=args.first_seed, quick=args.quick, results=results,
                  loss_ms=timings, seconds=round(seconds, 1),
                  provenance=experiment.provenance("benchmark_training", argv,
                                                   surrogates=[args.checkpoint or args.task]))
    experiment.write_results(args.out, text + "\n" + timing_line + "\n", record)
    print()
    print(text)
    print(timing_line)
    print(f"[reloss] {seconds:.0f} s in all. Wrote results.json, results.md and curves.png to "
          f"{args.out}/")
    return record


if __name__ == "__main__":
    main()
