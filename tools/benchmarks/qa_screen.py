"""Screen fixed QA loss forms on the qa regime matrix (tiny BERT), paired with the default loss.

    python -m tools.benchmarks.qa_screen --regimes proxy short-3f long-5f-4k --seeds 4 \
        --variants span half span-risk:0.3 risk:0.5:0.3 --out work_dirs/qa_screen/design

Each variant is a plain loss built from ``reloss.tasks.qa`` (no learned weight), trained with
``tools.benchmarks.reference.qa.run`` like the training benchmark's arms:

- ``default``: ``(CE(start) + CE(end)) / 2``, the default QA loss (always run: the baseline);
- ``span``: the span cross-entropy (one softmax over the decoder's spans);
- ``half``: half the span cross-entropy plus half the default loss;
- ``span-risk:A``: the span cross-entropy + A (1 - E_span[F1]);
- ``risk:A:T``: the default loss + A (1 - E[F1]) with start and end logits divided by T.

Writes results.json (final dev F1 per variant, regime and seed, with provenance) and results.md
(each variant minus the default loss, paired by seed) to --out.
"""
import sys

import torch

from reloss.tasks.qa import expected_decoded_f1, expected_span_f1, span_cross_entropy
from tools.benchmarks import experiment
from tools.benchmarks.reference import qa as reference


def _default(logits, positions):
    return reference.original_loss(logits, positions)


def variant(name):
    """The loss ``(logits, positions, mask) -> scalar`` a variant name stands for."""
    kind, *numbers = name.split(":")
    try:
        numbers = [float(x) for x in numbers]
    except ValueError:
        numbers = None
    expected = {"default": 0, "span": 0, "half": 0, "span-risk": 1, "risk": 2}
    if kind not in expected or numbers is None or len(numbers) != expected[kind]:
        raise ValueError(f"'--variants' should name default, span, half, span-risk:A or "
                         f"risk:A:T but got {name!r}")
    if kind == "default":
        return lambda z, t, w: _default(z, t)
    if kind == "span":
        return lambda z, t, w: span_cross_entropy(z, t).mean()
    if kind == "half":
        return lambda z, t, w: 0.5 * span_cross_entropy(z, t).mean() + 0.5 * _default(z, t)
    if kind == "span-risk":
        return lambda z, t, w: (span_cross_entropy(z, t)
                                + numbers[0] * (1 - expected_decoded_f1(z, t))).mean()
    weight, temperature = numbers
    return lambda z, t, w: _default(z, t) + weight * (
        1 - expected_span_f1(z.float() / temperature, t)).mean()


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = experiment.parser(__doc__, "qa_screen", seeds=4, module="tools.benchmarks.qa_screen")
    parser.add_argument("--regimes", nargs="+", default=["proxy"],
                        choices=sorted(reference.REGIMES))
    parser.add_argument("--variants", nargs="+", required=True)
    parser.add_argument("--quick", action="store_true", help="tiny runs, for checks")
    args = parser.parse_args(argv)
    try:
        losses = {name: variant(name) for name in ["default", *args.variants]}
    except ValueError as error:
        parser.error(str(error))
    experiment.check_args(parser, args, ["results.json", "results.md"])
    torch.set_num_threads(1)
    finals = {name: {regime: {} for regime in args.regimes} for name in losses}
    rows = []
    for regime in args.regimes:
        for name, loss_fn in losses.items():
            for seed in experiment.seeds(args):
                final = reference.run(regime, loss_fn, seed, quick=args.quick)["final"]
                finals[name][regime][seed] = final
                print(f"[reloss] {regime}, {name}, seed {seed}: {final:.3f}", flush=True)
        for name in args.variants:
            pair = experiment.paired(finals["default"][regime], finals[name][regime])
            rows.append([regime, name, pair.format()])
    text = experiment.markdown_table(
        ["regime", "variant", f"{reference.METRIC} minus the default loss's, paired"], rows)
    print(text)
    record = dict(finals=finals, regimes=args.regimes, variants=args.variants,
                  quick=args.quick, provenance=experiment.provenance("qa_screen", argv))
    experiment.write_results(args.out, text, record)
    return finals


if __name__ == "__main__":
    main()
