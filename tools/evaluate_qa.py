"""Score answers to SQuAD-format questions: CMRC 2018 EM/F1, DuReader ROUGE-L/BLEU-4 (in %).

    python -m tools.evaluate_qa PREDICTIONS_JSON DEV_JSON [--out scores.json]

PREDICTIONS_JSON maps question id to answer text (what tools/finetune_qa.py writes); DEV_JSON is
the SQuAD-format file with the reference answers. Every question of DEV_JSON must have an answer
(an empty string counts as wrong). The metrics are character-level, as reloss.mrc_metrics
computes them.
"""
import argparse
import json
import os

from reloss import squad
from reloss.mrc_metrics import answer_scores


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tools.evaluate_qa",
                                     description=__doc__.split("\n")[0],
                                     epilog=__doc__.split("\n", 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("predictions", help="JSON: question id -> answer text")
    parser.add_argument("dev", help="SQuAD-format JSON with the reference answers")
    parser.add_argument("--out", help="also write the scores to this JSON file")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    args = parser.parse_args(argv)
    for name in ("predictions", "dev"):
        if not os.path.isfile(getattr(args, name)):
            parser.error(f"{name} {getattr(args, name)!r}: no such file")
    if args.out and os.path.exists(args.out) and not args.force:
        parser.error(f"--out {args.out} exists; pass --force to replace it")
    with open(args.predictions, encoding="utf-8") as f:
        predictions = json.load(f)
    if not isinstance(predictions, dict):
        parser.error(f"predictions {args.predictions!r}: expected a JSON object of id -> answer "
                     f"text but got {type(predictions).__name__}")
    examples = [e for e in squad.read_squad(args.dev) if e["answers"]]
    missing = [e["id"] for e in examples if e["id"] not in predictions]
    if missing:
        parser.error(f"predictions {args.predictions!r}: no answer for {len(missing)} of "
                     f"{len(examples)} questions, e.g. {missing[0]!r}")
    scores = answer_scores([str(predictions[e["id"]]) for e in examples],
                           [e["answers"] for e in examples])
    print(" | ".join(f"{name} {value:.2f}" for name, value in scores.items())
          + f" ({len(examples)} questions)")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(dict(scores, questions=len(examples)), f, indent=1)
            f.write("\n")
    return scores


if __name__ == "__main__":
    main()
