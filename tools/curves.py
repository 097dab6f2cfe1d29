"""Plotting runs of several seeds: the mean curve, with the band from the lowest to the highest."""
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
