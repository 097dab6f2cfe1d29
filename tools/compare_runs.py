"""Pair the arms of benchmark_training runs with the original-loss arm of another run.

    python -m tools.compare_runs BASELINE/results.json CANDIDATE/results.json [...]

Runs of ``tools/benchmark_training.py`` with the same task, regimes, seeds and size train the
original loss identically (a seed fixes initialisation and data order), so a candidate surrogate
can be run with ``--arms surrogate`` alone and compared with the original arm of an earlier run.
Prints, per candidate, regime and arm: the paired mean difference with its standard error and the
worst seed's difference, then the mean over regimes and the lowest regime.
"""
import argparse
import importlib
import json
import statistics

from tools import experiment


def load(parser, path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as error:
        parser.error(f"{path}: cannot read it ({error})")


def compare(baseline, candidate):
    """[(regime, arm, Paired)] of every arm of ``candidate`` but 'original' against the
    original arm of ``baseline``, over the seeds both ran."""
    rows = []
    for regime, arms in candidate["results"].items():
        originals = baseline["results"].get(regime, {}).get("original")
        if originals is None:
            continue
        reference = {r["seed"]: r["final"] for r in originals["runs"]}
        for arm, record in arms.items():
            if arm != "original":
                rows.append((regime, arm, experiment.paired(
                    reference, {r["seed"]: r["final"] for r in record["runs"]})))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("baseline", help="results.json of a run with the 'original' arm")
    parser.add_argument("candidates", nargs="+", help="results.json of runs to compare with it")
    args = parser.parse_args(argv)
    baseline = load(parser, args.baseline)
    for path in args.candidates:
        candidate = load(parser, path)
        for key in ("task", "quick"):
            if candidate.get(key) != baseline.get(key):
                parser.error(f"{path}: '{key}' is {candidate.get(key)!r} but the baseline's is "
                             f"{baseline.get(key)!r}")
        rows = compare(baseline, candidate)
        if not rows:
            parser.error(f"{path}: no regime in common with {args.baseline}")
        print(f"{path} (surrogate {candidate['checkpoint']}, sha256 {candidate['sha256'][:12]}...) "
              f"against the original arm of {args.baseline}:")
        tolerance = importlib.import_module(f"tools.reference.{baseline['task']}").TOLERANCE
        digits = 3 if tolerance < 0.1 else 2
        table = [[regime, arm, paired.format(digits), f"{min(paired.differences):+.{digits}f}"]
                 for regime, arm, paired in rows]
        print(experiment.markdown_table(["regime", "arm", "paired mean +- SE", "worst seed"],
                                        table))
        means = [paired.mean for _, _, paired in rows]
        print(f"mean over regimes {statistics.fmean(means):+.{digits}f}, lowest "
              f"{min(means):+.{digits}f}\n")


if __name__ == "__main__":
    main()
