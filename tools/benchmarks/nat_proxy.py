"""A translation experiment that runs on a CPU: nat_loss against reloss_nat with fairseq's own
command-line tools, on a generated language pair or on real Chinese-English.

    python -m tools.benchmarks.nat_proxy [--out DIR] [--seeds 8] [--first-seed 0] [--updates N]
        [--jobs 2] [--criteria nat_loss reloss_nat] [--fairseq-args "..."] [--force]
    python -m tools.benchmarks.nat_proxy --data tatoeba [--vocab 2000] [--distill]
        [--split english] ...
    python -m tools.benchmarks.nat_proxy --data tatoeba --criteria nat_loss reloss_nat bon:0.3

``--data generated`` (the default) writes the generated language pair of
``tools/benchmarks/reference/nat.py`` (words that become 0-3 target words, modifier phrases that
move behind the next word, markers that change the next word's translation; 6,000 training and 500
test pairs, one seed) as text and binarises it with ``fairseq-preprocess --joined-dictionary``.
``--data tatoeba`` takes Tatoeba's Chinese-English pairs (``tools.benchmarks.data``: characters
for Chinese, words for English, one pair per Chinese sentence, at most 20 tokens a side, only pairs
within the ``--vocab`` most frequent tokens of each side, a fixed test set of 1,000 pairs whose
English never occurs in training; ``--split pairs``: 1,000 pairs drawn one by one, whose English
may) and binarises them with a dictionary per language.

Then, per criterion and seed, it trains a small ``nonautoregressive_transformer`` with
``fairseq-train`` on fairseq's NAT recipe (its flags, with a ``--width`` model of 2+2 layers, a
shorter warm-up and a higher learning rate for the few updates, the decoder fed a uniform copy of
the source embeddings) and translates the test set with ``fairseq-generate`` in one pass with
**predicted** lengths (``--iter-decode-max-iter 0``). The score is fairseq's BLEU4 on the generated
pair, and sacrebleu's BLEU on detokenised English for Tatoeba. ``--distill`` trains the NATs on
sequence-level knowledge distillation instead, as fairseq's NAT recipe does: a small
autoregressive transformer (the teacher, trained once with ``--teacher-updates``) translates the
training set with beam search, and its translations replace the training targets; the test
references stay the real ones.

A criterion is a fairseq ``--criterion`` name, or ``bon:W``: the anchor of Shao et al. (AAAI
2020), token cross-entropy plus a fixed weight W on each bag-of-n-grams distance (n = 1..4), run as
``reloss_nat`` with a surrogate whose weights are fixed at W (written to DIR/anchors/).

Prints a progress bar per run, then the BLEU (each criterion against the first, seed by seed: the
paired difference, its mean and standard error), the share of test sentences given the reference
length, and the training log's length loss and token NLL at the end; writes them (results.md, and
with provenance results.json), the training curves (curves.png) and each run's folder (checkpoint,
train.log, generate.log) to DIR. ``--jobs`` runs that many trainings at once, one thread each.
"""
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time

from tools.benchmarks import data as datasets
from tools.benchmarks import experiment
from tools.benchmarks.reference import nat as reference_nat

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
USER_DIR = os.path.join(ROOT, "plugins", "fairseq_reloss")
CRITERIA = ("nat_loss", "reloss_nat")
DATA = ("generated", "tatoeba")
#: Per data set: the model width, the training updates and the languages, by default.
WIDTH = dict(generated=64, tatoeba=128)
UPDATES = dict(generated=1600, tatoeba=2400)
LANGUAGES = dict(generated=("src", "tgt"), tatoeba=("zh", "en"))
#: The anchor's n-grams: n = 1 .. 4, as the shipped ``nat`` surrogate reads them.
ANCHOR_NGRAMS = 4

