"""The default QA loss against ReLossQA: a tiny BERT fine-tuned on generated Chinese extractive QA.

    python -m tools.benchmarks.qa_proxy                           # 5 seeds per loss
    python -m tools.benchmarks.qa_proxy --seeds 2 --epochs 2 --out work_dirs/qa_proxy/quick
    python -m tools.benchmarks.qa_proxy --checkpoint work_dirs/my_qa/surrogate.pt  # your own

Writes a generated SQuAD-format set (data/train.json, data/dev.json): passages of CJK characters
holding 2 or 3 facts, each a one-character key followed by its answer (1 to 10 characters) and
'。', between filler runs; the question names one key, and the other facts' answers are distractor
spans of the same kind. Per seed, a BERT of 2 layers and width 64 with a character vocabulary is
initialised from a BertConfig (data/model_seed<S>/) and fine-tuned twice by tools/finetune_qa.py
from the same weights and data order: with transformers' Trainer and the model's default loss,
and with ReLossQATrainer. Dev answers are scored after every epoch (CMRC 2018 EM/F1, DuReader
ROUGE-L/BLEU-4). Writes results.md (final scores, mean +- std, and the paired difference per seed
with its standard error; then how the shipped surrogate and the default loss rank chunks of the
default-loss models' dev predictions, every epoch of every seed, pooled in dev_logits.pt),
results.json and curves.png to --out, and each run's predictions, metrics and dev logits to
--out/<run>/.
"""
from __future__ import annotations

import os
import random
import time

from tools.benchmarks import experiment

BASELINE, RELOSS = "default loss", "ReLossQA"
ARMS = {BASELINE: "default", RELOSS: "reloss"}
METRICS = ("EM", "F1", "ROUGE-L", "BLEU-4")
SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
QUESTION = "是什么"
#: Characters of keys, answers and fillers: disjoint ranges of CJK ideographs.
KEYS = [chr(0x4E00 + i) for i in range(0, 8)]
BODY = [chr(0x4E00 + i) for i in range(100, 140)]


def vocabulary():
    return [*SPECIAL, "。", "？", "，", *QUESTION, *KEYS, *BODY]


def generate(count, seed, facts=(2, 3), prefix="q", answer_lengths=None):
    """``count`` SQuAD-style examples (see the module's docstring), seeded: passages of
    ``facts`` = (fewest, most) facts; answers of ``answer_lengths`` = (shortest, longest)
    characters, uniform, or None for the proxy's (1 + an exponential of mean 3, at most 10)."""
    if answer_lengths is not None and not (
            len(answer_lengths) == 2 and 1 <= answer_lengths[0] <= answer_lengths[1]):
        raise ValueError(f"'answer_lengths' should be None or (shortest, longest) with "
                         f"1 <= shortest <= longest but got {answer_lengths!r}")
    if not (len(facts) == 2 and 1 <= facts[0] <= facts[1] <= len(KEYS)):
        raise ValueError(f"'facts' should be (fewest, most) with 1 <= fewest <= most <= "
                         f"{len(KEYS)} but got {facts!r}")
    rng = random.Random(seed)
    examples = []
    while len(examples) < count:
        keys = rng.sample(KEYS, rng.randint(*facts))
        parts, spans = [], []
        for key in keys:
            parts.append("".join(rng.choices(BODY, k=rng.randint(1, 6))) + "，")
            length = (min(10, int(rng.expovariate(1 / 3)) + 1) if answer_lengths is None
                      else rng.randint(*answer_lengths))
            answer = "".join(rng.choices(BODY, k=length))
            start = sum(map(len, parts)) + len(key)
            parts.append(key + answer + "。")
            spans.append((key, answer, start))
        context = "".join(parts)
        for key, answer, start in rng.sample(spans, min(2, len(spans))):
            examples.append(dict(id=f"{prefix}{len(examples)}", question=key + QUESTION + "？",
                                 context=context, answers=[answer], answer_starts=[start]))
    return examples[:count]


