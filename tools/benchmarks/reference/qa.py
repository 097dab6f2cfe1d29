"""Extractive QA reference task: a tiny BERT finds the answer span in generated Chinese passages.

The data are the QA proxy's (``tools.benchmarks.qa_proxy.generate``): passages of CJK characters
holding a few facts, each a one-character key followed by its answer and '。', between filler runs;
the question names one key ("K是什么？"), and the other facts' answers are distractor spans of the
same kind. Characters are tokens (their index in ``tools.benchmarks.qa_proxy.vocabulary()``; no
tokenizer files), laid out as BERT's: [CLS] question [SEP] passage [SEP] padding, token types 0
then 1. Training and dev sets come from fixed seeds, the same for every arm and training seed.

The model is transformers' ``BertForQuestionAnswering`` built in-process from a ``BertConfig``
(2 layers, width 64, 2 heads, as the proxy's), trained from scratch with a plain loop: AdamW
(weight decay 0.01), linear warm-up over the first 10% of steps then linear decay to 0, batch 32.
The loss sees ``pred`` (N, 2, L) start and end logits, ``target`` (N, 2) gold (start, end) token
indices and ``weight`` (N, L) the passage mask (what the ``qa`` surrogate takes; neither it nor
the default loss reads the mask). The metric is dev F1 in % as CMRC 2018 scores it
(``reloss.mrc_metrics.cmrc_f1``): the answer string decoded from the logits as transformers'
``run_qa`` does (``reloss.tasks.qa.best_spans``: 20 best starts and ends, at most 30 tokens,
inside the passage), scored by characters against the reference answer.

The regime matrix crosses answer lengths (the proxy's 1-10 characters, mostly short; short 1-4;
long 5-15), passage lengths (2-3 facts; 4-5 facts, with 4,000 training questions) and schedules
(epochs, learning rate). With 4-5 facts and short answers, or with 5-6 facts, this model learns
nothing in 30-90 s (dev F1 stays at an untrained model's), so no regime has them. ``quick`` trains
on 192 questions for 2 epochs and scores 48 dev questions.

Run as a script, it stores the start and end logits of models along their training (on training
questions, never the dev ones) for ``reloss pretrain --data``:

    python -m tools.benchmarks.reference.qa --out work_dirs/qa/preds_ce_proxy.pt --regime proxy
    python -m tools.benchmarks.reference.qa --checkpoint DIR/surrogate.pt --out FILE.pt \
        --regime short-3f
"""
import math

import torch
import torch.nn.functional as F

from reloss.mrc_metrics import cmrc_f1
from reloss.tasks.qa import best_spans
from tools.benchmarks.reference import (
    Regime,
    checkpoint_loss,
    prediction_parser,
    regime,
    write_predictions,
)

METRIC = "dev F1 (%)"
# An untrained model's decoded spans overlap the answer often enough for 13-32 F1 (20 on average
# over the regimes, 2 seeds): CMRC F1 gives partial credit, and the decoder picks long spans.
CHANCE = 20.0
TOLERANCE = 0.3  # F1 points: a regime's paired mean below -0.3 misses the goal
TRAIN_SEED, DEV_SEED = 0, 10_000
HIDDEN, LAYERS, HEADS = 64, 2, 2
BATCH = 32
QUICK = dict(train=192, dev=48, epochs=2)

ANSWERS = {"proxy": None, "short": (1, 4), "long": (5, 15)}


def _regime(split, answers, facts, epochs, lr, train=2000, dev=400, note=""):
    low, high = ANSWERS[answers] or (1, 10)
    description = (f"{answers} answers ({low}-{high} chars), {facts[0]}-{facts[1]} facts, "
                   f"{train} questions, {epochs} ep, lr {lr:g}{note}")
    return Regime(split, description, dict(answers=answers, facts=facts, epochs=epochs, lr=lr,
                                           train=train, dev=dev))


REGIMES = {
    # design split
    "proxy": _regime("design", "proxy", (2, 3), 15, 2e-3, note=" (the QA proxy's)"),
    "short-3f": _regime("design", "short", (2, 3), 15, 2e-3),
    "long-5f-4k": _regime("design", "long", (4, 5), 6, 2e-3, train=4000),
    # held-out split
    "long-3f": _regime("held-out", "long", (2, 3), 15, 2e-3),
    "short-3f-lr5e-4": _regime("held-out", "short", (2, 3), 20, 5e-4),
}
REFERENCE = ("proxy",)


