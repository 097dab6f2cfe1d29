"""How much of the ``nat`` surrogate's gradient its bag-of-n-grams distances carry.

    python -m tools.benchmarks.nat_ngram_share work_dirs/nat/preds/ng1_default.pt [--checkpoint nat]

The sentence-level ``nat`` surrogate is ``CE + sum_k a_k d_k`` (token cross-entropy plus learned
weights times the bag-of-n-grams distances). With a stored prediction file (from ``python -m
tools.benchmarks.reference.nat --out FILE``: gold-length logits of reference NATs at every tenth of
their training, one group per snapshot) this prints, per snapshot, the share of the distances in the
gradient at the logits, ``|g_ngram| / (|g_ngram| + |g_CE|)``, the definition the training benchmark
uses for a mixed loss's share.
"""
import argparse
import statistics

import torch

import reloss


def ngram_share(surrogate, logits, targets, weights):
    """``|g_ngram| / (|g_ngram| + |g_CE|)`` at ``logits`` (N, T, V) for a sentence-level ``nat``
    surrogate, g_CE the gradient of its cross-entropy term alone and g_ngram the rest."""
    if not isinstance(surrogate, reloss.SequenceSurrogate):
        raise ValueError(f"'surrogate' should be a sentence-level nat surrogate "
                         f"(SequenceSurrogate) but got {type(surrogate).__name__}")
    logits = logits.detach().requires_grad_(True)
    full = torch.autograd.grad(surrogate(logits, targets, weights), logits)[0]
    saved = surrogate.theta.detach().clone()
    try:
        with torch.no_grad():
            surrogate.theta.fill_(-80.0)  # softplus(-80) = 0 in float32: cross-entropy alone
        ce = torch.autograd.grad(surrogate(logits, targets, weights), logits)[0]
    finally:
        with torch.no_grad():
            surrogate.theta.copy_(saved)
    ngram = (full - ce).norm()
    return float(ngram / (ngram + ce.norm()))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("predictions", help="a 'nat' prediction file with groups")
    parser.add_argument("--checkpoint", default="nat", help="shipped name or checkpoint path")
    parser.add_argument("--sentences", type=int, default=64,
                        help="sentences per snapshot (default 64)")
    args = parser.parse_args(argv)
    if args.sentences < 1:
        parser.error(f"--sentences should be at least 1 but got {args.sentences}")
    surrogate = reloss.load_surrogate(args.checkpoint)
    if not isinstance(surrogate, reloss.SequenceSurrogate):
        parser.error(f"--checkpoint {args.checkpoint!r} is not a sentence-level nat surrogate")
    data = torch.load(args.predictions, weights_only=True)
    if not isinstance(data, dict) or data.get("task") != "nat" or "group" not in data:
        parser.error(f"{args.predictions} is not a 'nat' prediction file with groups")
    shares = []
    for group in data["group"].unique().tolist():
        index = (data["group"] == group).nonzero().flatten()[:args.sentences]
        shares.append(ngram_share(surrogate, data["logits"][index], data["targets"][index],
                                  data["target_weights"][index]))
    weights = ", ".join(f"{w:.2f}" for w in surrogate.ngram_weights.tolist())
    print(f"weights a_1..a_{surrogate.ngrams}: {weights}")
    print("the distances' share of the gradient, per snapshot: "
          + " ".join(f"{s:.2f}" for s in shares))
    print(f"mean {statistics.fmean(shares):.2f}, range {min(shares):.2f}-{max(shares):.2f}")


if __name__ == "__main__":
    main()
