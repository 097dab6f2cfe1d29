"""Long-tailed classification: do the class-aware surrogates train models that score better on
balanced accuracy and macro-F1 than cross-entropy and the long-tail losses?

    python -m tools.benchmarks.imbalanced --regimes design --seeds 5
    python -m tools.benchmarks.imbalanced --regimes held-out --seeds 5 --out work_dirs/lt_held
    python -m tools.benchmarks.imbalanced --report work_dirs/lt_a work_dirs/lt_b

Every regime trains on a long-tailed training set (class c keeps round(largest * rho^(-c/(C-1)))
examples) and is scored on a class-balanced test set (balanced accuracy) and on an imbalanced one
drawn with the training profile (macro-F1; on digits, whose test pool is too small for that, on
the balanced one). Each seed trains every loss once from the same initialisation on the same data
order; only the loss differs:

- ``ce``: cross-entropy;
- ``la``: the logit-adjusted loss (Menon et al., ICLR 2021), tau = 1;
- ``bs`` (on request): balanced softmax (Ren et al., NeurIPS 2020): the cross-entropy of
  z + log n, the logit-adjusted loss at tau = 1 exactly (the softmax ignores the shift log of the
  total), so it trains the very same model as ``la``;
- ``ldam-drw``: LDAM (max margin 0.5, scale 30, on a cosine last layer as in the authors' code)
  with deferred re-weighting from 80% of training (Cao et al., NeurIPS 2019);
- ``reloss:NAME``: the class-aware surrogate NAME (default: the shipped ``cls-balanced`` and
  ``cls-macro-f1``), given the training set's class counts, as
  ``ReLossCls(checkpoint=NAME, class_counts=...)`` trains;
- on request (``--variants``), the surrogate with LDAM-DRW's other two ingredients:
  ``reloss+cos:NAME`` on the same cosine last layer (logits 30 times the cosines),
  ``reloss+drw:NAME`` with its class weight w(p_y) deferred to the last 20% of training (before
  that every sample weighs 1, as DRW's cross-entropy phase), and ``reloss+cos+drw:NAME`` both.

Every trained model then gets the same tuning budget: post-hoc logit adjustment (Menon et al.),
logits - tau log(prior), tau on a grid from -1 to 2 (0 included: no adjustment) chosen on a
validation split by the metric being reported (balanced validation split for balanced accuracy,
imbalanced one for macro-F1). So each loss has two rows: as trained, and tuned ("ce, tuned" is
cross-entropy with post-hoc adjustment, the free correction any model can have). The table pairs
every arm, seed by seed, against cross-entropy and against each regime's best anchor (the best of
the tuned hand-designed arms, chosen per regime by its mean) and prints the mean over regimes;
the best anchor is picked on the seeds it is then compared on, which favours it, so the summary
also pairs each surrogate with the anchor a user would pick from the other seeds' runs (leave
one seed out).

Regimes (``REGIMES``; the design split is where the surrogates' form, data and defaults are
chosen, the held-out split is measured at the end): long-tailed digits (imbalance 10 and 100),
long-tailed MNIST (real, fetched into the data cache on first use: docs/data.md), a generated
20-class set (scikit-learn's make_classification); MLP and CNN, SGD and AdamW, short and long
schedules. Writes results.json and results.md to --out.
"""
from __future__ import annotations

import functools
import json
import math
import os
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

import reloss
from reloss.metrics import chunk_balanced_accuracy, chunk_macro_f1
from reloss.tasks.cls import class_priors
from tools.benchmarks import experiment
from tools.benchmarks.data import long_tailed_counts
from tools.benchmarks.reference import Regime, longtail, select
from tools.benchmarks.reference import cls as reference_cls

METRICS = {"balanced": "balanced accuracy (%)", "macro-f1": "macro-F1 (%)"}
ANCHORS = ("ce", "la", "bs", "ldam-drw")
DEFAULT_ANCHORS = ("ce", "la", "ldam-drw")
SURROGATES = ("cls-balanced", "cls-macro-f1")
VARIANTS = ("plain", "cos", "drw", "cos+drw")
TAUS = tuple(k / 4 for k in range(-4, 9))  # post-hoc grid: -1 to 2 by 0.25
DATA_SEED = 0
LDAM_SCALE = 30.0  # Cao et al.'s s
GENERATED_CLASSES = 20


