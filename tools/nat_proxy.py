"""A translation experiment that runs on a CPU: nat_loss against reloss_nat with fairseq's own
command-line tools.

    python tools/nat_proxy.py [--out DIR] [--seeds 4] [--first-seed 0] [--updates 1600] [--jobs 2]
                              [--criteria nat_loss reloss_nat] [--fairseq-args "..."]

Writes the generated language pair of ``tools/reference/nat.py`` (words that become 0-3 target
words, modifier phrases that move behind the next word, markers that change the next word's
translation; 6,000 training and 500 test pairs, one seed) as text, binarises it with
``fairseq-preprocess --joined-dictionary``, then, per criterion and seed, trains a small
``nonautoregressive_transformer`` with ``fairseq-train`` on fairseq's NAT recipe (its flags, with
a width-64, 2+2-layer model, a shorter warm-up and a higher learning rate for the few updates,
the decoder fed a uniform copy of the source embeddings)
and translates the test set with ``fairseq-generate`` in one pass with **predicted** lengths
(``--iter-decode-max-iter 0``). Prints fairseq's BLEU4, the share of test sentences given the
reference length, and the training log's length loss and token NLL at the end, and writes them
with the training curves (curves.png) to DIR. ``--jobs`` runs that many trainings at once, one
thread each.
"""
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import curves as curves_plot  # noqa: E402
from reference import nat as reference_nat  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
USER_DIR = os.path.join(ROOT, "plugins", "fairseq_reloss")
CRITERIA = ("nat_loss", "reloss_nat")

#: fairseq's NAT-Base recipe (examples/nonautoregressive_translation) with a small model; the
#: schedule is scaled to a few thousand updates (warm-up, learning rate), dropout lowered for a
#: model this size, and the decoder reads a uniform copy of the source embeddings
#: (--src-embedding-copy, Gu et al.'s NAT input; without it this small model learns several
#: times slower). ``{updates}``, ``{warmup}`` and ``{seed}`` are filled in per run.
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
    "--cpu --num-workers 0 --disable-validation --no-epoch-checkpoints --save-interval 100000 "
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


def generate(data_bin, checkpoint, log):
    """fairseq-generate's BLEU4, the share of hypotheses of the reference's length and the number
    of sentences translated."""
    command = [bin_dir("fairseq-generate"), data_bin, "--path", checkpoint] + GENERATE.split()
    with open(log, "w", encoding="utf-8") as f:
        subprocess.run(command, check=True, stdout=f, stderr=subprocess.STDOUT)
    text = open(log, encoding="utf-8").read()
    bleu = re.search(r"BLEU4 = ([0-9.]+)", text)
    if bleu is None:
        raise RuntimeError(f"no BLEU4 line in {log}")
    targets = {m.group(1): len(m.group(2).split()) for m in
               re.finditer(r"^T-(\d+)\t(.*)$", text, re.M)}
    hypotheses = {m.group(1): len(m.group(2).split()) for m in
                  re.finditer(r"^H-(\d+)\t\S+\t(.*)$", text, re.M)}
    same = sum(hypotheses.get(k) == n for k, n in targets.items())
    return float(bleu.group(1)), same / max(len(targets), 1), len(targets)


def plot(path, runs):
    plt = curves_plot.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, label in zip(axes, ("nll_loss", "length"),
                              ("token NLL (bits), training", "length loss (bits), training"),
                              strict=True):
        for criterion, seeds in runs.items():
            logs = [run["log"] for run in seeds]
            count = min(len(log) for log in logs)
            curves_plot.plot_seeds(ax, [r["num_updates"] for r in logs[0][:count]],
                                   [[r[key] for r in log[:count]] for log in logs], criterion)
        ax.set_xlabel("update")
        ax.set_ylabel(label)
        ax.legend()
    fig.suptitle("fairseq NAT on the generated language pair, mean of seeds (band: min to max)",
                 fontsize=10)
    curves_plot.save(plt, fig, path)