def original_loss(pred, target, weight=None):
    """The default loss of transformers' QA models, (CE(start) + CE(end)) / 2 averaged over the
    questions, every token counted (``weight``, the passage mask, is not read)."""
    return F.cross_entropy(pred.float().flatten(0, 1), target.flatten())


def timing_inputs(generator):
    """32 x 2 x 384 start/end logits (a SQuAD batch of BERT-base), gold positions and passage
    masks, from the task's synthetic sampler."""
    from reloss.tasks.qa import sample_spans

    logits, positions, context = sample_spans(1, 32, generator, seq_len=384)
    return logits[0], positions[0], context[0]


_DATA = {}


def encode(examples):
    """Token ids, token types, attention masks, passage masks (M, L), gold (start, end) token
    indices (M, 2) and each passage's first token, for examples of
    ``tools.benchmarks.qa_proxy.generate`` (L: the longest sequence)."""
    from tools.benchmarks.qa_proxy import vocabulary

    index = {char: i for i, char in enumerate(vocabulary())}
    cls, sep = index["[CLS]"], index["[SEP]"]
    rows, firsts, spans = [], [], []
    for example in examples:
        question = [index[c] for c in example["question"]]
        passage = [index[c] for c in example["context"]]
        first = len(question) + 2
        (answer,), (start,) = example["answers"], example["answer_starts"]
        if example["context"][start:start + len(answer)] != answer:
            raise ValueError(f"example {example['id']}: the answer {answer!r} is not at "
                             f"{start} in its passage")
        rows.append(([cls, *question, sep], [*passage, sep]))
        firsts.append(first)
        spans.append((first + start, first + start + len(answer) - 1))
    length = max(len(q) + len(p) for q, p in rows)
    count = len(rows)
    ids = torch.zeros(count, length, dtype=torch.long)  # [PAD] is 0
    types = torch.zeros(count, length, dtype=torch.long)
    attention = torch.zeros(count, length, dtype=torch.long)
    context = torch.zeros(count, length)
    for i, (question, passage) in enumerate(rows):
        total = len(question) + len(passage)
        ids[i, :total] = torch.tensor(question + passage)
        types[i, len(question):total] = 1
        attention[i, :total] = 1
        context[i, len(question):total - 1] = 1  # the passage, without the final [SEP]
    return dict(ids=ids, types=types, attention=attention, context=context,
                positions=torch.tensor(spans), first=torch.tensor(firsts))


def data(answers="proxy", facts=(2, 3), train=2000, dev=400):
    """(training set, dev set, dev examples), generated once per setting: encoded as
    :func:`encode` does, padded to the same length."""
    from tools.benchmarks.qa_proxy import generate

    if answers not in ANSWERS:
        raise ValueError(f"'answers' should be one of {sorted(ANSWERS)} but got {answers!r}")
    key = (answers, tuple(facts), train, dev)
    if key not in _DATA:
        train_examples = generate(train, TRAIN_SEED, tuple(facts), "t", ANSWERS[answers])
        dev_examples = generate(dev, DEV_SEED, tuple(facts), "d", ANSWERS[answers])
        both = encode(train_examples + dev_examples)
        _DATA[key] = ({k: v[:train] for k, v in both.items()},
                      {k: v[train:] for k, v in both.items()}, dev_examples)
    return _DATA[key]


def model(length, seed):
    """A fresh tiny BertForQuestionAnswering (``seed`` fixes its weights) for ``length`` tokens."""
    from transformers import BertConfig, BertForQuestionAnswering
    from transformers.utils import logging

    from tools.benchmarks.qa_proxy import vocabulary

    logging.set_verbosity_error()
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocabulary()), hidden_size=HIDDEN,
                        num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                        intermediate_size=2 * HIDDEN, max_position_embeddings=length)
    return BertForQuestionAnswering(config)


