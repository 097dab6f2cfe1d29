"""Translation reference task: a small non-autoregressive transformer (Gu et al., 2018) on a
generated parallel corpus.

The corpus is a made-up language pair, drawn once from a fixed seed (the same for every arm and
training seed). Each source word translates to a phrase of 0 to 3 target words (its fertility),
a modifier word's phrase moves behind the phrase of the word it modifies (local reordering), and
after a marker word the next word takes its second translation (context). Tokens follow fairseq's
dictionary (bos 0, pad 1, eos 2, unk 3, words from 4), one dictionary for both sides.

The model: a transformer encoder over the source; a length head on the mean of the encoder states,
trained with its own cross-entropy (fairseq's ``length_loss_factor`` 0.1) in every arm; a decoder
whose inputs are the source embeddings copied uniformly to the target length, attending to each
other and to the encoder, giving logits (N, T, V) for all positions at once. Training uses the
gold target length; evaluation decodes a held-out set with the predicted length (argmax of the
length head) and reports corpus BLEU (sacrebleu's, tokens = ids, tokenize 'none').
Adam (lr 5e-3, betas 0.9 / 0.98), linear warm-up over the first tenth then cosine decay, 64
sentence pairs a step, 300 steps (60 with ``quick``).
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reloss import metrics
from tools.benchmarks.reference import (
    Regime,
    checkpoint_loss,
    prediction_parser,
    regime,
    write_predictions,
)

METRIC = "BLEU, predicted length"
CHANCE = 0.0
TOLERANCE = 0.3  # BLEU: a regime's paired mean below -0.3 misses the goal
DATA_SEED = 0

BOS, PAD, EOS, UNK, FIRST_TOKEN = 0, 1, 2, 3, 4  # reloss.tasks.nat.PAD / FIRST_TOKEN
MAX_TARGET = 40
TRAIN_PAIRS, TEST_PAIRS = 6000, 500
LENGTH_LOSS_FACTOR = 0.1


@dataclass(frozen=True)
class Pair:
    """A generated language pair: vocabulary sizes, how many target words a source word becomes
    (probabilities of 0, 1, 2, 3), the share of plain, modifier and marker words, how many plain
    words' phrases a modifier's phrase moves behind, and the source lengths."""

    source_words: int
    target_words: int
    fertility: tuple
    kinds: tuple
    reach: int
    source_lengths: tuple
    seed: int

    @property
    def vocab(self):
        return FIRST_TOKEN + self.source_words + self.target_words


PAIRS = {
    # The reference pair: target/source length about 1.25, local reordering.
    "a": Pair(64, 160, (0.05, 0.7, 0.2, 0.05), (0.72, 0.2, 0.08), 1, (3, 12), DATA_SEED),
    # Longer targets (about 1.6x the source), a larger vocabulary, more modifiers, and a
    # modifier's phrase moves behind the next two plain words' phrases.
    "b": Pair(80, 200, (0.05, 0.45, 0.35, 0.15), (0.6, 0.3, 0.1), 2, (3, 11), 1),
}
SOURCE_WORDS, TARGET_WORDS = PAIRS["a"].source_words, PAIRS["a"].target_words
VOCAB = PAIRS["a"].vocab
SOURCE_LENGTHS = PAIRS["a"].source_lengths


def _regime(split, pair="a", dim=64, layers=2, steps=300, smoothing=0.0, note=""):
    description = (f"pair {pair}, width {dim} x {layers}+{layers} layers, Adam, {steps} steps"
                   + (f", label smoothing {smoothing:g}" if smoothing else "") + note)
    return Regime(split, description, dict(pair=pair, dim=dim, layers=layers, steps=steps,
                                           label_smoothing=smoothing))


REGIMES = {
    "default": _regime("design"),
    "a-ls": _regime("design", smoothing=0.1),
    "b-small": _regime("design", pair="b", dim=48),
    "b-default": _regime("held-out", pair="b"),
    "b-ls-wide": _regime("held-out", pair="b", dim=96, smoothing=0.1),
    "a-small-ls": _regime("held-out", dim=32, smoothing=0.1),
    "a-wide-long": _regime("held-out", dim=96, steps=600),
}
REFERENCE = ("default",)


def original_loss(pred, target, weight):
    """Token cross-entropy averaged over non-padding target positions (fairseq's nat_loss without
    label smoothing): pred (N, T, V) logits, target (N, T) ids, weight (N, T), 0 at padding."""
    nll = -pred.float().log_softmax(-1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
    if weight is None:
        return nll.mean()
    return (nll * weight).sum() / weight.sum().clamp_min(1)


def timing_inputs(generator):
    """32 sentences x 32 positions x 32,000-token logits, targets and weights (0 at padding)."""
    logits = torch.randn(32, 32, 32000, generator=generator)
    lengths = torch.randint(8, 33, (32,), generator=generator)
    weight = (torch.arange(32) < lengths[:, None]).float()
    target = torch.randint(FIRST_TOKEN, 32000, (32, 32), generator=generator)
    return logits, target.masked_fill(weight == 0, PAD), weight


# The corpus.

def _language(generator, pair=PAIRS["a"]):
    """The word-level rules: per source word its class and its two translations."""
    ranks = torch.arange(1, pair.target_words + 1, dtype=torch.float32)
    target_frequency = 1.0 / ranks.sqrt()
    fertility = torch.multinomial(torch.tensor(pair.fertility), pair.source_words,
                                  replacement=True, generator=generator)
    kind = torch.multinomial(torch.tensor(pair.kinds), pair.source_words, replacement=True,
                             generator=generator)  # 0 plain, 1 modifier, 2 marker
    phrases = []
    for word in range(pair.source_words):
        choices = []
        for _ in range(2):
            count = int(fertility[word]) if kind[word] != 2 else 0
            picks = torch.multinomial(target_frequency, max(count, 1), generator=generator)
            choices.append([FIRST_TOKEN + pair.source_words + int(p) for p in picks[:count]])
        phrases.append(choices)
    return kind.tolist(), phrases


def _translate(source, kind, phrases, reach=1):
    """Target ids for a list of source word indices (0-based)."""
    units, context = [], 0
    for word in source:
        units.append([list(phrases[word][context]), kind[word]])
        context = 1 if kind[word] == 2 else 0
    # A modifier's phrase moves behind the phrases of the next ``reach`` plain words (as many of
    # them as follow it directly).
    i = 0
    while i < len(units) - 1:
        if units[i][1] == 1 and units[i + 1][1] == 0:
            hop = 1
            while hop < reach and i + hop + 1 < len(units) and units[i + hop + 1][1] == 0:
                hop += 1
            units[i:i + hop + 1] = units[i + 1:i + hop + 1] + [units[i]]
            i += hop + 1
        else:
            i += 1
    return [token for phrase, _ in units for token in phrase]


_DATA = {}


def data(pair="a"):
    """(train, test) of the named pair: each (source (M, S), target (M, T)) right-padded with
    ``PAD``."""
    if pair not in _DATA:
        spec = PAIRS[pair]
        generator = torch.Generator().manual_seed(spec.seed)
        kind, phrases = _language(generator, spec)
        frequency = 1.0 / torch.arange(1, spec.source_words + 1, dtype=torch.float32).pow(0.8)
        frequency = frequency[torch.randperm(spec.source_words, generator=generator)]
        sources, targets = [], []
        while len(sources) < TRAIN_PAIRS + TEST_PAIRS:
            length = int(torch.randint(spec.source_lengths[0], spec.source_lengths[1] + 1, (1,),
                                       generator=generator))
            source = torch.multinomial(frequency, length, replacement=True,
                                       generator=generator).tolist()
            target = _translate(source, kind, phrases, spec.reach)
            if 1 <= len(target) <= MAX_TARGET:
                sources.append([FIRST_TOKEN + w for w in source])
                targets.append(target)

        def pad(rows):
            out = torch.full((len(rows), max(map(len, rows))), PAD, dtype=torch.long)
            for i, row in enumerate(rows):
                out[i, :len(row)] = torch.tensor(row)
            return out

        cut = TRAIN_PAIRS
        _DATA[pair] = ((pad(sources[:cut]), pad(targets[:cut])),
                       (pad(sources[cut:]), pad(targets[cut:])))
    return _DATA[pair]


# The model.

def _sinusoid(length, dim):
    position = torch.arange(length, dtype=torch.float32).unsqueeze(-1)
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(1e4) / dim))
    return torch.cat(((position * frequency).sin(), (position * frequency).cos()), -1)


def uniform_copy(source_lengths, target_lengths, length):
    """(N, length) source indices: target position j reads source position
    round(j (S - 1) / (T - 1)) (Gu et al., 2018); 0 beyond the target length."""
    j = torch.arange(length, dtype=torch.float32)
    scale = (source_lengths - 1).float() / (target_lengths - 1).clamp_min(1).float()
    index = (j * scale.unsqueeze(-1)).round().long()
    return torch.minimum(index, (source_lengths - 1).unsqueeze(-1)).clamp_min(0)


class NAT(nn.Module):
    def __init__(self, dim=64, heads=4, layers=2, vocab=VOCAB):
        super().__init__()
        self.dim = dim
        self.embed = nn.Embedding(vocab, dim, padding_idx=PAD)
        nn.init.normal_(self.embed.weight, std=dim ** -0.5)  # as fairseq
        nn.init.zeros_(self.embed.weight[PAD])
        self.register_buffer("positions", _sinusoid(64, dim), persistent=False)

        def layer(kind):
            return kind(dim, heads, dim_feedforward=2 * dim, dropout=0.0, batch_first=True,
                        norm_first=True)

        self.encoder = nn.TransformerEncoder(layer(nn.TransformerEncoderLayer), layers,
                                             enable_nested_tensor=False)
        self.decoder = nn.TransformerDecoder(layer(nn.TransformerDecoderLayer), layers)
        self.length = nn.Linear(dim, MAX_TARGET + 1)
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, vocab)

    def encode(self, source):
        padding = source == PAD
        embedded = self.embed(source) * math.sqrt(self.dim)
        states = self.encoder(embedded + self.positions[:source.shape[1]],
                              src_key_padding_mask=padding)
        keep = (~padding).unsqueeze(-1).float()
        pooled = (states * keep).sum(1) / keep.sum(1)
        return embedded, states, padding, self.length(pooled)

    def decode(self, embedded, states, padding, target_lengths):
        length = int(target_lengths.max())
        copy = uniform_copy((~padding).sum(-1), target_lengths, length)
        queries = embedded.gather(1, copy.unsqueeze(-1).expand(-1, -1, self.dim))
        target_padding = torch.arange(length) >= target_lengths.unsqueeze(-1)
        hidden = self.decoder(queries + self.positions[:length], states,
                              tgt_key_padding_mask=target_padding,
                              memory_key_padding_mask=padding)
        return self.out(self.norm(hidden))


def _batches(count, batch, steps, generator):
    order, out = torch.empty(0, dtype=torch.long), []
    while len(out) < steps:
        if order.numel() < batch:
            order = torch.cat((order, torch.randperm(count, generator=generator)))
        out.append(order[:batch])
        order = order[batch:]
    return out


def corpus_bleu(hypotheses, references):
    """Corpus BLEU (0-100) of right-padded id rows (``PAD``), as ``sacrebleu.corpus_bleu`` with
    tokenize 'none' on the space-joined ids: n-gram matches and lengths summed over the corpus."""
    correct, total, hyp_len, ref_len = metrics.bleu_statistics(hypotheses, references, PAD)
    correct, total = correct.sum(0).double(), total.sum(0).double()
    hyp_len, ref_len = float(hyp_len.sum()), float(ref_len.sum())
    if hyp_len == 0 or float(correct[0]) == 0:
        return 0.0
    counted = total > 0
    missed = (correct == 0) & counted
    smoothing = torch.pow(2.0, missed.double().cumsum(-1))  # sacrebleu's 'exp' smoothing
    precision = torch.where(missed, 1.0 / (smoothing * total.clamp_min(1)),
                            correct / total.clamp_min(1))
    log_mean = float((precision.log() * counted).sum() / len(counted))
    brevity = min(0.0, 1.0 - ref_len / hyp_len)
    return 100.0 * math.exp(log_mean + brevity)


@torch.no_grad()
def evaluate(net, source, target, gold=False, batch=250):
    """Corpus BLEU of argmax decoding, with the predicted (or the gold) target lengths."""
    net.eval()
    hypotheses, references = [], []
    for start in range(0, source.shape[0], batch):
        src, tgt = source[start:start + batch], target[start:start + batch]
        embedded, states, padding, length_logits = net.encode(src)
        gold_lengths = (tgt != PAD).sum(-1)
        lengths = gold_lengths if gold else length_logits.argmax(-1).clamp_min(1)
        tokens = net.decode(embedded, states, padding, lengths).argmax(-1)
        tokens = tokens.masked_fill(torch.arange(tokens.shape[1]) >= lengths.unsqueeze(-1), PAD)
        hypotheses.append(F.pad(tokens, (0, MAX_TARGET - tokens.shape[1]), value=PAD))
        references.append(F.pad(tgt, (0, MAX_TARGET - tgt.shape[1]), value=PAD))
    net.train()
    return corpus_bleu(torch.cat(hypotheses), torch.cat(references))


def run(name, loss_fn, seed, quick=False, progress=None, steps=None, batch=64, lr=5e-3,
        gold=False, snapshot=None):
    """Train a fresh NAT in the regime ``name`` with ``loss_fn(logits, targets, weights)`` + the
    length cross-entropy; test BLEU (predicted lengths) along training. ``gold=True`` also records
    gold-length BLEU; ``snapshot(fraction, net)`` is called at each tenth of training. The
    regime's ``label_smoothing`` is applied by the caller's loss (tools/benchmarks/training.py)."""
    options = regime(REGIMES, name).options
    (source, target), (test_source, test_target) = data(options["pair"])
    steps = steps or (60 if quick else options["steps"])
    torch.manual_seed(seed)
    net = NAT(dim=options["dim"], layers=options["layers"], vocab=PAIRS[options["pair"]].vocab)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr, betas=(0.9, 0.98))
    warmup = max(steps // 10, 1)
    generator = torch.Generator().manual_seed(seed)
    batches = _batches(source.shape[0], batch, steps, generator)
    checkpoints = {math.ceil(steps * k / 10): k / 10 for k in range(1, 11)}
    curve, gold_curve = [], []
    for step, index in enumerate(batches, 1):
        for group in optimizer.param_groups:
            group["lr"] = lr * min(step / warmup, 0.5 * (1 + math.cos(
                math.pi * (step - warmup) / max(steps - warmup, 1))))
        src, tgt = source[index], target[index]
        width = int((tgt != PAD).sum(-1).max())
        tgt = tgt[:, :width]
        src = src[:, :int((src != PAD).sum(-1).max())]
        lengths = (tgt != PAD).sum(-1)
        embedded, states, padding, length_logits = net.encode(src)
        logits = net.decode(embedded, states, padding, lengths)
        loss = loss_fn(logits, tgt, (tgt != PAD).float())
        loss = loss + LENGTH_LOSS_FACTOR * F.cross_entropy(length_logits, lengths)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step in checkpoints:
            curve.append([checkpoints[step], evaluate(net, test_source, test_target)])
            if gold:
                gold_curve.append([checkpoints[step],
                                   evaluate(net, test_source, test_target, gold=True)])
            if snapshot is not None:
                snapshot(checkpoints[step], net)
            if progress is not None:
                progress(checkpoints[step])
    out = dict(curve=curve, final=curve[-1][1])
    if gold:
        out.update(gold_curve=gold_curve, gold_final=gold_curve[-1][1])
    return out


@torch.no_grad()
def gold_length_logits(net, source, target):
    """The net's logits (N, T, V) for ``target``'s gold lengths (as in training)."""
    net.eval()
    embedded, states, padding, _ = net.encode(source[:, :int((source != PAD).sum(-1).max())])
    width = int((target != PAD).sum(-1).max())
    logits = net.decode(embedded, states, padding, (target != PAD).sum(-1))
    net.train()
    return logits, target[:, :width]


def store_predictions(path, loss_fn, seeds, name="default", count=256, quick=False):
    """Train a NAT per seed in the regime ``name`` with ``loss_fn`` and store its gold-length
    logits on the first ``count`` training pairs (never the test pairs) at every tenth of
    training, as a prediction file of reloss/predictions.py (one group per snapshot) for
    ``reloss pretrain --data``. Returns the final test BLEU per seed."""
    (source, target), _ = data(regime(REGIMES, name).options["pair"])
    source, target = source[:count], target[:count]
    logits, targets = [], []

    def record(fraction, net):
        out, kept = gold_length_logits(net, source, target)
        logits.append(F.pad(out, (0, 0, 0, MAX_TARGET - out.shape[1])))
        targets.append(F.pad(kept, (0, MAX_TARGET - kept.shape[1]), value=PAD))

    finals = [run(name, loss_fn, seed, quick=quick, snapshot=record)["final"] for seed in seeds]
    targets = torch.cat(targets)
    torch.save(dict(task="nat", logits=torch.cat(logits), targets=targets,
                    target_weights=(targets != PAD).float(),
                    group=torch.arange(len(logits)).repeat_interleave(count)), path)
    return finals


def main(argv=None):
    import reloss

    parser = prediction_parser("reference NATs", "token cross-entropy")
    parser.add_argument("--ngram-weight", type=float, metavar="W",
                        help="train with token cross-entropy plus W times each of the 1- to "
                             "4-gram bag distances (an unpretrained SequenceSurrogate(ngrams=4, "
                             "ngram_weight=W)) instead")
    parser.add_argument("--regime", default="default", choices=sorted(REGIMES))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    loss_fn = checkpoint_loss(parser, args.checkpoint, "nat", original_loss)
    if args.ngram_weight is not None:
        if args.checkpoint:
            parser.error("--checkpoint and --ngram-weight: give one of them")
        try:
            loss_fn = reloss.SequenceSurrogate(ngrams=4, ngram_weight=args.ngram_weight)
        except ValueError as error:
            parser.error(f"--ngram-weight: {error}")
    write_predictions(parser, args.out, lambda: store_predictions(
        args.out, loss_fn, args.seeds, args.regime), METRIC)


if __name__ == "__main__":
    main()