def main(argv=None):
    parser = curves_plot.experiment_parser(__doc__, "nat_proxy")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--first-seed", type=int, default=0,
                        help="seeds run from this one (more seeds over several runs)")
    parser.add_argument("--updates", type=int, default=1600)
    parser.add_argument("--jobs", type=int, default=2, help="trainings run at once")
    parser.add_argument("--criteria", nargs="+", default=list(CRITERIA),
                        help="fairseq criteria to compare (each a --criterion value)")
    parser.add_argument("--fairseq-args", default="",
                        help="more fairseq-train arguments, for every run (quoted)")
    args = parser.parse_args(argv)
    for name in ("seeds", "updates", "jobs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} should be positive but got {getattr(args, name)}")
    if args.first_seed < 0:
        parser.error(f"--first-seed should be >= 0 but got {args.first_seed}")
    curves_plot.refuse_existing(parser, args.out)
    started = time.time()
    data_bin = os.path.join(args.out, "data-bin")
    pairs = write_corpus(os.path.join(args.out, "text"))
    preprocess(os.path.join(args.out, "text"), data_bin, os.path.join(args.out, "preprocess.log"))
    print(f"[reloss] binarised {pairs[0]} training and {pairs[1]} test pairs into {data_bin}",
          flush=True)

    jobs = [(criterion, seed) for seed in range(args.first_seed, args.first_seed + args.seeds)
            for criterion in args.criteria]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    runs = {criterion: [] for criterion in args.criteria}
    running = []

    def finish(process, criterion, seed, save_dir, log, t0):
        if process.wait() != 0:
            raise RuntimeError(f"fairseq-train failed for {criterion}, seed {seed}: see {log}")
        bleu, length_match, count = generate(data_bin,
                                             os.path.join(save_dir, "checkpoint_last.pt"),
                                             os.path.join(save_dir, "generate.log"))
        if count != pairs[1]:
            raise RuntimeError(f"fairseq-generate translated {count} of the {pairs[1]} test "
                               f"sentences: see {save_dir}/generate.log")
        record = training_log(log)
        runs[criterion].append(dict(seed=seed, bleu=bleu, length_match=length_match, log=record,
                                    seconds=time.time() - t0))
        print(f"[reloss] {criterion}, seed {seed}: BLEU4 {bleu:.2f}, right length "
              f"{length_match:.1%}, final length loss {record[-1]['length']:.3f}, "
              f"nll {record[-1]['nll_loss']:.3f} ({time.time() - t0:.0f} s)", flush=True)

    for criterion, seed in jobs:
        while len(running) >= args.jobs:
            finish(*running.pop(0))
        save_dir = os.path.join(args.out, f"{criterion}_seed{seed}")
        os.makedirs(save_dir)
        log = os.path.join(save_dir, "train.log")
        command = train_command(data_bin, save_dir, criterion, seed, args.updates,
                                args.fairseq_args)
        with open(log, "w", encoding="utf-8") as f:
            process = subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT, env=env)
        running.append((process, criterion, seed, save_dir, log, time.time()))
    while running:
        finish(*running.pop(0))

    lines = ["| criterion | BLEU4, predicted length: mean +- std | worst seed | per seed | "
             "right length | length loss, at 25% / last 10% of updates | token NLL, last 10% |",
             "|---|---|---|---|---|---|---|"]

    def logged(run, key, start, end):
        """Mean of a logged training value over updates in (start, end] x --updates."""
        values = [r[key] for r in run["log"]
                  if start * args.updates < r["num_updates"] <= end * args.updates]
        return statistics.fmean(values) if values else run["log"][-1][key]

    for criterion, seeds in runs.items():
        seeds.sort(key=lambda run: run["seed"])
        bleus = [run["bleu"] for run in seeds]
        lines.append(
            f"| {criterion} | {statistics.fmean(bleus):.2f} +- {curves_plot.std(bleus):.2f} | "
            f"{min(bleus):.2f} | {', '.join(f'{b:.2f}' for b in bleus)} | "
            f"{statistics.fmean(run['length_match'] for run in seeds):.1%} | "
            f"{statistics.fmean(logged(run, 'length', 0.2, 0.3) for run in seeds):.3f} / "
            f"{statistics.fmean(logged(run, 'length', 0.9, 1) for run in seeds):.3f} | "
            f"{statistics.fmean(logged(run, 'nll_loss', 0.9, 1) for run in seeds):.3f} |")
    table = "\n".join(lines) + "\n"
    plot(os.path.join(args.out, "curves.png"), runs)
    with open(os.path.join(args.out, "results.md"), "w", encoding="utf-8") as f:
        f.write(table)
    with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(dict(runs=runs, seeds=args.seeds, updates=args.updates,
                       fairseq_args=args.fairseq_args), f, indent=1)
    print()
    print(f"fairseq NAT (width 64, 2+2 layers) on the generated language pair, {args.updates} "
          f"updates, {args.seeds} seed(s) per criterion (same seeds for all):")
    print(table)
    print(f"[reloss] {time.time() - started:.0f} s in all. Wrote results.md, results.json, "
          f"curves.png and the runs' folders to {args.out}/")
    return runs


if __name__ == "__main__":
    main()
