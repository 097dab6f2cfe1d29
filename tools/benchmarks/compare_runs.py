"""Pair the arms of benchmark_training runs with the original-loss arm of another run.

    python -m tools.benchmarks.compare_runs BASELINE/results.json CANDIDATE/results.json [...]
    python -m tools.benchmarks.compare_runs --baseline-arm mixed OLD/results.json NEW/results.json
    python -m tools.benchmarks.compare_runs --merge SEEDS_0-3/results.json SEEDS_4-7/results.json
    python -m tools.benchmarks.compare_runs --proxy ReLossQA \
        OLD_0-4/results.json OLD_5-9/results.json \
        --against NEW/results.json

Runs of ``tools/benchmarks/training.py`` with the same task, regimes, seeds and size train the
original loss identically (a seed fixes initialisation and data order), so a candidate surrogate
can be run with ``--arms surrogate`` alone and compared with the original arm of an earlier run
(or, with ``--baseline-arm``, another of its arms: the default of an earlier surrogate). Prints,
per candidate, regime and arm: the paired mean difference with its standard error and the worst
seed's difference, then the mean over regimes and the lowest regime.

``--proxy ARM`` pairs the ARM runs of ``tools/benchmarks/qa_proxy.py`` results (the baseline files,
merged by seed) with the ARM runs of the ``--against`` files, seed by seed, on every final metric:
two surrogates compared through the same proxy.

``--merge`` reads the files as parts of one run split by seed (``--first-seed``, e.g. one process
per core), merges them and pairs every arm of the merged run with its own ``--baseline-arm``.
"""
import argparse
import importlib
import json
import statistics

from tools.benchmarks import experiment