#: fairseq's NAT-Base recipe (examples/nonautoregressive_translation) with a small model; the
#: schedule is scaled to a few thousand updates (warm-up, learning rate), dropout lowered for a
#: model this size, and the decoder reads a uniform copy of the source embeddings
#: (--src-embedding-copy, Gu et al.'s NAT input; without it this small model learns several
#: times slower). ``{updates}``, ``{warmup}`` and ``{seed}`` are filled in per run.
#: ``--data-buffer-size 0``: no prefetch thread, which can abort the process at exit (batches and
#: results are the same either way).
RECIPE = (
    "--task translation_lev --arch nonautoregressive_transformer --noise full_mask "
    "--src-embedding-copy {share} --optimizer adam --adam-betas (0.9,0.98) --lr 0.005 "
    "--lr-scheduler inverse_sqrt --stop-min-lr 1e-09 --warmup-updates {warmup} "
    "--warmup-init-lr 1e-07 --label-smoothing 0.1 --dropout 0.1 --weight-decay 0.01 "
    "--decoder-learned-pos --encoder-learned-pos --pred-length-offset --length-loss-factor 0.1 "
    "--apply-bert-init --max-tokens 1024 --max-update {updates} --seed {seed} "
    "--encoder-embed-dim {width} --decoder-embed-dim {width} --encoder-ffn-embed-dim {ffn} "
    "--decoder-ffn-embed-dim {ffn} --encoder-layers 2 --decoder-layers 2 "
    "--encoder-attention-heads 4 --decoder-attention-heads 4 "
    "--cpu --num-workers 0 --data-buffer-size 0 --disable-validation --no-epoch-checkpoints "
    "--save-interval 100000 "
    "--log-format json --log-interval {interval}")

GENERATE = ("--task translation_lev --gen-subset test --iter-decode-max-iter 0 "
            "--iter-decode-with-beam 1 --beam 1 --batch-size 250 --required-batch-size-multiple 1 "
            "--cpu --user-dir " + USER_DIR)

#: The distillation teacher: fairseq's autoregressive ``transformer`` (Vaswani et al.), small
#: (width 256, 3+3 layers), with the label-smoothed cross-entropy and inverse-square-root schedule
#: of fairseq's translation examples, the learning rate raised for the few updates.
TEACHER = (
    "--task translation --arch transformer --share-decoder-input-output-embed "
    "--encoder-embed-dim 256 --decoder-embed-dim 256 --encoder-ffn-embed-dim 512 "
    "--decoder-ffn-embed-dim 512 --encoder-layers 3 --decoder-layers 3 "
    "--encoder-attention-heads 4 --decoder-attention-heads 4 "
    "--optimizer adam --adam-betas (0.9,0.98) --lr 0.002 --lr-scheduler inverse_sqrt "
    "--warmup-updates {warmup} --warmup-init-lr 1e-07 --dropout 0.2 --weight-decay 0.0001 "
    "--criterion label_smoothed_cross_entropy --label-smoothing 0.1 --max-tokens 2048 "
    "--max-update {updates} --seed 1 --cpu --num-workers 0 --data-buffer-size 0 "
    "--disable-validation --no-epoch-checkpoints --save-interval 100000 "
    "--log-format json --log-interval {interval}")
