"""What the experiments that train each arm on several seeds share: the digits demo, the pose and
translation proxies and the training benchmark.

- :func:`parser`: ``--out``, ``--force``, ``--seeds`` and ``--first-seed``; :func:`check_args`
  validates them and applies the one overwrite rule: a run refuses an ``--out`` that already
  holds any output it would write, unless ``--force`` asks to replace them.
- :func:`runs`, :func:`seed_runs` and :func:`run_all`: every (seed, arm), each with its own
  progress bar.
- :func:`quiet` and :func:`train_mmengine`: a run's console output, warnings and log records go to
  its log file instead of the terminal.
- :func:`paired`: the per-seed paired difference of an arm against the baseline.
- :func:`provenance`, :func:`markdown_table`, :func:`write_results`, :func:`plot_seeds` and
  :func:`report`: what every experiment writes (results.json, results.md, a PNG of the seeds) and
  prints at its end.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime
import glob
import importlib.metadata
import json
import logging
import math
import os
import platform
import re
import shlex
import shutil
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field

#: What every experiment writes to --out besides its runs' own folders.
RESULTS = ("results.md", "results.json", "curves.png")


def doc_parser(doc, module=None):
    """An argument parser described by a tool's docstring: its first line, then the rest after
    the options, as written; its usage line reads ``python -m MODULE``."""
    head, _, rest = doc.partition("\n")
    return argparse.ArgumentParser(prog=f"python -m {module}" if module else None,
                                   description=head, epilog=rest.strip("\n"),
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def parser(doc, name, seeds, out=None, module=None):
    """:func:`doc_parser` with ``--out`` (default ``out``, else work_dirs/NAME/<date>_<time>),
    ``--force``, ``--seeds`` (default ``seeds``) and ``--first-seed``."""
    result = doc_parser(doc, module)
    default = out or os.path.join("work_dirs", name, time.strftime("%Y%m%d_%H%M%S"))
    result.add_argument("--out", default=default,
                        help=f"output folder (default {out or f'work_dirs/{name}/<date>_<time>'})")
    result.add_argument("--force", action="store_true",
                        help="replace outputs of an earlier run that --out already holds")
    result.add_argument("--seeds", type=int, default=seeds,
                        help=f"seeds per arm, the same for every arm (default {seeds})")
    result.add_argument("--first-seed", type=int, default=0,
                        help="the seeds are FIRST_SEED, FIRST_SEED + 1, ... (default 0)")
    return result


def seeds(args):
    """The seeds of a run: ``--seeds`` of them from ``--first-seed``."""
    return range(args.first_seed, args.first_seed + args.seeds)


def check_args(parser, args, outputs):
    """Check ``--seeds`` and ``--first-seed``, then the overwrite rule for ``outputs`` (names of
    files and folders in ``--out``): if ``--out`` holds any of them, stop with an error naming
    ``--out`` and the first one, unless ``--force``; then remove them, so that nothing of the
    earlier run is mixed into the new one."""
    if args.seeds < 1:
        parser.error(f"--seeds should be a positive number of seeds but got {args.seeds}")
    if args.first_seed < 0:
        parser.error(f"--first-seed should be >= 0 but got {args.first_seed}")
    present = [name for name in outputs if os.path.lexists(os.path.join(args.out, name))]
    if present and not args.force:
        more = f" (and {len(present) - 1} more of this run's outputs)" if len(present) > 1 else ""
        parser.error(f"--out {args.out} already holds {present[0]}{more}; pass --force to "
                     f"replace them, or choose another --out")
    for name in present:
        path = os.path.join(args.out, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)


@dataclass(frozen=True)
class Run:
    """One training run: an arm (as tables name it) and a seed."""

    arm: str
    seed: int

    @property
    def tag(self):
        """The run's name in file names: 'ReLossCls', seed 2 -> 'relosscls_seed2'."""
        return f"{re.sub(r'[^a-z0-9]+', '_', self.arm.lower()).strip('_')}_seed{self.seed}"

    def __str__(self):
        return f"{self.arm}, seed {self.seed}"


def runs(arms, seed_list):
    """Every (seed, arm), seed by seed, so that the arms of a seed finish together."""
    return [Run(arm, seed) for seed in seed_list for arm in arms]


def seed_runs(parser, args, arms, outputs, configs=False):
    """The runs of ``arms`` over the seeds of ``args``, after :func:`check_args` for what they
    write to ``--out``: :data:`RESULTS`, ``outputs`` and each run's folder (and, with
    ``configs``, its config file ``<run>.py``)."""
    all_runs = runs(arms, seeds(args))
    per_run = [name for run in all_runs
               for name in ((run.tag, f"{run.tag}.py") if configs else (run.tag,))]
    check_args(parser, args, [*RESULTS, *outputs, *per_run])
    return all_runs


