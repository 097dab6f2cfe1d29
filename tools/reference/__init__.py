"""Reference training tasks for ``tools/benchmark_training.py``: small models trained from scratch
on generated or bundled data (no download), with the original loss, the surrogate, or both.

Each module (``cls``, ``pose``, ``nat``) defines:

- ``METRIC`` (str): the metric's label in tables, e.g. "test accuracy (%)".
- ``CHANCE`` (float): the metric of a model that learned nothing (collapse and "trains" checks).
- ``VARIANTS`` (tuple of str): the data settings each arm is trained on, e.g. ("clean", "noisy").
- ``original_loss(pred, target, weight)``: the loss the surrogate replaces, a scalar tensor, with
  the call of the surrogate (``weight`` may be None).
- ``timing_inputs(generator)``: (pred, target, weight) at the sizes the loss-alone timing uses.
- ``run(variant, loss_fn, seed, quick, progress=None)``: trains a fresh model (``seed`` fixes
  its initialisation and the data order, the same for every arm) with
  ``loss_fn(pred, target, weight) -> scalar``, and returns
  ``dict(curve=[[fraction of training done, metric], ...], final=metric)``; the curve holds the
  metric at 0.1 (after the first 10% of training) and at 1.0. ``progress(fraction)`` may be called
  as training goes on. ``quick`` shrinks the run, for the tests.
"""
