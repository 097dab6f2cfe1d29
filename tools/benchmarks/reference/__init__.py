"""Reference training tasks for ``tools/benchmarks/training.py``: small models trained from scratch
on generated or bundled data, or on real data that ``tools.benchmarks.data`` fetches into its
cache on first use (MNIST for some ``cls`` regimes), with the original loss, the surrogate, or both.

Each task module (``cls``, ``pose``, ``nat``, ``qa``) defines (``longtail`` is not one: it holds
the long-tail losses a long-tail benchmark compares with):

- ``METRIC`` (str): the metric's label in tables, e.g. "test accuracy (%)".
- ``CHANCE`` (float): the metric of a model that learned nothing (collapse and "trains" checks).
- ``REGIMES`` (dict of name -> :class:`Regime`): the regime matrix, each a reference model x data
  x schedule x optimiser, in the design split (where designs, pretraining data and defaults are
  chosen) or the held-out split (measured at the end, never tuned on).
- ``REFERENCE`` (tuple of names): the regimes the benchmark runs when none are named.
- ``original_loss(pred, target, weight)``: the loss the surrogate replaces, a scalar tensor, with
  the call of the surrogate (``weight`` may be None).
- ``timing_inputs(generator)``: (pred, target, weight) at the sizes the loss-alone timing uses.
- ``run(regime, loss_fn, seed, quick, progress=None)``: trains a fresh model in the regime named
  ``regime`` (``seed`` fixes its initialisation and the data order, the same for every arm) with
  ``loss_fn(pred, target, weight) -> scalar``, and returns
  ``dict(curve=[[fraction of training done, metric], ...], final=metric)``; the curve holds the
  metric at 0.1 (after the first 10% of training) and at 1.0. ``progress(fraction)`` may be called
  as training goes on. ``quick`` shrinks the run (a few minutes per regime for every arm and
  seed), for checks and tests.
"""
from dataclasses import dataclass, field

SPLITS = ("design", "held-out")


@dataclass(frozen=True)
class Regime:
    """One cell of a task's regime matrix: its split ('design' or 'held-out'), a short
    description for tables, and the options its task's ``run`` trains with."""

    split: str
    description: str
    options: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.split not in SPLITS:
            raise ValueError(f"'split' should be one of {SPLITS} but got {self.split!r}")


def regime(regimes, name):
    """The Regime called ``name``, with an error that lists the known ones."""
    if name not in regimes:
        raise ValueError(f"'regime' should be one of {sorted(regimes)} but got {name!r}")
    return regimes[name]


def select(regimes, reference, names):
    """Regime names for ``--regimes``: 'reference' (the default), 'design', 'held-out', 'all', or
    regime names, in the matrix's order, each once. Raises ValueError naming an unknown one."""
    chosen = []
    for name in names or ["reference"]:
        if name == "reference":
            group = list(reference)
        elif name == "all":
            group = list(regimes)
        elif name in SPLITS:
            group = [n for n, r in regimes.items() if r.split == name]
        elif name in regimes:
            group = [name]
        else:
            raise ValueError(f"'--regimes' takes 'reference', 'all', "
                             f"{', '.join(map(repr, SPLITS))} or regime names "
                             f"({', '.join(regimes)}) but got {name!r}")
        chosen += [n for n in group if n not in chosen]
    return [n for n in regimes if n in chosen]


def prediction_parser(models, original):
    """The command line of a task's ``main`` that stores predictions along training: ``--out``,
    ``--checkpoint`` and ``--seeds``; ``models`` names the reference models, ``original`` the
    loss trained with by default."""
    import argparse

    parser = argparse.ArgumentParser(
        description=f"Store predictions of {models} along their training, for "
                    f"reloss pretrain --data.")
    parser.add_argument("--out", required=True, help="the prediction file (.pt) to write")
    parser.add_argument("--checkpoint", help="train with this surrogate (a name or a path) "
                                             f"instead of {original}")
    parser.add_argument("--seeds", type=int, nargs="+", default=[100, 101])
    return parser


def checkpoint_loss(parser, checkpoint, task, default):
    """The surrogate ``--checkpoint`` names, checked to be one for ``task``; ``default`` when
    none is given."""
    if not checkpoint:
        return default
    import reloss

    surrogate = reloss.load_surrogate(checkpoint)
    if surrogate.task != task:
        parser.error(f"--checkpoint {checkpoint!r} is a '{surrogate.task}' surrogate, "
                     f"not a '{task}' one")
    return surrogate


def write_predictions(parser, out, store, metric, digits=2):
    """Run ``store()`` (it writes ``out`` and returns the final metric per seed) unless ``out``
    exists, and report: a user's file is never replaced."""
    import os

    if os.path.exists(out):
        parser.error(f"--out {out} already exists; remove it or choose another path")
    finals = store()
    print(f"wrote {out}; final {metric}: " + ", ".join(f"{f:.{digits}f}" for f in finals))
