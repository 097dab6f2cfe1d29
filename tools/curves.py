"""What the experiments that train several seeds share (the digits demo, the pose and NAT proxies):
the mean curve with the band from the lowest to the highest seed, the spread, the command line's
output folder."""
import argparse
import os
import statistics
import time

import numpy as np


def plot_seeds(ax, x, runs, label):
    """Plot on ``ax`` the mean over ``runs`` (seeds x points) against ``x``, shading min to max."""
    values = np.asarray(runs, dtype=np.float64)
    line, = ax.plot(x, values.mean(0), marker="o", markersize=3, label=label)
    ax.fill_between(x, values.min(0), values.max(0), color=line.get_color(), alpha=0.15)


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(plt, fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def std(values):
    """Sample standard deviation; 0 for a single value."""
    return statistics.stdev(values) if len(values) > 1 else 0.0


def experiment_parser(doc, name):
    """A parser described by a tool's docstring, with ``--out`` (default work_dirs/NAME/<time>)."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=doc.split("\n", 2)[2])
    parser.add_argument("--out", default=os.path.join("work_dirs", name,
                                                      time.strftime("%Y%m%d_%H%M%S")),
                        help="output folder (new)")
    return parser


def refuse_existing(parser, out):
    """Outputs never replace earlier ones: a non-empty --out is refused."""
    if os.path.exists(out) and os.listdir(out):
        parser.error(f"--out {out} already exists and is not empty; choose another")