def write_tiny_bert(folder, seed, max_length=64, hidden=64, layers=2):
    """A BertForQuestionAnswering initialised from a config (seeded) with a character vocabulary
    and its fast tokenizer, saved to ``folder`` (``from_pretrained(folder)`` loads both)."""
    import torch
    from transformers import BertConfig, BertForQuestionAnswering, BertTokenizerFast

    if os.path.isdir(folder) and os.listdir(folder):
        raise FileExistsError(f"{folder} is not empty: a tiny BERT is written to a new folder")
    os.makedirs(folder, exist_ok=True)
    vocab = vocabulary()
    with open(os.path.join(folder, "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(vocab) + "\n")
    # transformers 5 ignores BertTokenizerFast(vocab_file=...): load the folder instead.
    tokenizer = BertTokenizerFast.from_pretrained(folder)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=2, intermediate_size=2 * hidden,
                        max_position_embeddings=max_length)
    BertForQuestionAnswering(config).save_pretrained(folder)
    return folder


def write_data(root, train, dev, seed=0):
    from reloss import squad

    os.makedirs(root, exist_ok=True)
    squad.write_squad(os.path.join(root, "train.json"), generate(train, seed, prefix="t"))
    squad.write_squad(os.path.join(root, "dev.json"), generate(dev, seed + 10_000, prefix="d"))
    return os.path.join(root, "train.json"), os.path.join(root, "dev.json")


def finetune_args(model, train, dev, out, loss, seed, args):
    from tools import finetune_qa

    return finetune_qa.build_parser().parse_args([
        "--model", model, "--train", train, "--dev", dev, "--out", out, "--loss", loss,
        "--seed", str(seed), "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
        "--lr", str(args.lr), "--max-length", "64", "--stride", "16", "--force", "--save-logits",
        "--loss-weight", str(args.loss_weight),
        "--checkpoint", args.checkpoint,
        *(["--ce-weight", str(args.ce_weight)] if args.ce_weight is not None else [])])


def ranking(paths, out, checkpoint):
    """How the surrogate and the default loss rank chunks of real predictions: the dev
    logits of every epoch of the default-loss runs (``paths``), pooled into ``out`` (a group per
    run and epoch, so that a chunk never mixes two models)."""
    import torch

    import reloss
    from reloss.cli.evaluate import evaluate
    from reloss.cli.pretrain import table as ranking_table

    parts = [torch.load(path, weights_only=True) for path in paths]
    pooled = {key: torch.cat([p[key] for p in parts]) for key in ("logits", "positions", "context")}
    pooled["group"] = torch.cat([p["group"] + 1000 * i for i, p in enumerate(parts)])
    torch.save(dict(pooled, task="qa"), out)
    surrogate = reloss.load_surrogate(checkpoint)
    figures = evaluate(surrogate, out)
    return ranking_table([("dev predictions of the default-loss runs", figures)],
                         reloss.get_task("qa"), reloss.get_task("qa").band,
                         reloss.get_task("qa").metric_name), figures


def build_parser():
    parser = experiment.parser(__doc__, "qa_proxy", seeds=5, module="tools.benchmarks.qa_proxy")
    parser.add_argument("--epochs", type=int, default=15, help="epochs per run (default 15)")
    parser.add_argument("--train", type=int, default=2000, help="training questions")
    parser.add_argument("--dev", type=int, default=300, help="dev questions")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--ce-weight", type=float,
                        help="ReLossQA's ce_weight (default: the task's)")
    parser.add_argument("--loss-weight", type=float, default=1.0,
                        help="ReLossQA's loss_weight (default 1)")
    parser.add_argument("--checkpoint", default="qa", help="ReLossQA's surrogate: a shipped "
                                                          "name or a checkpoint path (default qa)")
    return parser


def table(curves):
    header = ["loss", *[f"{m}, mean +- std" for m in METRICS],
              *[f"{m} minus the default loss's, paired: mean +- SE" for m in ("EM", "F1")]]
    finals = {name: {run["seed"]: run["curve"][-1] for run in runs}
              for name, runs in curves.items()}
    rows, paired = [], {}
    for name in curves:
        if name != BASELINE:
            paired[name] = {m: experiment.paired(
                {s: p[m] for s, p in finals[BASELINE].items()},
                {s: p[m] for s, p in finals[name].items()}) for m in METRICS}
        rows.append([name, *[experiment.mean_std([p[m] for p in finals[name].values()])
                             for m in METRICS],
                     *[paired[name][m].format() if name in paired else "-"
                       for m in ("EM", "F1")]])
    return experiment.markdown_table(header, rows), paired


def main(argv=None):
    import torch

    torch.set_num_threads(1)
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("epochs", "train", "dev", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} should be positive but got "
                         f"{getattr(args, name)}")
    all_runs = experiment.seed_runs(parser, args, ARMS, ["data", "dev_logits.pt"])
    started = time.time()
    print(f"[reloss] a tiny BERT on generated Chinese extractive QA, {' against '.join(ARMS)}: "
          f"{args.seeds} seed(s) each, {args.epochs} epoch(s) a run", flush=True)
    root = os.path.join(args.out, "data")
    train, dev = write_data(root, args.train, args.dev)
    print(f"[reloss] wrote {args.train} training and {args.dev} dev questions to {root}",
          flush=True)

    def run_one(run, bar):
        from tools import finetune_qa

        model = os.path.join(root, f"model_seed{run.seed}")
        if not os.path.isdir(model):
            write_tiny_bert(model, run.seed)
        out = os.path.join(args.out, run.tag)
        os.makedirs(out, exist_ok=True)
        record = finetune_qa.finetune(
            finetune_args(model, train, dev, out, ARMS[run.arm], run.seed, args), progress=bar)
        return dict(seed=run.seed, curve=record["curve"])

    curves = experiment.run_all(
        all_runs, run_one,
        lambda r: ", ".join(f"{m} {r['curve'][-1][m]:.1f}" for m in METRICS))
    text, paired = table(curves)
    ranked, ranking_figures = ranking(
        [os.path.join(args.out, run.tag, "dev_logits.pt") for run in all_runs
         if run.arm == BASELINE], os.path.join(args.out, "dev_logits.pt"), args.checkpoint)
    text += "\n" + ranked
    experiment.plot_seeds(os.path.join(args.out, "curves.png"), [
        experiment.Panel("epoch", metric, {
            name: ([p["epoch"] for p in runs[0]["curve"]],
                   [[p[metric] for p in run["curve"]] for run in runs])
            for name, runs in curves.items()})
        for metric in METRICS], "tiny BERT, generated Chinese extractive QA")
    heading = (f"Tiny BERT (2 layers, width 64) on generated Chinese extractive QA, {args.train} "
               f"training and {args.dev} dev questions, {args.epochs} epoch(s), {args.seeds} "
               f"seed(s) per loss (the same seeds, weights and data order for both); scores in "
               f"%:")
    record = dict(curves=curves,
                  paired=experiment.paired_dicts(paired),
                  ranking=ranking_figures,
                  seeds=list(experiment.seeds(args)), epochs=args.epochs, train=args.train,
                  dev=args.dev,
                  provenance=experiment.provenance("qa_proxy", argv, surrogates=[args.checkpoint],
                                                   packages=("transformers", "tokenizers")))
    experiment.report(args.out, heading, text, record, started,
                      f"each run's predictions and metrics are in {args.out}/<run>/, e.g. "
                      f"{all_runs[0].tag}/")
    return experiment.seed_curves(curves)


if __name__ == "__main__":
    main()