#: How the teacher translates (the training set, to distil it, and the test set, to score it);
#: the user dir lets torch >= 2.6 load fairseq's checkpoints.
TEACHER_GENERATE = ("--task translation --beam 4 --batch-size 128 --max-len-a 1.5 --max-len-b 5 "
                    "--required-batch-size-multiple 1 --num-workers 0 --data-buffer-size 0 "
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


def write_tatoeba(folder, vocab, split="english"):
    """Tatoeba's Chinese-English pairs as a user would prepare them for fairseq
    (:func:`tools.benchmarks.data.tatoeba_translation`, split by English sentence or pair by
    pair): (training pairs, test pairs), and the corpus's counts and vocabulary."""
    corpus = datasets.tatoeba_translation(folder, vocab=vocab, split=split)
    return (len(corpus["splits"]["train"]), len(corpus["splits"]["test"])), corpus


def preprocess(text, data_bin, log, languages, joined, dictionaries=None):
    """fairseq-preprocess of text/{train,test}.{src,tgt} into ``data_bin``: one dictionary for
    both languages (``joined``) or one each, or the ``dictionaries`` folder's (a data-bin)."""
    source, target = languages
    command = [bin_dir("fairseq-preprocess"), "--source-lang", source, "--target-lang", target,
               "--trainpref", os.path.join(text, "train"), "--testpref",
               os.path.join(text, "test"), "--destdir", data_bin, "--workers", "1"]
    if dictionaries is not None:
        command += ["--srcdict", os.path.join(dictionaries, f"dict.{source}.txt"),
                    "--tgtdict", os.path.join(dictionaries, f"dict.{target}.txt")]
    elif joined:
        command.append("--joined-dictionary")
    with open(log, "w", encoding="utf-8") as f:
        subprocess.run(command, check=True, stdout=f, stderr=subprocess.STDOUT)


def train_command(data_bin, save_dir, criterion, seed, updates, extra, width=64, joined=True,
                  checkpoint=None):
    """fairseq-train's command line for one NAT run; ``checkpoint``: reloss_nat's surrogate."""
    recipe = RECIPE.format(updates=updates, warmup=max(updates // 10, 1), seed=seed,
                           interval=max(updates // 20, 1), width=width, ffn=2 * width,
                           share="--share-all-embeddings" if joined else
                           "--share-decoder-input-output-embed")
    command = [bin_dir("fairseq-train"), data_bin, "--save-dir", save_dir, "--criterion",
               criterion, "--user-dir", USER_DIR] + shlex.split(recipe)
    if checkpoint is not None:
        command += ["--reloss-checkpoint", checkpoint]
    return command + shlex.split(extra)


def criterion_spec(parser, name):
    """(fairseq criterion, anchor weight or None) of a ``--criteria`` entry."""
    if not name.startswith("bon:"):
        return name, None
    try:
        weight = float(name[4:])
    except ValueError:
        weight = -1.0
    if not 0 < weight < 1e3:
        parser.error(f"--criteria {name!r}: 'bon:W' takes a weight W in (0, 1000)")
    return "reloss_nat", weight


def write_anchor(folder, weight):
    """The anchor ``bon:W`` as a surrogate checkpoint: the ``nat`` surrogate's form (token
    cross-entropy plus weighted bag-of-n-grams distances) with every weight fixed at W instead of
    learned. Returns its path."""
    import reloss
    from reloss import checkpoint

    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"bon_{weight:g}.pt")
    surrogate = reloss.SequenceSurrogate(ngrams=ANCHOR_NGRAMS, ngram_weight=weight)
    checkpoint.save_surrogate(surrogate, path, "nat", f"fixed bag-of-n-grams weight {weight:g}",
                              force=True)
    return path


def run_logged(command, log, env=None):
    """Run ``command`` with its output in ``log``; a RuntimeError naming the log if it fails."""
    with open(log, "w", encoding="utf-8") as f:
        done = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{os.path.basename(command[0])} failed (exit {done.returncode}): "
                           f"see {log}")


def distil(out, text, data_bin, languages, updates, env):
    """Sequence-level knowledge distillation (Kim and Rush, 2016), as fairseq's NAT recipe
    trains on: a teacher transformer trained on ``data_bin`` translates the training sources;
    writes DIR/distill/{train,test}.* (its translations as training targets, the real test set)
    and binarises them with ``data_bin``'s dictionaries into DIR/data-bin-distill. A sentence
    fairseq-generate leaves out keeps its real target. Returns (that folder, dict(bleu=the
    teacher's test BLEU, sacrebleu on detokenised text, kept=how many real targets stayed))."""
    teacher = os.path.join(out, "teacher")
    os.makedirs(teacher)
    recipe = TEACHER.format(updates=updates, warmup=max(updates // 8, 1),
                            interval=max(updates // 20, 1))
    run_logged([bin_dir("fairseq-train"), data_bin, "--save-dir", teacher] + shlex.split(recipe),
               os.path.join(teacher, "train.log"), env)
    source, target = languages
    best = os.path.join(teacher, "checkpoint_last.pt")
    translations = {}
    for subset in ("train", "test"):
        log = os.path.join(teacher, f"generate_{subset}.log")
        run_logged([bin_dir("fairseq-generate"), data_bin, "--path", best, "--gen-subset",
                    subset] + TEACHER_GENERATE.split(), log, env)
        translations[subset] = hypotheses(log)
    folder = os.path.join(out, "distill")
    os.makedirs(folder)
    with open(os.path.join(text, f"train.{target}"), encoding="utf-8") as f:
        real = f.read().splitlines()
    kept = sum(i not in translations["train"] for i in range(len(real)))
    shutil.copy(os.path.join(text, f"train.{source}"), os.path.join(folder, f"train.{source}"))
    with open(os.path.join(folder, f"train.{target}"), "w", encoding="utf-8") as f:
        f.writelines(translations["train"].get(i, line) + "\n" for i, line in enumerate(real))
    for language in languages:
        shutil.copy(os.path.join(text, f"test.{language}"), os.path.join(folder,
                                                                       f"test.{language}"))
    distilled = os.path.join(out, "data-bin-distill")
    preprocess(folder, distilled, os.path.join(out, "preprocess-distill.log"), languages,
               joined=False, dictionaries=data_bin)
    return distilled, dict(bleu=sacrebleu_score(translations["test"], references(text, target)),
                           kept=kept)


def hypotheses(log):
    """{sentence id: hypothesis text} of a fairseq-generate log (the H- lines)."""
    with open(log, encoding="utf-8") as f:
        return {int(m.group(1)): m.group(2) for m in
                re.finditer(r"^H-(\d+)\t\S+\t(.*)$", f.read(), re.M)}


def references(text, language):
    """The test references, one tokenised sentence per line."""
    with open(os.path.join(text, f"test.{language}"), encoding="utf-8") as f:
        return f.read().splitlines()


def sacrebleu_score(translations, refs):
    """sacrebleu's corpus BLEU of detokenised English: ``translations`` {id: tokenised text},
    ``refs`` tokenised references by id; a missing translation counts as empty."""
    import sacrebleu

    def detokenised(line):
        return datasets.detokenize_en(line.split())

    return sacrebleu.corpus_bleu([detokenised(translations.get(i, "")) for i in range(len(refs))],
                                 [[detokenised(line) for line in refs]]).score


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


def generate(data_bin, checkpoint, log, refs=None):
    """(BLEU, the share of hypotheses of the reference's length, the number of sentences
    translated, fairseq-generate's BLEU4): BLEU is fairseq-generate's BLEU4, or with ``refs``
    (the tokenised test references) sacrebleu's on detokenised English. fairseq-generate's
    counts the end-of-sentence token as a word of every hypothesis and reference, which raises
    it well above sacrebleu's on short sentences."""
    command = [bin_dir("fairseq-generate"), data_bin, "--path", checkpoint] + GENERATE.split()
    run_logged(command, log)
    with open(log, encoding="utf-8") as f:
        text = f.read()
    bleu = re.search(r"BLEU4 = ([0-9.]+)", text)
    if bleu is None:
        raise RuntimeError(f"no BLEU4 line in {log}")
    targets = {int(m.group(1)): len(m.group(2).split()) for m in
               re.finditer(r"^T-(\d+)\t(.*)$", text, re.M)}
    translations = hypotheses(log)
    same = sum(len(translations.get(k, "").split()) == n for k, n in targets.items())
    score = float(bleu.group(1)) if refs is None else sacrebleu_score(translations, refs)
    return score, same / max(len(targets), 1), len(targets), float(bleu.group(1))


def build_parser():
    parser = experiment.parser(__doc__, "nat_proxy", seeds=8, module="tools.benchmarks.nat_proxy")
    parser.add_argument("--data", choices=DATA, default="generated",
                        help="the generated language pair (default) or Tatoeba Chinese-English")
    parser.add_argument("--updates", type=int,
                        help="training updates per run (default: "
                             + ", ".join(f"{UPDATES[d]} on {d}" for d in DATA) + ")")
    parser.add_argument("--width", type=int,
                        help="model width (default: "
                             + ", ".join(f"{WIDTH[d]} on {d}" for d in DATA) + ")")
    parser.add_argument("--vocab", type=int, default=2000,
                        help="tatoeba: keep pairs within this many most frequent tokens of each "
                             "side (default 2000)")
    parser.add_argument("--split", choices=datasets.SPLITS, default="english",
                        help="tatoeba: split by English sentence, so that no test target is a "
                             "training target (default), or pair by pair at random, where some "
                             "are (to compare with results on such a split)")
    parser.add_argument("--distill", action="store_true",
                        help="train the NATs on a teacher transformer's translations of the "
                             "training set (sequence-level knowledge distillation)")
    parser.add_argument("--teacher-updates", type=int, default=4000,
                        help="with --distill: the teacher's training updates (default 4000)")
    parser.add_argument("--jobs", type=int, default=2, help="trainings run at once (default 2)")
    parser.add_argument("--criteria", nargs="+", default=list(CRITERIA),
                        help="fairseq criteria to compare, the first being the baseline (each a "
                             "--criterion value, or bon:W for the fixed-weight bag-of-n-grams "
                             "anchor; default: nat_loss reloss_nat)")
    parser.add_argument("--fairseq-args", default="",
                        help="more fairseq-train arguments, for every run (quoted)")
    return parser


def table(runs, updates, score="BLEU4"):
    """A row per criterion: its BLEU (``score`` names it; against the first criterion's, seed by
    seed), the share of sentences of the right length, the length loss and token NLL of the
    training log; where ``score`` is not fairseq-generate's BLEU4, that one too (mean, and
    paired against the baseline's)."""
    with_fairseq = score != "BLEU4" and all("fairseq_bleu4" in run for seeds in runs.values()
                                            for run in seeds)
    header = ["criterion", f"{score}, predicted length: mean +- std", "worst seed", "per seed",
              "minus the baseline's, paired: mean +- SE", "right length",
              "length loss, at 25% / last 10% of updates", "token NLL, last 10%"]
    if with_fairseq:
        header.append("fairseq-generate's BLEU4 (end-of-sentence counted): mean; paired")

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
        if with_fairseq:
            fairseq = {run["seed"]: run["fairseq_bleu4"] for run in seeds}
            base = {run["seed"]: run["fairseq_bleu4"] for run in runs[baseline]}
            rows[-1].append(f"{statistics.fmean(fairseq.values()):.2f}" + (
                "" if criterion == baseline else
                f"; {experiment.paired(base, fairseq).format()}"))
    text = experiment.markdown_table(header, rows)
    if "reloss_nat" in runs:  # the learned weights against each fixed-weight anchor
        for anchor in (name for name in runs if name.startswith("bon:")):
            versus = experiment.paired(bleu[anchor], bleu["reloss_nat"])
            paired[f"reloss_nat - {anchor}"] = versus
            text += f"\nreloss_nat minus {anchor}, paired by seed: {versus.format()}\n"
    return text, paired


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    args.updates = args.updates or UPDATES[args.data]
    args.width = args.width or WIDTH[args.data]
    for name in ("updates", "jobs", "width", "vocab", "teacher_updates"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} should be positive but got "
                         f"{getattr(args, name)}")
    if args.data != "tatoeba" and args.distill:
        parser.error("--distill needs --data tatoeba (the generated pair has no teacher)")
    if args.data != "tatoeba" and args.split != "english":
        parser.error("--split needs --data tatoeba (the generated pair has its own test set)")
    specs = {name: criterion_spec(parser, name) for name in args.criteria}
    all_runs = experiment.seed_runs(parser, args, args.criteria, [
        "text", "data-bin", "preprocess.log", "anchors", "teacher", "distill", "data-bin-distill",
        "preprocess-distill.log"])
    started = time.time()
    described = ("Tatoeba Chinese-English" + (", distilled" if args.distill else "")
                 + (", split pair by pair" if args.split == "pairs" else "")
                 if args.data == "tatoeba" else "the generated language pair")
    print(f"[reloss] fairseq's NAT (width {args.width}, 2+2 layers) on {described}, "
          f"{' against '.join(args.criteria)}: {args.seeds} seed(s) each, {args.updates} updates "
          f"a run, {args.jobs} at once", flush=True)
    text_dir, data_bin = os.path.join(args.out, "text"), os.path.join(args.out, "data-bin")
    languages, joined, refs, corpus = LANGUAGES[args.data], args.data == "generated", None, None
    if args.data == "tatoeba":
        pairs, corpus = write_tatoeba(text_dir, args.vocab, args.split)
        refs = references(text_dir, languages[1])
    else:
        pairs = write_corpus(text_dir)
    preprocess(text_dir, data_bin, os.path.join(args.out, "preprocess.log"), languages, joined)
    print(f"[reloss] binarised {pairs[0]} training and {pairs[1]} test pairs into {data_bin}",
          flush=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    teacher = None
    if args.distill:
        print(f"[reloss] training the teacher transformer ({args.teacher_updates} updates) and "
              f"translating the training set with it", flush=True)
        data_bin, teacher = distil(args.out, text_dir, data_bin, languages, args.teacher_updates,
                                   env)
        print(f"[reloss] teacher: test BLEU {teacher['bleu']:.2f}; distilled training set in "
              f"{data_bin} ({teacher['kept']} real targets kept where fairseq-generate left a "
              f"sentence out)", flush=True)
    anchors = {name: write_anchor(os.path.join(args.out, "anchors"), weight)
               for name, (_, weight) in specs.items() if weight is not None}

    def train(run, bar):
        save_dir = os.path.join(args.out, run.tag)
        os.makedirs(save_dir)
        log = os.path.join(save_dir, "train.log")
        command = train_command(data_bin, save_dir, specs[run.arm][0], run.seed, args.updates,
                                args.fairseq_args, args.width, joined, anchors.get(run.arm))
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
        bleu, length_match, count, bleu4 = generate(
            data_bin, os.path.join(save_dir, "checkpoint_last.pt"),
            os.path.join(save_dir, "generate.log"), refs)
        if count != pairs[1]:
            raise RuntimeError(f"fairseq-generate translated {count} of the {pairs[1]} test "
                               f"sentences: see {save_dir}/generate.log")
        return dict(seed=run.seed, bleu=bleu, length_match=length_match, fairseq_bleu4=bleu4,
                    log=training_log(log))

    score = "BLEU4" if refs is None else "BLEU (sacrebleu, detokenised)"

    def describe(run):
        return (f"{score} {run['bleu']:.2f}, right length {run['length_match']:.1%}, final "
                f"length loss {run['log'][-1]['length']:.3f}, nll {run['log'][-1]['nll_loss']:.3f}")

    runs = experiment.run_all(all_runs, train, describe, jobs=args.jobs)
    text, paired = table(runs, args.updates, score)
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
                          f"fairseq NAT on {described}")
    heading = (f"fairseq NAT (width {args.width}, 2+2 layers) on {described} ({pairs[0]} training "
               f"and {pairs[1]} test pairs), {args.updates} updates, {args.seeds} seed(s) per "
               f"criterion (the same seeds for all)"
               + (f"; the teacher's test BLEU {teacher['bleu']:.2f}" if teacher else "") + ":")
    surrogates = ["nat"] if "reloss_nat" in args.criteria else []
    record = dict(runs=runs, paired={name: p.as_dict() for name, p in paired.items()},
                  seeds=list(experiment.seeds(args)), updates=args.updates, data=args.data,
                  width=args.width, score=score, distill=args.distill,
                  teacher=dict(updates=args.teacher_updates, **teacher) if teacher else None,
                  corpus=dict(vocab=args.vocab, split=args.split, counts=corpus["counts"],
                              vocabulary=corpus["vocab"]) if corpus else None,
                  fairseq_args=args.fairseq_args,
                  provenance=experiment.provenance(
                      "nat_proxy", argv, surrogates=surrogates + list(anchors.values()),
                      packages=("fairseq-fixed", "sacrebleu")))
    experiment.report(args.out, heading, text, record, started,
                      f"each run's checkpoint and logs (train.log, generate.log) are in "
                      f"{args.out}/<run>/, e.g. {all_runs[0].tag}/")
    return runs


if __name__ == "__main__":
    main()
