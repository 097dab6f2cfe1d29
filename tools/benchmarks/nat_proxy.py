"""A translation experiment that runs on a CPU: nat_loss against reloss_nat with fairseq's own
command-line tools.

    python -m tools.benchmarks.nat_proxy [--out DIR] [--seeds 8] [--first-seed 0] [--updates 1600]
        [--jobs 2] [--criteria nat_loss reloss_nat] [--fairseq-args "..."] [--force]

Writes the generated language pair of ``tools/benchmarks/reference/nat.py`` (words that become 0-3
target words, modifier phrases that move behind the next word, markers that change the next word's
translation; 6,000 training and 500 test pairs, one seed) as text, binarises it with
``fairseq-preprocess --joined-dictionary``, then, per criterion and seed, trains a small
``nonautoregressive_transformer`` with ``fairseq-train`` on fairseq's NAT recipe (its flags, with a
width-64, 2+2-layer model, a shorter warm-up and a higher learning rate for the few updates, the
decoder fed a uniform copy of the source embeddings) and translates the test set with
``fairseq-generate`` in one pass with **predicted** lengths (``--iter-decode-max-iter 0``). Prints a
progress bar per run, then fairseq's BLEU4 (each criterion against the first, seed by seed: the
paired difference, its mean and standard error), the share of test sentences given the reference
length, and the training log's length loss and token NLL at the end; writes them (results.md, and
with provenance results.json), the training curves (curves.png) and each run's folder (checkpoint,
train.log, generate.log) to DIR. ``--jobs`` runs that many trainings at once, one thread each.
"""
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import time

from tools.benchmarks import experiment
from tools.benchmarks.reference import nat as reference_nat

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
USER_DIR = os.path.join(ROOT, "plugins", "fairseq_reloss")
CRITERIA = ("nat_loss", "reloss_nat")

#: fairseq's NAT-Base recipe (examples/nonautoregressive_translation) with a small model; the
#: schedule is scaled to a few thousand updates (warm-up, learning rate), dropout lowered for a
#: model this size, and the decoder reads a uniform copy of the source embeddings
#: (--src-embedding-copy, Gu et al.'s NAT input; without it this small model learns several
#: times slower). ``{updates}``, ``{warmup}`` and ``{seed}`` are filled in per run.
#: ``--data-buffer-size 0``: no prefetch thread, which can abort the process at exit (batches and
#: results are the same either way).
RECIPE = (
    "--task translation_lev --arch nonautoregressive_transformer --noise full_mask "
    "--src-embedding-copy "
    "--share-all-embeddings --optimizer adam --adam-betas (0.9,0.98) --lr 0.005 "
    "--lr-scheduler inverse_sqrt --stop-min-lr 1e-09 --warmup-updates {warmup} "
    "--warmup-init-lr 1e-07 --label-smoothing 0.1 --dropout 0.1 --weight-decay 0.01 "
    "--decoder-learned-pos --encoder-learned-pos --pred-length-offset --length-loss-factor 0.1 "
    "--apply-bert-init --max-tokens 1024 --max-update {updates} --seed {seed} "
    "--encoder-embed-dim 64 --decoder-embed-dim 64 --encoder-ffn-embed-dim 128 "
    "--decoder-ffn-embed-dim 128 --encoder-layers 2 --decoder-layers 2 "
    "--encoder-attention-heads 4 --decoder-attention-heads 4 "
    "--cpu --num-workers 0 --data-buffer-size 0 --disable-validation --no-epoch-checkpoints "
    "--save-interval 100000 "
    "--log-format json --log-interval {interval}")

GENERATE = ("--task translation_lev --gen-subset test --iter-decode-max-iter 0 "
            "--iter-decode-with-beam 1 --beam 1 --batch-size 250 --required-batch-size-multiple 1 "
            "--cpu --user-dir " + USER_DIR)


def bin_dir(name):
    """A console script of the running Python's environment (fairseq-train, ...)."""
    return os.path.join(os.path.dirname(sys.executable), name)


def write_corpus(folder):
    """The reference task's pairs as text, a token id i written as the word w<i> (source and
    target ids are disjoint, so one joined dictionary serves both)."""
    (train_src, train_tgt), (test_src, test_tgt) = reference_nat.data()
    os.makedirs(folder, exist_ok=True)

    def lines(rows):
        return [" ".join(f"w{t}" for t in row if t != reference_nat.PAD)
                for row in rows.tolist()]

    for split, src, tgt in (("train", train_src, train_tgt), ("test", test_src, test_tgt)):
        for lang, rows in (("src", src), ("tgt", tgt)):
            with open(os.path.join(folder, f"{split}.{lang}"), "w", encoding="utf-8") as f:
                f.write("\n".join(lines(rows)) + "\n")
    return len(train_src), len(test_src)