def run_all(all_runs, train, describe, jobs=1):
    """Train each run with ``train(run, bar) -> result``, ``jobs`` at a time (threads: for
    trainings in other processes), and return ``{arm: [result, ...]}`` in seed order.

    Each run gets its own progress bar (tqdm, on stderr) that ``train`` drives; when it finishes,
    the bar gives way to the line ``[reloss] ARM, seed S: describe(result) (N s)``.
    """
    from tqdm import tqdm

    stream = sys.stderr

    def one(run):
        started = time.time()
        with tqdm(desc=str(run), leave=False, file=stream, dynamic_ncols=True) as bar:
            result = train(run, bar)
        tqdm.write(f"[reloss] {run}: {describe(result)} ({time.time() - started:.0f} s)",
                   file=sys.stdout)
        sys.stdout.flush()
        return result

    if jobs == 1:
        results = [one(run) for run in all_runs]
    else:
        with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
            results = list(pool.map(one, all_runs))
    by_arm = {}
    for run, result in sorted(zip(all_runs, results, strict=True), key=lambda r: r[0].seed):
        by_arm.setdefault(run.arm, []).append(result)
    return by_arm


def _console_handlers():
    """The stream handlers (not file handlers) of Python's and mmengine's loggers."""
    loggers = [logging.getLogger()] + [logger for logger in logging.Logger.manager.loggerDict
                                       .values() if isinstance(logger, logging.Logger)]
    try:
        from mmengine.logging import MMLogger

        loggers += list(MMLogger._instance_dict.values())
    except ImportError:
        pass
    return [handler for logger in loggers for handler in logger.handlers
            if type(handler) is logging.StreamHandler]


@contextlib.contextmanager
def quiet(log_path):
    """Send what runs inside to ``log_path`` (appended): stdout, stderr, the warnings shown, and
    the records of every logger that writes to the console (Python's and mmengine's, including
    the loggers created inside, such as each Runner's)."""
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    console = (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)
    with open(log_path, "a", encoding="utf-8") as log:
        moved = [(handler, handler.stream) for handler in _console_handlers()
                 if handler.stream in console]
        for handler, _ in moved:
            handler.setStream(log)
        stdout = sys.stdout

        def show(message, category, filename, lineno, file=None, line=None):
            log.write(warnings.formatwarning(message, category, filename, lineno, line))

        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log), \
                    warnings.catch_warnings():
                warnings.showwarning = show
                yield log
        finally:
            for handler, stream in moved:
                handler.setStream(stream)
            for handler in _console_handlers():  # created inside: back to the console
                if handler.stream is log:
                    handler.setStream(stdout)


def mmengine_progress(bar, metric=None):
    """An mmengine hook that advances ``bar`` by one per training iteration (its total: the run's
    iterations) and, after each validation, shows ``metric``'s value beside it."""
    from mmengine.hooks import Hook

    class Progress(Hook):
        priority = "VERY_LOW"

        def before_train(self, runner):
            bar.reset(total=runner.max_iters)
            bar.update(runner.iter)

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            bar.update(1)

        def after_val_epoch(self, runner, metrics=None):
            if metric is not None and metrics and metric in metrics:
                bar.set_postfix_str(f"{metric} {metrics[metric]:.4g}")

    return Progress()


def train_mmengine(config, work_dir, bar, metric=None):
    """Train ``config`` with ``tools/train.py`` in this process, quietly: the Runner's console
    output and warnings go to WORK_DIR/console.log (its own log is in WORK_DIR too) and ``bar``
    counts the iterations. Returns the Runner."""
    from tools import train

    with quiet(os.path.join(work_dir, "console.log")):
        runner = train.build_runner([config, "--work-dir", work_dir])
        runner.register_hook(mmengine_progress(bar, metric))
        runner.train()
    return runner


def mmengine_scalars(work_dir, key):
    """The records of a Runner's scalar log (``vis_data/scalars.json``) that hold ``key``."""
    (log,) = glob.glob(os.path.join(work_dir, "*", "vis_data", "scalars.json"))
    with open(log, encoding="utf-8") as f:
        return [record for record in map(json.loads, f) if key in record]


@dataclass(frozen=True)
class Paired:
    """An arm against the baseline, seed by seed: ``differences`` (arm - baseline, per seed),
    their ``mean`` and its standard error ``se`` (NaN for a single seed)."""

    seeds: list
    differences: list
    mean: float
    se: float

    @property
    def verdict(self):
        """'tie' where |mean| <= SE, else 'higher' or 'lower' (the arm against the baseline);
        'one seed' where there is no SE, 'n/a' where a difference is not finite."""
        if not math.isfinite(self.mean):
            return "n/a"
        if not math.isfinite(self.se):
            return "one seed"
        if abs(self.mean) <= self.se:
            return "tie"
        return "higher" if self.mean > 0 else "lower"

    def format(self, digits=2):
        """'+0.52 +- 0.31 (tie)'; '+0.52 (one seed)' without an SE."""
        if math.isnan(self.se):
            return f"{self.mean:+.{digits}f} ({self.verdict})"
        return f"{self.mean:+.{digits}f} +- {self.se:.{digits}f} ({self.verdict})"

    def as_dict(self):
        """The fields and the verdict, for results.json (null where a value is not finite)."""
        def finite(x):
            return x if math.isfinite(x) else None

        return dict(seeds=self.seeds, differences=[finite(d) for d in self.differences],
                    mean=finite(self.mean), se=finite(self.se), verdict=self.verdict)


