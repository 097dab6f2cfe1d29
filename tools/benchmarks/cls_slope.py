"""The shape of a cls surrogate: its gradient at one sample over cross-entropy's, by cross-entropy.

The cls surrogate is a learned function of each sample's cross-entropy. Where its slope relative
to cross-entropy rises, it weighs badly classified samples (and noisy labels) more than
cross-entropy does; where it falls, less. For each surrogate and each per-sample cross-entropy
on the grid, one sample of 10 classes whose label has that cross-entropy (the other logits
equal) is given to the surrogate and to cross-entropy, and the ratio of the gradient norms at
its logits is printed, as a markdown table:

    python -m tools.benchmarks.cls_slope cls work_dirs/my_cls/surrogate.pt
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

import reloss
from reloss.tasks.cls import ClassAwareSurrogate
from tools.benchmarks import experiment

GRID = (0.01, 0.1, 0.5, 1.0, 2.0, 4.0, 8.0, 12.0)


def one_sample(cross_entropy, classes=10):
    """Logits (1, C) and label (1,): label 0 with ``cross_entropy`` (> 0), the other logits 0."""
    if not cross_entropy > 0:
        raise ValueError(f"'cross_entropy' should be > 0 but got {cross_entropy}")
    lead = -math.log(math.expm1(cross_entropy) / (classes - 1))
    logits = torch.zeros(1, classes, dtype=torch.float64)
    logits[0, 0] = lead
    return logits, torch.zeros(1, dtype=torch.long)


def slope_ratios(surrogate, grid=GRID, classes=10):
    """[||d surrogate / d z|| / ||d CE / d z||] at one sample, per cross-entropy in ``grid``."""
    out = []
    for value in grid:
        logits, label = one_sample(value, classes)
        logits = logits.float().requires_grad_()
        (learned,) = torch.autograd.grad(surrogate(logits, label, None), logits)
        (original,) = torch.autograd.grad(F.cross_entropy(logits, label), logits)
        out.append(float(learned.norm() / original.norm()))
    return out


def main(argv=None):
    parser = experiment.doc_parser(__doc__, "tools.benchmarks.cls_slope")
    parser.add_argument("surrogates", nargs="+", metavar="SURROGATE",
                        help="shipped names or checkpoint paths of cls surrogates")
    args = parser.parse_args(argv)
    loaded = {}
    for name in args.surrogates:
        try:
            surrogate = reloss.load_surrogate(name)
        except (FileNotFoundError, ValueError) as error:
            parser.error(f"SURROGATE {name!r}: {error}")
        if surrogate.task != "cls" or isinstance(surrogate, ClassAwareSurrogate):
            parser.error(f"SURROGATE {name!r} should be a cls surrogate of the per-sample form "
                         f"(not class-aware) but is a '{surrogate.task}' "
                         f"{type(surrogate).__name__}")
        loaded[name] = surrogate
    lines = ["| per-sample cross-entropy | " + " | ".join(f"{v:g}" for v in GRID) + " |",
             "|---" * (len(GRID) + 1) + "|"]
    for name, surrogate in loaded.items():
        lines.append(f"| `{name}` | " + " | ".join(f"{r:.2f}" for r in slope_ratios(surrogate))
                     + " |")
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    main()