def logits(net, batch):
    """(N, 2, L) start and end logits."""
    out = net(input_ids=batch["ids"], token_type_ids=batch["types"],
              attention_mask=batch["attention"])
    return torch.stack([out.start_logits, out.end_logits], 1)


@torch.no_grad()
def f1(net, dev, examples, size=256):
    """Dev F1 (%): CMRC 2018 F1 of the decoded answer strings, averaged over the questions."""
    net.eval()
    spans = torch.cat([best_spans(logits(net, {k: v[i:i + size] for k, v in dev.items()}),
                                  dev["context"][i:i + size])
                       for i in range(0, len(examples), size)])
    net.train()
    total = 0.0
    for (start, end), first, example in zip(spans.tolist(), dev["first"].tolist(), examples,
                                            strict=True):
        answer = example["context"][start - first:end - first + 1] if start >= 0 else ""
        total += cmrc_f1(answer, example["answers"])
    return 100.0 * total / len(examples)


def run(name, loss_fn, seed, quick=False, progress=None, epochs=None, lr=None, record=None):
    """Train a fresh tiny BERT in regime ``name`` with ``loss_fn(logits, positions,
    passage_mask)``; dev F1 along training. ``epochs`` and ``lr`` override the regime's.
    ``record(fraction, net, train)``, if given, is called at every tenth of training (e.g. to
    store the net's predictions on training questions)."""
    options = regime(REGIMES, name).options
    sizes = QUICK if quick else options
    train, dev, examples = data(options["answers"], options["facts"], sizes["train"],
                                sizes["dev"])
    epochs = epochs or (QUICK["epochs"] if quick else options["epochs"])
    lr = lr or options["lr"]
    net = model(train["ids"].shape[1], seed)
    net.train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.01)
    generator = torch.Generator().manual_seed(seed)
    batches = [index for _ in range(epochs)
               for index in torch.randperm(len(train["ids"]), generator=generator).split(BATCH)]
    warmup = max(1, round(0.1 * len(batches)))
    checkpoints = {math.ceil(len(batches) * k / 10): k / 10 for k in range(1, 11)}
    curve = []
    for step, index in enumerate(batches, 1):
        scale = (step / warmup if step <= warmup
                 else (len(batches) - step + 1) / (len(batches) - warmup + 1))
        for group in optimizer.param_groups:
            group["lr"] = lr * scale
        batch = {k: v[index] for k, v in train.items()}
        loss = loss_fn(logits(net, batch), batch["positions"], batch["context"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step in checkpoints:
            curve.append([checkpoints[step], f1(net, dev, examples)])
            if record is not None:
                record(checkpoints[step], net, train)
            if progress is not None:
                progress(checkpoints[step])
    return dict(curve=curve, final=curve[-1][1])


def store_predictions(path, loss_fn, seeds, name="proxy", count=256, quick=False):
    """Train a tiny BERT per seed in the regime ``name`` with ``loss_fn`` and store its start and
    end logits on the first ``count`` training questions (never the dev ones) at every tenth of
    training, as a prediction file of reloss/predictions.py (one group per snapshot) for
    ``reloss pretrain --data``. Returns the final dev F1 per seed."""
    logits_, positions, contexts = [], [], []

    @torch.no_grad()
    def record(fraction, net, train):
        net.eval()
        part = {k: v[:count] for k, v in train.items()}
        logits_.append(logits(net, part))
        positions.append(part["positions"])
        contexts.append(part["context"])
        net.train()

    finals = [run(name, loss_fn, seed, quick=quick, record=record)["final"] for seed in seeds]
    groups = torch.arange(len(logits_)).repeat_interleave(torch.tensor([len(x) for x in logits_]))
    torch.save(dict(task="qa", logits=torch.cat(logits_), positions=torch.cat(positions),
                    context=torch.cat(contexts).float(), group=groups), path)
    return finals


def main(argv=None):
    parser = prediction_parser("reference tiny BERTs", "the default QA loss")
    parser.add_argument("--regime", default="proxy", choices=sorted(REGIMES))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    loss_fn = checkpoint_loss(parser, args.checkpoint, "qa", original_loss)
    write_predictions(parser, args.out, lambda: store_predictions(
        args.out, loss_fn, args.seeds, args.regime), METRIC)


if __name__ == "__main__":
    main()