def _regime(split, data, imbalance, model, optimizer, epochs):
    return Regime(split, f"{data} rho {imbalance:g}, {model}, {optimizer}, {epochs} ep",
                  dict(data=data, imbalance=imbalance, model=model, optimizer=optimizer,
                       epochs=epochs))


REGIMES = {
    # design split: where the surrogates' form, pretraining data and defaults are chosen
    "digits-10-cnn-sgd-30": _regime("design", "digits", 10, "cnn", "sgd", 30),
    "mnist-100-cnn-sgd-4": _regime("design", "mnist", 100, "cnn28", "sgd", 4),
    "gen20-50-mlp-adamw-20": _regime("design", "gen20", 50, "mlp20", "adamw", 20),
    # long schedules where LDAM-DRW is the best anchor (added after the held-out split showed
    # the surrogates losing to it there; chosen on design runs only)
    "gen20-50-mlp-sgd-40": _regime("design", "gen20", 50, "mlp20", "sgd", 40),
    "digits-20-mlp-adamw-40": _regime("design", "digits", 20, "mlp", "adamw", 40),
    # held-out split: measured at the end, never tuned on
    "digits-100-mlp-adamw-60": _regime("held-out", "digits", 100, "mlp", "adamw", 60),
    "digits-100-cnn-sgd-10": _regime("held-out", "digits", 100, "cnn", "sgd", 10),
    "mnist-10-mlp-adamw-10": _regime("held-out", "mnist", 10, "mlp28", "adamw", 10),
    "mnist-100-cnn-adamw-10": _regime("held-out", "mnist", 100, "cnn28", "adamw", 10),
    "gen20-100-mlp-sgd-60": _regime("held-out", "gen20", 100, "mlp20", "sgd", 60),
    # a second held-out set, fixed before any run of it (the first five had been measured twice
    # and two design regimes resemble two of them): other imbalance ratios and pairings
    "mnist-50-mlp-sgd-10": _regime("held-out", "mnist", 50, "mlp28", "sgd", 10),
    "mnist-20-cnn-adamw-4": _regime("held-out", "mnist", 20, "cnn28", "adamw", 4),
    "digits-50-cnn-adamw-20": _regime("held-out", "digits", 50, "cnn", "adamw", 20),
    "gen20-200-mlp-adamw-40": _regime("held-out", "gen20", 200, "mlp20", "adamw", 40),
    "gen20-10-mlp-sgd-20": _regime("held-out", "gen20", 10, "mlp20", "sgd", 20),
}
BATCH = {"digits": 32, "mnist": 64, "gen20": 128}
LARGEST = {"mnist": 1200, "gen20": 500}  # digits: its smallest training class (about 110)


def _take(labels, counts, generator):
    """Sorted indices keeping counts[c] random examples of each class c."""
    chosen = []
    for c, count in enumerate(counts):
        index = (labels == c).nonzero().flatten()
        chosen.append(index[torch.randperm(index.numel(), generator=generator)[:count]])
    return torch.cat(chosen).sort().values