def paired(baseline, arm):
    """``arm - baseline`` over the seeds both ran: ``baseline`` and ``arm`` map seed -> value."""
    common = sorted(set(baseline) & set(arm))
    if not common:
        raise ValueError(f"paired statistics need seeds run by both arms but got baseline seeds "
                         f"{sorted(baseline)} and arm seeds {sorted(arm)}")
    differences = [float(arm[seed]) - float(baseline[seed]) for seed in common]
    if not all(map(math.isfinite, differences)):
        return Paired(common, differences, float("nan"), float("nan"))
    mean = statistics.fmean(differences)
    se = (statistics.stdev(differences) / math.sqrt(len(differences))
          if len(differences) > 1 else float("nan"))
    return Paired(common, differences, mean, se)


def paired_dicts(paired):
    """``{arm: {metric: Paired}}`` as results.json keeps it: each :meth:`Paired.as_dict`."""
    return {arm: {metric: p.as_dict() for metric, p in metrics.items()}
            for arm, metrics in paired.items()}


def mean_std(values, digits=2):
    """'mean +- sample standard deviation' of ``values`` (0 for a single one)."""
    values = list(values)
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.{digits}f} +- {spread:.{digits}f}"


def seed_curves(curves):
    """{arm: [each seed's curve]} from {arm: [dict(seed=..., curve=...), ...]}."""
    return {arm: [run["curve"] for run in runs] for arm, runs in curves.items()}


def _version(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def surrogate_sha256(name_or_path):
    """The sha256 of a surrogate checkpoint file: a shipped one by name, or a path."""
    from reloss import checkpoint

    entry = checkpoint.shipped().get(name_or_path)
    path = os.path.join(checkpoint.CHECKPOINT_DIR, entry["file"]) if entry else name_or_path
    return checkpoint.sha256_file(path)


def provenance(tool, argv=None, surrogates=(), packages=()):
    """Where a result comes from: the command line (``python -m tools.benchmarks.TOOL ARGV``), the
    date, Python's, torch's, reloss's and ``packages``' versions, the sha256 of each surrogate
    checkpoint used (shipped names or paths) and the machine."""
    import torch

    argv = sys.argv[1:] if argv is None else list(argv)
    versions = {name: _version(name) for name in ("reloss", "torch", "numpy", *packages)}
    versions["python"] = platform.python_version()
    machine = dict(platform=platform.platform(), machine=platform.machine(),
                   processor=platform.processor(), cpus=os.cpu_count(),
                   torch_threads=torch.get_num_threads(),
                   gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
    return dict(command=shlex.join(["python", "-m", f"tools.benchmarks.{tool}", *argv]),
                date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                versions=versions,
                surrogates={str(name): surrogate_sha256(name) for name in surrogates},
                machine=machine)


def markdown_table(header, rows):
    """A markdown table: ``header`` cells, then ``rows`` of cells."""
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"a row should have {len(header)} cells, as the header, but got "
                             f"{len(row)}: {row}")
        lines.append("| " + " | ".join(map(str, row)) + " |")
    return "\n".join(lines) + "\n"


def write_results(out, markdown, record):
    """results.md (``markdown``) and results.json (``record``) in ``out``."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.md"), "w", encoding="utf-8") as f:
        f.write(markdown)
    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
        f.write("\n")


def report(out, heading, table, record, started, runs):
    """The end of a seed experiment: results.md (``heading`` and ``table``) and results.json
    (``record``, with ``seconds`` since ``started`` added) written to ``out``, the heading and the
    table printed, then a line with the time and where the outputs are; ``runs`` says what each
    run's folder holds."""
    record = dict(record, seconds=round(time.time() - started, 1))
    write_results(out, heading + "\n\n" + table, record)
    print()
    print(heading)
    print(table)
    print(f"[reloss] {time.time() - started:.0f} s in all. Wrote results.md, results.json and "
          f"curves.png to {out}/; {runs}")


@dataclass
class Panel:
    """One plot of :func:`plot_seeds`: ``series`` maps a label to (x, runs), runs being one list
    of values per seed, each as long as x."""

    xlabel: str
    ylabel: str
    series: dict = field(default_factory=dict)
    title: str = ""


def plot_seeds(path, panels, title):
    """A PNG (matplotlib, Agg) with the panels side by side, four to a row: each series' mean
    over seeds, shaded from the lowest to the highest seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    columns = min(len(panels), 4)
    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.8 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, panel in zip(list(axes.flat)[:len(panels)], panels, strict=True):
        for label, (x, seed_runs) in panel.series.items():
            values = np.asarray(seed_runs, dtype=np.float64)
            (line,) = ax.plot(x, values.mean(0), marker="o", markersize=3, label=label)
            ax.fill_between(x, values.min(0), values.max(0), color=line.get_color(), alpha=0.15)
        ax.set_xlabel(panel.xlabel)
        ax.set_ylabel(panel.ylabel)
        if panel.title:
            ax.set_title(panel.title, fontsize=10)
        ax.legend(fontsize=8)
    fig.suptitle(f"{title} (mean of seeds, band: min to max)", fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