def preprocess(text, data_bin, log):
    command = [bin_dir("fairseq-preprocess"), "--source-lang", "src", "--target-lang", "tgt",
               "--trainpref", os.path.join(text, "train"), "--testpref",
               os.path.join(text, "test"), "--destdir", data_bin, "--joined-dictionary",
               "--workers", "1"]
    with open(log, "w", encoding="utf-8") as f:
        subprocess.run(command, check=True, stdout=f, stderr=subprocess.STDOUT)


def train_command(data_bin, save_dir, criterion, seed, updates, extra):
    recipe = RECIPE.format(updates=updates, warmup=max(updates // 10, 1), seed=seed,
                           interval=max(updates // 20, 1))
    return ([bin_dir("fairseq-train"), data_bin, "--save-dir", save_dir, "--criterion",
             criterion, "--user-dir", USER_DIR] + shlex.split(recipe) + shlex.split(extra))


def training_log(path):
    """The ``train_inner`` records of a json-format fairseq log: [{update, loss, nll_loss, ...}]."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            start = line.find("{")
            if "| train_inner |" in line and start >= 0:
                records.append({k: float(v) for k, v in json.loads(line[start:]).items()
                                if re.fullmatch(r"-?[0-9.e+-]+", str(v))})
    return records


def updates_done(log):
    """The last update a fairseq-train log being written reports, 0 before the first."""
    with open(log, encoding="utf-8", errors="replace") as f:
        done = re.findall(r'"num_updates": "?(\d+)', f.read())
    return int(done[-1]) if done else 0


def generate(data_bin, checkpoint, log):
    """fairseq-generate's BLEU4, the share of hypotheses of the reference's length and the number
    of sentences translated."""
    command = [bin_dir("fairseq-generate"), data_bin, "--path", checkpoint] + GENERATE.split()
    with open(log, "w", encoding="utf-8") as f:
        subprocess.run(command, check=True, stdout=f, stderr=subprocess.STDOUT)
    with open(log, encoding="utf-8") as f:
        text = f.read()
    bleu = re.search(r"BLEU4 = ([0-9.]+)", text)
    if bleu is None:
        raise RuntimeError(f"no BLEU4 line in {log}")
    targets = {m.group(1): len(m.group(2).split()) for m in
               re.finditer(r"^T-(\d+)\t(.*)$", text, re.M)}
    hypotheses = {m.group(1): len(m.group(2).split()) for m in
                  re.finditer(r"^H-(\d+)\t\S+\t(.*)$", text, re.M)}
    same = sum(hypotheses.get(k) == n for k, n in targets.items())
    return float(bleu.group(1)), same / max(len(targets), 1), len(targets)


def build_parser():
    parser = experiment.parser(__doc__, "nat_proxy", seeds=8, module="tools.benchmarks.nat_proxy")
    parser.add_argument("--updates", type=int, default=1600,
                        help="training updates per run (default 1600)")
    parser.add_argument("--jobs", type=int, default=2, help="trainings run at once (default 2)")
    parser.add_argument("--criteria", nargs="+", default=list(CRITERIA),
                        help="fairseq criteria to compare, the first being the baseline (each a "
                             "--criterion value; default: nat_loss reloss_nat)")
    parser.add_argument("--fairseq-args", default="",
                        help="more fairseq-train arguments, for every run (quoted)")
    return parser


def table(runs, updates):
    """A row per criterion: BLEU4 (against the first criterion's, seed by seed), the share of
    sentences of the right length, the length loss and token NLL of the training log."""
    header = ["criterion", "BLEU4, predicted length: mean +- std", "worst seed", "per seed",
              "minus the baseline's, paired: mean +- SE", "right length",
              "length loss, at 25% / last 10% of updates", "token NLL, last 10%"]

    def logged(run, key, start, end):
        """Mean of a logged training value over updates in (start, end] x updates."""
        values = [r[key] for r in run["log"] if start * updates < r["num_updates"] <= end * updates]
        return statistics.fmean(values) if values else run["log"][-1][key]

    baseline = next(iter(runs))
    bleu = {criterion: {run["seed"]: run["bleu"] for run in seeds}
            for criterion, seeds in runs.items()}
    rows, paired = [], {}
    for criterion, seeds in runs.items():
        if criterion != baseline:
            paired[criterion] = experiment.paired(bleu[baseline], bleu[criterion])
        bleus = list(bleu[criterion].values())
        rows.append([
            criterion, experiment.mean_std(bleus), f"{min(bleus):.2f}",
            ", ".join(f"{b:.2f}" for b in bleus),
            paired[criterion].format() if criterion in paired else "-",
            f"{statistics.fmean(run['length_match'] for run in seeds):.1%}",
            f"{statistics.fmean(logged(run, 'length', 0.2, 0.3) for run in seeds):.3f} / "
            f"{statistics.fmean(logged(run, 'length', 0.9, 1) for run in seeds):.3f}",
            f"{statistics.fmean(logged(run, 'nll_loss', 0.9, 1) for run in seeds):.3f}"])
    return experiment.markdown_table(header, rows), paired


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("updates", "jobs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} should be positive but got {getattr(args, name)}")
    all_runs = experiment.runs(args.criteria, experiment.seeds(args))
    outputs = [*experiment.RESULTS, "text", "data-bin", "preprocess.log"] + [
        run.tag for run in all_runs]
    experiment.check_args(parser, args, outputs)
    started = time.time()
    print(f"[reloss] fairseq's NAT (width 64, 2+2 layers) on the generated language pair, "
          f"{' against '.join(args.criteria)}: {args.seeds} seed(s) each, {args.updates} updates "
          f"a run, {args.jobs} at once", flush=True)
    data_bin = os.path.join(args.out, "data-bin")
    pairs = write_corpus(os.path.join(args.out, "text"))
    preprocess(os.path.join(args.out, "text"), data_bin, os.path.join(args.out, "preprocess.log"))
    print(f"[reloss] binarised {pairs[0]} training and {pairs[1]} test pairs into {data_bin}",
          flush=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")

    def train(run, bar):
        save_dir = os.path.join(args.out, run.tag)
        os.makedirs(save_dir)
        log = os.path.join(save_dir, "train.log")
        command = train_command(data_bin, save_dir, run.arm, run.seed, args.updates,
                                args.fairseq_args)
        bar.reset(total=args.updates)
        with open(log, "w", encoding="utf-8") as f:
            process = subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT, env=env)
            while process.poll() is None:
                time.sleep(1)
                bar.update(updates_done(log) - bar.n)
        if process.returncode != 0:
            raise RuntimeError(f"fairseq-train failed for {run}: see {log}")
        bar.update(args.updates - bar.n)
        bar.set_postfix_str("fairseq-generate")
        bleu, length_match, count = generate(data_bin,
                                             os.path.join(save_dir, "checkpoint_last.pt"),
                                             os.path.join(save_dir, "generate.log"))
        if count != pairs[1]:
            raise RuntimeError(f"fairseq-generate translated {count} of the {pairs[1]} test "
                               f"sentences: see {save_dir}/generate.log")
        return dict(seed=run.seed, bleu=bleu, length_match=length_match, log=training_log(log))

    def describe(run):
        return (f"BLEU4 {run['bleu']:.2f}, right length {run['length_match']:.1%}, final "
                f"length loss {run['log'][-1]['length']:.3f}, nll {run['log'][-1]['nll_loss']:.3f}")

    runs = experiment.run_all(all_runs, train, describe, jobs=args.jobs)
    text, paired = table(runs, args.updates)
    panels = []
    for key, label in (("nll_loss", "token NLL (bits), training"),
                       ("length", "length loss (bits), training")):
        series = {}
        for criterion, seeds in runs.items():
            logs = [run["log"] for run in seeds]
            count = min(len(log) for log in logs)
            series[criterion] = ([r["num_updates"] for r in logs[0][:count]],
                                 [[r[key] for r in log[:count]] for log in logs])
        panels.append(experiment.Panel("update", label, series))
    experiment.plot_seeds(os.path.join(args.out, "curves.png"), panels,
                          "fairseq NAT on the generated language pair")
    heading = (f"fairseq NAT (width 64, 2+2 layers) on the generated language pair, "
               f"{args.updates} updates, {args.seeds} seed(s) per criterion (the same seeds for "
               f"all):")
    record = dict(runs=runs, paired={name: p.as_dict() for name, p in paired.items()},
                  seeds=list(experiment.seeds(args)), updates=args.updates,
                  fairseq_args=args.fairseq_args, seconds=round(time.time() - started, 1),
                  provenance=experiment.provenance(
                      "nat_proxy", argv, surrogates=["nat"] if "reloss_nat" in args.criteria
                      else [], packages=("fairseq-fixed", "sacrebleu")))
    experiment.report(args.out, heading, text, record, started,
                      f"each run's checkpoint and logs (train.log, generate.log) are in "
                      f"{args.out}/<run>/, e.g. {all_runs[0].tag}/")
    return runs


if __name__ == "__main__":
    main()