def _halves(labels, generator):
    """Two sorted index sets, each class split in half at random (validation, test)."""
    first, second = [], []
    for c in labels.unique():
        index = (labels == c).nonzero().flatten()
        index = index[torch.randperm(index.numel(), generator=generator)]
        first.append(index[:index.numel() // 2])
        second.append(index[index.numel() // 2:])
    return torch.cat(first).sort().values, torch.cat(second).sort().values


@functools.cache
def _pools(name):
    """(train images, train labels, evaluation images, evaluation labels) of a dataset."""
    if name == "digits":
        return reference_cls.data(0.0)
    if name == "mnist":
        train = reference_cls.mnist_data(5400)["train"]  # 5,400 of each class, drawn once
        _, test = reference_cls._mnist_test()
        return (*train, *test)
    if name == "gen20":
        from sklearn.datasets import make_classification

        x, y = make_classification(n_samples=2 * 1000 * GENERATED_CLASSES, n_features=40,
                                   n_informative=20, n_redundant=5,
                                   n_classes=GENERATED_CLASSES, n_clusters_per_class=1,
                                   class_sep=1.0, random_state=DATA_SEED)
        x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.long)
        half = x.shape[0] // 2
        return x[:half], y[:half], x[half:], y[half:]
    raise ValueError(f"'data' should be 'digits', 'mnist' or 'gen20' but got {name!r}")


@functools.cache
def dataset(name, imbalance):
    """dict(train=(x, y), counts=[...], val_balanced, test_balanced, val_imbalanced,
    test_imbalanced): the long-tailed training set, its class counts, and the evaluation pool
    split in half per class (validation, test), each also drawn with the training profile."""
    x_train, y_train, x_eval, y_eval = _pools(name)
    classes = int(y_train.max()) + 1
    generator = torch.Generator().manual_seed(DATA_SEED)
    largest = LARGEST.get(name) or int(torch.bincount(y_train, minlength=classes).min())
    counts = long_tailed_counts(imbalance, largest, classes)
    keep = _take(y_train, counts, generator)
    out = dict(train=(x_train[keep], y_train[keep]), counts=counts, classes=classes)
    val, test = _halves(y_eval, generator)
    for split, index in (("val", val), ("test", test)):
        out[f"{split}_balanced"] = (x_eval[index], y_eval[index])
        labels = y_eval[index]
        if name == "digits":  # too few test images per class for a long-tailed draw
            out[f"{split}_imbalanced"] = out[f"{split}_balanced"]
            continue
        per_class = int(torch.bincount(labels, minlength=classes).min())
        sub = _take(labels, long_tailed_counts(imbalance, per_class, classes), generator)
        out[f"{split}_imbalanced"] = (x_eval[index][sub], labels[sub])
    return out


class CosineLinear(nn.Module):
    """The last layer LDAM trains with (Cao et al.'s code calls it NormedLinear): the cosine of
    the features and each class's weight vector, so that the loss's scale s sets the logits'
    range [-s, s]."""

    def __init__(self, fan_in, fan_out):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(fan_out, fan_in).uniform_(-1, 1))

    def forward(self, x):
        return F.normalize(x, dim=-1) @ F.normalize(self.weight, dim=-1).T


def model(name, classes, cosine=False):
    """A reference model; ``cosine``: its last layer a :class:`CosineLinear` (for LDAM)."""
    if name == "mlp20":
        net = nn.Sequential(nn.Linear(40, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                            nn.Linear(256, classes))
    else:
        net = reference_cls.model(name)
    if cosine:
        net[-1] = CosineLinear(net[-1].in_features, net[-1].out_features)
    return net


def loss_function(arm, counts, surrogates):
    """``loss(logits, labels, fraction_done)`` of an arm."""
    if arm == "ce":
        return lambda logits, labels, done: F.cross_entropy(logits, labels)
    if arm == "la":
        return lambda logits, labels, done: longtail.logit_adjusted_loss(logits, labels, counts)
    if arm == "bs":
        return lambda logits, labels, done: longtail.balanced_softmax_loss(logits, labels, counts)
    if arm == "ldam-drw":
        weights = longtail.drw_weights(counts).float()

        def ldam(logits, labels, done):
            weight = weights if done >= longtail.DRW_START else None
            return longtail.ldam_loss(logits, labels, counts, scale=LDAM_SCALE, weight=weight)

        return ldam
    kind, name = arm.split(":", 1)
    surrogate, priors = surrogates[name], class_priors(counts)
    scale = logit_scale(arm)
    if "drw" not in _ingredients(kind):
        return lambda logits, labels, done: surrogate(scale * logits, labels, priors=priors)
    # w(p_c) = (C p_c)^-beta; dividing the samples' weights by it leaves every sample weighing 1.
    unweight = (len(counts) * priors).pow(float(surrogate.beta))

    def deferred(logits, labels, done):
        weight = None if done >= longtail.DRW_START else unweight[labels]
        return surrogate(scale * logits, labels, weight=weight, priors=priors)

    return deferred


def _ingredients(kind):
    """'reloss+cos+drw' -> {'cos', 'drw'}; 'ldam-drw' -> {'cos'} (its cosine last layer)."""
    if kind == "ldam-drw":
        return {"cos"}
    return set(kind.split("+")[1:]) if kind.startswith("reloss") else set()


def cosine_head(arm):
    """Whether an arm trains on a :class:`CosineLinear` last layer."""
    return "cos" in _ingredients(arm.split(":", 1)[0])


def logit_scale(arm):
    """What an arm's model outputs are multiplied by to give its logits: on a cosine last layer
    the scale times the cosines, in training and so for the post-hoc adjustment too; else 1."""
    return LDAM_SCALE if cosine_head(arm) else 1.0


def train(options, arm, seed, surrogates, quick=False, on_epoch=None):
    """Train one model; returns its logits on the four evaluation sets. ``on_epoch(epoch, net)``,
    if given, is called after each epoch (1 to the number of epochs)."""
    data = dataset(options["data"], options["imbalance"])
    x, y = data["train"]
    epochs = max(1, options["epochs"] // 5) if quick else options["epochs"]
    torch.manual_seed(seed)
    net = model(options["model"], data["classes"], cosine=cosine_head(arm))
    if options["optimizer"] == "sgd":
        lr = 0.05
        optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    else:
        lr = 2e-3
        optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.05)
    loss_fn = loss_function(arm, data["counts"], surrogates)
    generator = torch.Generator().manual_seed(seed)
    batches = [(epoch, index) for epoch in range(epochs)
               for index in torch.randperm(y.numel(), generator=generator).split(
                   BATCH[options["data"]])]
    for step, (epoch, index) in enumerate(batches):
        for group in optimizer.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / len(batches)))
        loss = loss_fn(net(x[index]), y[index], epoch / epochs)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if on_epoch is not None and (step + 1 == len(batches) or batches[step + 1][0] != epoch):
            on_epoch(epoch + 1, net)
    factor = logit_scale(arm)
    return {split: factor * reference_cls.logits(net, data[split][0], 2000) for split in
            ("val_balanced", "test_balanced", "val_imbalanced", "test_imbalanced")}


def score(metric, logits, labels):
    fn = chunk_balanced_accuracy if metric == "balanced" else chunk_macro_f1
    return 100.0 * float(fn(logits.unsqueeze(0), labels.unsqueeze(0))[0])


SPLITS = {"balanced": "balanced", "macro-f1": "imbalanced"}  # metric: its evaluation sets


def log_priors(counts):
    """log of the class frequencies of ``counts``, (C,) float32."""
    log_prior = torch.tensor(counts, dtype=torch.float32).log()
    return log_prior - log_prior.logsumexp(0)


def best_tau(metric, logits, labels, log_prior):
    """The post-hoc tau of the grid that scores best on (``logits``, ``labels``); ties go to the
    smallest |tau| (max picks the first best of the grid sorted by it)."""
    return max(sorted(TAUS, key=abs), key=lambda t: score(metric, logits - t * log_prior, labels))


def scores(logits, data):
    """{metric: {'as trained': value, 'tuned': value, 'tau': chosen tau}}: each metric on its
    test set, before and after post-hoc adjustment with tau chosen on its validation split."""
    log_prior = log_priors(data["counts"])
    out = {}
    for metric, split in SPLITS.items():
        val, test = logits[f"val_{split}"], logits[f"test_{split}"]
        y_val, y_test = data[f"val_{split}"][1], data[f"test_{split}"][1]
        tau = best_tau(metric, val, y_val, log_prior)
        out[metric] = {"as trained": score(metric, test, y_test),
                       "tuned": score(metric, test - tau * log_prior, y_test), "tau": tau}
    return out


def build_parser():
    parser = experiment.parser(__doc__, "imbalanced", seeds=5, module="tools.benchmarks.imbalanced")
    parser.add_argument("--regimes", nargs="+", default=["design"], metavar="REGIME",
                        help="'design' (default), 'held-out', 'all' or regime names")
    parser.add_argument("--surrogates", nargs="+", default=list(SURROGATES), metavar="NAME",
                        help="class-aware surrogates to train with: shipped names or paths "
                             f"(default: {' '.join(SURROGATES)})")
    parser.add_argument("--arms", nargs="+", choices=ANCHORS, default=list(DEFAULT_ANCHORS),
                        help=f"the hand-designed arms (default: {' '.join(DEFAULT_ANCHORS)})")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=["plain"],
                        help="how each surrogate trains: 'plain' (default), on LDAM's cosine last "
                             "layer ('cos'), with its class weight deferred ('drw'), or both")
    parser.add_argument("--quick", action="store_true", help="a fifth of the epochs (checks)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--report", nargs="+", metavar="DIR",
                        help="print the table of earlier runs' results.json (merged) and stop")
    return parser