def load(parser, path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as error:
        parser.error(f"{path}: cannot read it ({error})")


def compare(baseline, candidate, baseline_arm="original"):
    """[(regime, arm, Paired)] of every arm of ``candidate`` but 'original' against the
    ``baseline_arm`` arm of ``baseline``, over the seeds both ran."""
    rows = []
    for regime, arms in candidate["results"].items():
        originals = baseline["results"].get(regime, {}).get(baseline_arm)
        if originals is None:
            continue
        reference = {r["seed"]: r["final"] for r in originals["runs"]}
        for arm, record in arms.items():
            if arm not in ("original", baseline_arm):
                rows.append((regime, arm, experiment.paired(
                    reference, {r["seed"]: r["final"] for r in record["runs"]})))
    return rows


def merge(parser, paths):
    """One benchmark_training result from ``paths``, runs of the same task and size split by
    seed: each regime's arms hold the runs of every file."""
    merged = None
    for path in paths:
        record = load(parser, path)
        if not isinstance(record, dict) or "results" not in record:
            parser.error(f"{path}: not a tools/benchmarks/training.py results.json")
        if merged is None:
            merged = dict(record, results={})
        for key in ("task", "quick", "sha256"):
            if record.get(key) != merged.get(key):
                parser.error(f"{path}: '{key}' is {record.get(key)!r} but {paths[0]}'s is "
                             f"{merged.get(key)!r}; --merge joins parts of one run")
        for regime, arms in record["results"].items():
            for arm, part in arms.items():
                runs = merged["results"].setdefault(regime, {}).setdefault(arm, {"runs": []})
                seeds = {r["seed"] for r in runs["runs"]}
                twice = sorted(seeds & {r["seed"] for r in part["runs"]})
                if twice:
                    parser.error(f"{path}: {regime}/{arm} seed(s) {twice} are in another file "
                                 "too; --merge joins runs of different seeds")
                runs["runs"].extend(part["runs"])
    return merged


def proxy_finals(parser, paths, arm):
    """{metric: {seed: final value}} of the ``arm`` runs of qa_proxy results, merged."""
    finals = {}
    for path in paths:
        record = load(parser, path)
        runs = record.get("curves", {}).get(arm) if isinstance(record, dict) else None
        if runs is None:
            parser.error(f"{path}: not a tools/benchmarks/qa_proxy.py result with a {arm!r} arm")
        for run in runs:
            for metric, value in run["curve"][-1].items():
                if metric not in ("epoch", "step", "train_loss"):
                    finals.setdefault(metric, {})[run["seed"]] = value
    return finals


def compare_proxies(parser, arm, baselines, candidates):
    before, after = proxy_finals(parser, baselines, arm), proxy_finals(parser, candidates, arm)
    rows = []
    for metric in before:
        try:
            paired = experiment.paired(before[metric], after.get(metric, {}))
        except ValueError as error:
            parser.error(str(error))
        rows.append([metric, paired.format(2), f"{min(paired.differences):+.2f}",
                     ", ".join(map(str, paired.seeds))])
    print(f"{arm} of {', '.join(candidates)} minus {arm} of {', '.join(baselines)}, by seed:")
    print(experiment.markdown_table(["metric", "paired mean +- SE", "worst seed", "seeds"],
                                    rows))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("baseline", help="results.json of a run with the 'original' arm")
    parser.add_argument("candidates", nargs="*", help="results.json of runs to compare with it")
    parser.add_argument("--baseline-arm", default="original",
                        help="the baseline's arm to pair with (default 'original')")
    parser.add_argument("--proxy", metavar="ARM",
                        help="pair the ARM runs of qa_proxy results: the baseline and the "
                             "positional files against the --against files")
    parser.add_argument("--against", nargs="+", default=[], metavar="RESULTS_JSON",
                        help="with --proxy: the candidate qa_proxy results")
    parser.add_argument("--merge", action="store_true",
                        help="the files are parts of one run split by seed: merge them and pair "
                             "its arms with its --baseline-arm")
    args = parser.parse_args(argv)
    if args.merge and args.proxy:
        parser.error("--merge and --proxy cannot be used together")
    if args.proxy:
        if not args.against:
            parser.error("--proxy needs --against RESULTS_JSON [...]")
        return compare_proxies(parser, args.proxy, [args.baseline, *args.candidates],
                               args.against)
    if args.merge:
        paths = [args.baseline, *args.candidates]
        baseline = merge(parser, paths)
        candidates = [(" + ".join(paths), baseline)]
    elif not args.candidates:
        parser.error("give at least one candidate results.json")
    else:
        baseline = load(parser, args.baseline)
        candidates = [(path, load(parser, path)) for path in args.candidates]
    for path, candidate in candidates:
        for key in ("task", "quick"):
            if candidate.get(key) != baseline.get(key):
                parser.error(f"{path}: '{key}' is {candidate.get(key)!r} but the baseline's is "
                             f"{baseline.get(key)!r}")
        rows = compare(baseline, candidate, args.baseline_arm)
        if not rows:
            parser.error(f"{path}: no regime with a {args.baseline_arm!r} arm in common with "
                         f"{args.baseline}")
        print(f"{path} (surrogate {candidate['checkpoint']}, sha256 {candidate['sha256'][:12]}...) "
              f"against the {args.baseline_arm} arm of "
              f"{'the same run' if args.merge else args.baseline}:")
        reference = importlib.import_module(f"tools.benchmarks.reference.{baseline['task']}")
        tolerance = reference.TOLERANCE
        digits = 3 if tolerance < 0.1 else 2
        table = [[regime, arm, paired.format(digits), f"{min(paired.differences):+.{digits}f}"]
                 for regime, arm, paired in rows]
        print(experiment.markdown_table(["regime", "arm", "paired mean +- SE", "worst seed"],
                                        table))
        for arm in dict.fromkeys(arm for _, arm, _ in rows):
            print(f"{arm}: {over_regimes([p for _, a, p in rows if a == arm], digits)}")
        print()


def over_regimes(pairs, digits=2):
    """'mean over regimes M (+- SE), lowest L' of an arm's Paired per regime; the SE is that of
    the per-seed mean over regimes, over the seeds every regime ran (none if fewer than 2)."""
    means = [p.mean for p in pairs]
    text = f"mean over regimes {statistics.fmean(means):+.{digits}f}"
    seeds = sorted(set.intersection(*(set(p.seeds) for p in pairs)))
    if len(seeds) > 1:
        by_seed = [dict(zip(p.seeds, p.differences, strict=True)) for p in pairs]
        per_seed = {s: statistics.fmean(d[s] for d in by_seed) for s in seeds}
        se = experiment.paired(dict.fromkeys(seeds, 0.0), per_seed).se
        text += f" +- {se:.{digits}f} (per-seed means over regimes, {len(seeds)} seeds)"
    return f"{text}, lowest {min(means):+.{digits}f}"


if __name__ == "__main__":
    main()