def rows_of(records):
    """{regime: {arm: {seed: scores}}} from run records."""
    out = {}
    for r in records:
        out.setdefault(r["regime"], {}).setdefault(r["arm"], {})[r["seed"]] = r["scores"]
    return out


def chosen_anchor_gap(value, anchors, arm):
    """The paired mean of ``arm`` minus the anchor chosen without the seed it is paired on: for
    each seed, the anchor with the best mean over the other seeds (leave one seed out), as a user
    would have to choose one from runs they have. None with fewer than two common seeds."""
    seeds = sorted(set(value[(arm, True)]).intersection(*(value[(a, True)] for a in anchors)))
    if len(seeds) < 2:
        return None
    gaps = []
    for seed in seeds:
        rest = [s for s in seeds if s != seed]
        pick = max(anchors, key=lambda a: statistics.fmean(value[(a, True)][s] for s in rest))
        gaps.append(value[(arm, True)][seed] - value[(pick, True)][seed])
    return statistics.fmean(gaps)


def summary(records):
    """Per metric: markdown table and a dict of the figures."""
    by_regime = rows_of(records)
    arms = list(dict.fromkeys(r["arm"] for r in records))
    anchors = [a for a in arms if not a.startswith("reloss")]
    text, figures = [], {}
    for metric, label in METRICS.items():
        header = ["regime", "split", *[f"{arm}{', tuned' if tuned else ''}"
                                        for arm in arms for tuned in (False, True)],
                  "best anchor (tuned)",
                  *[f"{arm}, tuned minus best anchor" for arm in arms if arm not in anchors],
                  *[f"{arm}, tuned minus ce" for arm in arms if arm not in anchors]]
        rows, per_split = [], {}
        for name, by_arm in by_regime.items():
            value = {(arm, tuned): {seed: s[metric]["tuned" if tuned else "as trained"]
                                    for seed, s in by_arm.get(arm, {}).items()}
                     for arm in arms for tuned in (False, True)}
            means = {key: statistics.fmean(v.values()) if v else float("nan")
                     for key, v in value.items()}
            best = max(anchors, key=lambda a: means[(a, True)])
            cells = [f"{means[(arm, tuned)]:.2f}" for arm in arms for tuned in (False, True)]
            cells.append(f"{best} ({means[(best, True)]:.2f})")
            split = REGIMES[name].split if name in REGIMES else "?"
            for reference, key in ((best, "best"), ("ce", "ce")):
                for arm in arms:
                    if arm in anchors:
                        continue
                    p = experiment.paired(value[(reference, True)], value[(arm, True)])
                    cells.append(p.format(2))
                    per_split.setdefault((split, arm, key), []).append(p.mean)
            for arm in arms:
                gap = None if arm in anchors else chosen_anchor_gap(value, anchors, arm)
                if gap is not None:
                    per_split.setdefault((split, arm, "chosen"), []).append(gap)
                # Against cross-entropy as trained, without the post-hoc adjustment.
                if arm not in anchors and value[("ce", False)]:
                    per_split.setdefault((split, arm, "plain"), []).append(
                        experiment.paired(value[("ce", False)], value[(arm, True)]).mean)
            rows.append([name, split, *cells])
        text.append(f"### {label}\n\n" + experiment.markdown_table(header, rows))
        lines = []
        for (split, arm, key), means in per_split.items():
            against = dict(best="the best anchor", ce="cross-entropy, tuned",
                           chosen="the anchor chosen on the other seeds",
                           plain="cross-entropy as trained (no post-hoc adjustment)")[key]
            entry = dict(regimes=len(means), mean=statistics.fmean(means), lowest=min(means))
            figures.setdefault(metric, {}).setdefault(split, {}).setdefault(arm, {})[key] = entry
            lines.append(f"- {split} split, {arm} (tuned) minus {against}: mean over "
                         f"{len(means)} regimes {entry['mean']:+.2f}, lowest {min(means):+.2f}")
        text.append("\n".join(lines) + "\n")
    return "\n".join(text), figures


def load_records(folders):
    records = []
    for folder in folders:
        with open(os.path.join(folder, "results.json"), encoding="utf-8") as f:
            records += json.load(f)["records"]
    return records


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.report:
        text, _ = summary(load_records(args.report))
        print(text)
        return None
    try:
        args.regimes = select(REGIMES, (), args.regimes)
    except ValueError as error:
        parser.error(str(error))
    experiment.check_args(parser, args, ("results.md", "results.json"))
    torch.set_num_threads(args.threads)
    surrogates = {}
    for name in args.surrogates:
        try:
            surrogates[name] = reloss.load_surrogate(name)
        except (FileNotFoundError, ValueError) as error:
            parser.error(f"--surrogates {name!r}: {error}")
        if not isinstance(surrogates[name], reloss.ClassAwareSurrogate):
            parser.error(f"--surrogates {name!r} is a {type(surrogates[name]).__name__}, not a "
                         f"class-aware surrogate")
    arms = [*args.arms, *(f"reloss{'' if variant == 'plain' else '+' + variant}:{name}"
                          for variant in args.variants for name in args.surrogates)]
    started, records = time.time(), []
    for name in args.regimes:
        options = REGIMES[name].options
        data = dataset(options["data"], options["imbalance"])
        print(f"[reloss] regime '{name}' ({REGIMES[name].split}): {REGIMES[name].description}; "
              f"{data['train'][1].numel()} training examples, per class {data['counts']}",
              flush=True)
        for seed in experiment.seeds(args):
            for arm in arms:
                t0 = time.time()
                logits = train(options, arm, seed, surrogates, args.quick)
                result = scores(logits, data)
                records.append(dict(regime=name, arm=arm, seed=seed, scores=result,
                                    seconds=round(time.time() - t0, 2)))
                print(f"[reloss] {name}, {arm}, seed {seed}: " + ", ".join(
                    f"{metric} {r['as trained']:.2f} (tuned {r['tuned']:.2f}, tau {r['tau']:g})"
                    for metric, r in result.items()) + f" ({time.time() - t0:.0f} s)", flush=True)
    text, figures = summary(records)
    record = dict(regimes={n: dict(split=REGIMES[n].split, description=REGIMES[n].description,
                                   options=REGIMES[n].options) for n in args.regimes},
                  arms=arms, seeds=args.seeds, first_seed=args.first_seed, quick=args.quick,
                  taus=list(TAUS), records=records, figures=figures,
                  seconds=round(time.time() - started, 1),
                  provenance=experiment.provenance("imbalanced", argv,
                                                   surrogates=args.surrogates))
    experiment.write_results(args.out, text, record)
    print()
    print(text)
    print(f"[reloss] {time.time() - started:.0f} s in all. Wrote results.md and results.json to "
          f"{args.out}/")
    return record


if __name__ == "__main__":
    main()
