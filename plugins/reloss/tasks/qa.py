"""Extractive question answering: QASurrogate, F1 of the decoded answer span per chunk, the
default loss of Hugging Face QA models, synthetic start/end logits whose F1 spreads over [0, 1],
and the Chinese reading-comprehension metrics on answer strings (CMRC 2018 F1/EM, DuReader
ROUGE-L/BLEU-4).

Stored predictions: ``logits`` (M, 2, L) float (start logits, end logits), ``positions`` (M, 2)
gold (start, end) token indices in [0, L) and ``context`` (M, L), 1 where a token belongs to the
passage (the only tokens a decoded answer may start or end on).
"""
from __future__ import annotations

import math
import unicodedata
from collections import Counter

import torch
import torch.nn.functional as F
from torch import nn

from .._validate import check_float, check_ndim, check_not_bool, check_tensor
from ..rank import upcast_half
from ..surrogate import Surrogate, softplus_weights, weighted_unit_mean
from .base import Task, quality, uniform
from .cls import MonotoneSteps

#: Defaults of transformers' ``run_qa`` example (``--max_answer_length``, ``--n_best_size``).
MAX_ANSWER_LENGTH = 30
N_BEST = 20


def _check_spans(logits, positions, context=None):
    check_float("logits", logits)
    if logits.dim() < 2 or logits.shape[-2] != 2:
        raise ValueError(f"'logits' should be (..., 2, L) start and end logits but got shape "
                         f"{tuple(logits.shape)}")
    check_tensor("positions", positions)
    check_not_bool("positions", positions, "integer (..., 2) start and end token indices")
    if positions.is_floating_point() or tuple(positions.shape) != tuple(logits.shape[:-1]):
        raise ValueError(f"'positions' should be integer (..., 2) = {tuple(logits.shape[:-1])} "
                         f"start and end token indices but got {positions.dtype} "
                         f"{tuple(positions.shape)}")
    if context is not None:
        check_tensor("context", context)
        expected = (*logits.shape[:-2], logits.shape[-1])
        if tuple(context.shape) != expected:
            raise ValueError(f"'context' should be (..., L) = {expected} passage masks but got "
                             f"{tuple(context.shape)}")


def best_spans(logits: torch.Tensor, context: torch.Tensor | None = None,
               max_answer_length: int = MAX_ANSWER_LENGTH, n_best: int = N_BEST) -> torch.Tensor:
    """The answer span of each prediction, decoded as transformers' ``run_qa`` example does: the
    ``n_best`` highest start and end logits, pairs with end >= start, at most
    ``max_answer_length`` tokens, both ends in the passage; the pair with the highest sum.

    Args:
        logits (Tensor): (..., 2, L) start and end logits.
        context (Tensor | None): (..., L) passage mask (non-zero: may start or end an answer);
            None: every token.

    Returns:
        Tensor: (..., 2) long (start, end), inclusive; (-1, -1) where no pair qualifies (an
        empty answer).
    """
    start, end = logits.detach().float().unbind(-2)
    if context is not None:
        outside = context == 0
        start = start.masked_fill(outside, -math.inf)
        end = end.masked_fill(outside, -math.inf)
    k = min(n_best, start.shape[-1])
    start_values, start_index = start.topk(k, -1)
    end_values, end_index = end.topk(k, -1)
    length = end_index.unsqueeze(-2) - start_index.unsqueeze(-1) + 1  # (..., k start, k end)
    score = start_values.unsqueeze(-1) + end_values.unsqueeze(-2)
    score = score.masked_fill((length < 1) | (length > max_answer_length), -math.inf)
    best = score.flatten(-2).argmax(-1, keepdim=True)
    found = score.flatten(-2).gather(-1, best).squeeze(-1) > -math.inf
    spans = torch.stack([start_index.gather(-1, best // k), end_index.gather(-1, best % k)], -1)
    return torch.where(found.unsqueeze(-1), spans.squeeze(-2), -1)


def span_overlap_f1(pred: torch.Tensor, gold: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(exact match, F1) of token spans: (..., 2) inclusive (start, end) each; F1 from the number
    of tokens the two spans share (SQuAD's token-overlap F1 on positions). A predicted span
    (-1, -1) is empty: 0 for both."""
    pred_length = (pred[..., 1] - pred[..., 0] + 1).clamp_min(0)
    gold_length = (gold[..., 1] - gold[..., 0] + 1).clamp_min(0)
    shared = (torch.minimum(pred[..., 1], gold[..., 1])
              - torch.maximum(pred[..., 0], gold[..., 0]) + 1).clamp_min(0)
    shared = torch.where(pred[..., 0] < 0, 0, shared).double()
    f1 = 2 * shared / (pred_length + gold_length).clamp_min(1).double()
    exact = ((pred == gold).all(-1) & (pred[..., 0] >= 0)).double()
    return exact, f1


def span_f1(logits: torch.Tensor, positions: torch.Tensor,
            context: torch.Tensor | None = None) -> torch.Tensor:
    """Mean F1 of the decoded answer spans (:func:`best_spans`) per chunk: logits (S, N, 2, L),
    positions (S, N, 2), context (S, N, L) -> (S,) float64."""
    _check_spans(logits, positions, context)
    return span_overlap_f1(best_spans(logits, context), positions)[1].mean(-1)


def span_exact_match(logits: torch.Tensor, positions: torch.Tensor,
                     context: torch.Tensor | None = None) -> torch.Tensor:
    """Share of decoded answer spans equal to the gold span per chunk, (S,) float64."""
    _check_spans(logits, positions, context)
    return span_overlap_f1(best_spans(logits, context), positions)[0].mean(-1)


def qa_cross_entropy(logits: torch.Tensor, positions: torch.Tensor,
                     context: torch.Tensor | None = None) -> torch.Tensor:
    """The default loss of transformers' QA models, (CE(start) + CE(end)) / 2 over every token,
    averaged per chunk: logits (S, N, 2, L), positions (S, N, 2) -> (S,). ``context`` is not
    read (the models' loss does not mask the question)."""
    ce = F.cross_entropy(logits.flatten(0, -2).float(), positions.flatten(), reduction="none")
    return ce.view(positions.shape).mean(-1).mean(-1)


def _tempered_span_losses(logits, positions, temperatures):
    """Per prediction and temperature T, for start and end: u_T = T lse(z / T) - z_gold (the
    cross-entropy at T = 1, the hinge max z - z_gold as T -> 0) and v_T = T lse(z / T) -
    T lse_{i in gold span}(z_i / T) (the same with every token of the gold answer counted
    right). (N, 2, L), (N, 2) -> (N, 2 * 2 * len(temperatures))."""
    low = positions.amin(-1, keepdim=True)
    high = positions.amax(-1, keepdim=True)
    index = torch.arange(logits.shape[-1], device=logits.device)
    outside = ((index < low) | (index > high)).unsqueeze(-2)  # (N, 1, L)
    own = logits.gather(-1, positions.unsqueeze(-1)).squeeze(-1)  # (N, 2)
    features = []
    for t in temperatures:
        total = t * torch.logsumexp(logits / t, -1)
        in_span = t * torch.logsumexp((logits / t).masked_fill(outside, -math.inf), -1)
        features += [total - own, total - in_span]
    return torch.stack(features, -1).flatten(1)


def _overlap_window(positions, width, length, longest, dtype):
    """The spans that can share a token with the gold span (N, 2): starts (N, W) from ``width -
    1`` tokens before the gold start, ends (N, W, K) up to ``width`` tokens from each start, W =
    ``width - 1 + longest``; with a mask of the spans inside the sequence and their F1 (N, W, K)
    in ``dtype``."""
    device = positions.device
    low, high = positions[:, 0:1], positions[:, 1:2]  # (N, 1)
    start = low - (width - 1) + torch.arange(width - 1 + longest, device=device)  # (N, W)
    end = start.unsqueeze(-1) + torch.arange(width, device=device)  # (N, W, K)
    inside = (start >= 0).unsqueeze(-1) & (end < length)
    low, high, first = low.unsqueeze(-1), high.unsqueeze(-1), start.unsqueeze(-1)
    shared = (torch.minimum(end, high) - torch.maximum(first, low) + 1).clamp_min(0) * inside
    f1 = 2 * shared.to(dtype) / (end - first + 2 + high - low).clamp_min(1)
    return start.clamp(0, length - 1), end.clamp(0, length - 1), inside, f1


def _longest_answer(positions, length):
    """Tokens in the longest gold answer (read on the CPU; on an accelerator, where reading it
    would wait for the device, the sequence length)."""
    if positions.device.type != "cpu":
        return length
    if not len(positions):
        return 1
    return int((positions[:, 1] - positions[:, 0]).max().clamp_min(0)) + 1


def expected_span_f1(logits: torch.Tensor, positions: torch.Tensor,
                     max_answer_length: int = MAX_ANSWER_LENGTH) -> torch.Tensor:
    """The expected F1 (token overlap) of the answer span when its start and end are drawn
    independently from the softmax of the start and end logits, as the default QA loss reads
    them: ``sum_{s <= e < s + max_answer_length} p_start(s) p_end(e) F1((s, e), gold)``; start
    and end pairs outside that band (an end before the start, an answer longer than the
    decoder allows) count as F1 0. (N, 2, L) logits, (N, 2) gold (start, end) -> (N,), with
    gradient.

    Only spans that start within ``max_answer_length - 1`` tokens before the gold start, up to
    the gold end, can share a token with the gold span, so only those are read: O(N K (K + A)),
    K = ``max_answer_length``, A the longest gold answer (on an accelerator, where reading A
    would wait for the device, A = L)."""
    probs = upcast_half(logits).softmax(-1)
    length = probs.shape[-1]
    start, end, inside, f1 = _overlap_window(positions, min(max_answer_length, length), length,
                                             _longest_answer(positions, length), probs.dtype)
    p_start = probs[:, 0].gather(1, start)
    p_end = probs[:, 1].gather(1, end.flatten(1)).view(end.shape)
    return torch.einsum("nw,nwk,nwk->n", p_start, p_end, f1)


def span_scores(logits: torch.Tensor, max_answer_length: int = MAX_ANSWER_LENGTH
                ) -> torch.Tensor:
    """The decoder's score of every span it may return: ``z_start(s) + z_end(s + k)`` for k <
    ``max_answer_length``, -inf where ``s + k`` falls past the sequence. (N, 2, L) -> (N, L, K)."""
    start, end = upcast_half(logits).unbind(-2)
    width = min(max_answer_length, start.shape[-1])
    padded = F.pad(end, (0, width - 1), value=-math.inf)
    return start.unsqueeze(-1) + padded.unfold(-1, width, 1)


def _span_normaliser(logits, positions, max_answer_length):
    """(log of the sum of exp(score) over the decoder's spans and the gold span, the gold span's
    score), each (N,). The gold span is added where the band lacks it (an answer longer than
    ``max_answer_length`` tokens), so the gold probability is never above 1."""
    scores = span_scores(logits, max_answer_length)
    width = scores.shape[-1]
    logits = upcast_half(logits)
    gold = (logits[:, 0].gather(1, positions[:, 0:1]) + logits[:, 1].gather(1, positions[:, 1:2])
            ).squeeze(1)
    total = scores.flatten(1).logsumexp(-1)
    length = positions[:, 1] - positions[:, 0]
    outside = (length < 0) | (length >= width)
    return torch.logaddexp(total, gold.masked_fill(~outside, -math.inf)), gold


def _span_terms(logits, positions, max_answer_length):
    """(span cross-entropy, expected F1 under the span softmax), each (N,), sharing one
    normaliser."""
    total, gold = _span_normaliser(logits, positions, max_answer_length)
    logits = upcast_half(logits)
    length = logits.shape[-1]
    start, end, inside, f1 = _overlap_window(positions, min(max_answer_length, length), length,
                                             _longest_answer(positions, length), logits.dtype)
    score = (logits[:, 0].gather(1, start).unsqueeze(-1)
             + logits[:, 1].gather(1, end.flatten(1)).view(end.shape))
    probs = (score - total[:, None, None]).exp() * inside
    return total - gold, (probs * f1).sum((1, 2))


def span_cross_entropy(logits: torch.Tensor, positions: torch.Tensor,
                       max_answer_length: int = MAX_ANSWER_LENGTH) -> torch.Tensor:
    """The cross-entropy of the gold span under one softmax over the spans the decoder may return
    (:func:`span_scores`: start <= end < start + ``max_answer_length``, scored ``z_start +
    z_end`` as :func:`best_spans` scores them), where the default loss takes two softmaxes, one
    over starts and one over ends, that also count the pairs the decoder never returns. (N, 2, L)
    logits, (N, 2) gold -> (N,), >= 0."""
    total, gold = _span_normaliser(logits, positions, max_answer_length)
    return total - gold


def expected_decoded_f1(logits: torch.Tensor, positions: torch.Tensor,
                        max_answer_length: int = MAX_ANSWER_LENGTH) -> torch.Tensor:
    """The expected F1 of a span drawn from the softmax over the decoder's spans (the
    distribution of :func:`span_cross_entropy`). Only the spans that can overlap the gold one
    are read, as in :func:`expected_span_f1`. (N, 2, L), (N, 2) -> (N,), with gradient."""
    return _span_terms(logits, positions, max_answer_length)[1]


class QASurrogate(Surrogate):
    """A learned, non-decreasing function of tempered cross-entropies of the answer's start and
    end.

    For the start and for the end logits it reads, at each temperature T, ``u_T = T lse(z / T) -
    z_gold`` (T = 1: the cross-entropy the default QA loss takes; small T: the hinge that decides
    whether the arg-max is the gold token) and ``v_T = T lse(z / T) - T lse_{i in span}(z_i / T)``,
    the same with every token of the gold answer counted right: a start or end inside the gold
    answer still shares most of its tokens with it, which is what F1 rewards and what
    cross-entropy ignores. It adds up learned non-decreasing functions of them
    (:class:`~reloss.tasks.cls.MonotoneSteps`), so every feature is smallest at the gold span and
    the loss never rises when one falls, and it may saturate on hopeless predictions.

    With ``risk`` it reads instead, per question, the default loss ``(CE(start) + CE(end)) / 2``
    and ``1 - E[F1]``, one minus the expected F1 of a span drawn from the start and end
    distributions (:func:`expected_span_f1`), and its value is ``CE + a (1 - E[F1])`` with a
    learned ``a = softplus(theta) >= 0``: the default loss plus a learned share of the expected
    F1 risk. The steps are not built.

    With ``joint`` it reads the answer as the decoder does, one span scored ``z_start + z_end``
    among the spans it may return (:func:`span_cross_entropy`, :func:`expected_decoded_f1`), and
    its value is ``CE_span / 2 + b (CE(start) + CE(end)) / 2 + a (1 - E_span[F1])`` with learned
    ``b, a >= 0`` (softplus): the span's cross-entropy (halved, as the default loss halves its
    two), plus learned shares of the default loss and of the expected-F1 risk under the same
    span distribution.

    Args:
        temperatures (sequence of float): the temperatures T, each > 0.
        knots (int): learned steps per feature.
        span (float): the range the steps start out spread over.
        risk (bool): the form ``CE + a (1 - E[F1])``.
        risk_weight (float): with ``risk`` or ``joint``, the initial a.
        joint (bool): the form ``CE_span / 2 + b CE + a (1 - E_span[F1])``.
        ce_weight (float): with ``joint``, the initial b.

    Note:
        N predictions, L tokens. ``pred`` (N, 2, L) start and end logits, ``target`` (N, 2) gold
        (start, end) token indices in [0, L); ``weight`` (N, L), the passage mask, is accepted
        for pretraining and not read (the loss, like the default one, takes every token).
    """

    task = "qa"

    def __init__(self, temperatures=(1.0, 0.1), knots=16, span=8.0, risk=False, risk_weight=1.0,
                 joint=False, ce_weight=0.5):
        super().__init__()
        self.temperatures = tuple(float(t) for t in temperatures)
        if not self.temperatures or min(self.temperatures) <= 0:
            raise ValueError(f"'temperatures' should be one or more numbers > 0 but got "
                             f"{temperatures!r}")
        for name, value in (("risk", risk), ("joint", joint)):
            if not isinstance(value, bool):
                raise ValueError(f"'{name}' should be True or False but got {value!r}")
        if risk and joint:
            raise ValueError("'risk' and 'joint' are two forms: set one of them")
        risk_theta = softplus_weights("risk_weight", risk_weight, 1)
        ce_theta = softplus_weights("ce_weight", ce_weight, 1)
        self.knots, self.span = knots, span
        self.risk, self.risk_weight = risk, float(risk_weight)
        self.joint, self.ce_weight = joint, float(ce_weight)
        if risk:  # a = softplus(theta), starting at risk_weight
            self.num_features = 2
            self.theta = risk_theta
            return
        if joint:  # (b, a) = softplus(theta), starting at (ce_weight, risk_weight)
            self.num_features = 3
            self.theta = nn.Parameter(torch.cat([ce_theta, risk_theta]).detach())
            return
        self.num_features = 4 * len(self.temperatures)
        self.net = MonotoneSteps(self.num_features, knots, span)

    def config(self):
        config = dict(temperatures=list(self.temperatures), knots=self.knots, span=self.span)
        if self.risk:
            config.update(risk=True, risk_weight=self.risk_weight)
        if self.joint:
            config.update(joint=True, risk_weight=self.risk_weight, ce_weight=self.ce_weight)
        return config

    @property
    def risk_weights(self):
        """With ``risk``: the weight a of ``1 - E[F1]``, (1,); with ``joint``: the weights (b, a)
        of the default loss and of ``1 - E_span[F1]``, (2,)."""
        return F.softplus(self.theta)

    def head(self, features, weights):
        if not (self.risk or self.joint):
            return super().head(features, weights)
        values = features[..., 0] + features[..., 1:] @ self.risk_weights.to(features.dtype)
        return weighted_unit_mean(values, weights)

    def features(self, pred, target, weight=None):
        check_ndim("pred", pred, (3,), "3-D (N, 2, L) start and end logits")
        _check_spans(pred, target, weight)
        length = pred.shape[-1]
        # Values are read on the CPU only (on an accelerator that would wait for the device
        # every step; the adapter clamps positions before they arrive here).
        if target.device.type == "cpu" and target.numel() and (
                int(target.min()) < 0 or int(target.max()) >= length):
            raise ValueError(f"'target' should hold token indices in [0, {length}) but holds "
                             f"[{int(target.min())}, {int(target.max())}]")
        logits = upcast_half(pred)
        if self.risk or self.joint:
            target = target.long()
            ce = F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none")
            ce = ce.view(target.shape).mean(-1)
            if self.risk:
                features = [ce, 1 - expected_span_f1(logits, target).to(ce.dtype)]
            else:
                span_ce, f1 = _span_terms(logits, target, MAX_ANSWER_LENGTH)
                features = [span_ce / 2, ce, 1 - f1.to(ce.dtype)]
            features = torch.stack(features, -1)
        else:
            features = _tempered_span_losses(logits, target.long(), self.temperatures)
        return features.unsqueeze(1), logits.new_ones(logits.shape[0], 1)


def sample_spans(num_chunks, chunk_size=32, generator=None, seq_len=128,
                 max_answer_length=MAX_ANSWER_LENGTH, late_fraction=0.5, late_band=(0.6, 0.95)):
    """Start/end logits (S, N, 2, L), gold positions (S, N, 2) and passage masks (S, N, L) whose
    chunk F1 spreads over [0, 1].

    Each sequence is laid out as BERT's: [CLS] question [SEP] passage [SEP] padding. Gold answers
    are 1 to 20 tokens (log-uniform). Per chunk a target quality; per prediction, the model
    favours the gold span with that probability, otherwise a span that overlaps it partly (ends
    moved by up to the answer's length) or a distractor span elsewhere in the passage, and a
    wrong prediction often keeps the gold span as runner-up. Tokens outside the passage get
    lower logits by a random margin, as a trained model gives them. Confidence varies from
    near-uniform to saturated.
    """
    shape = (num_chunks, chunk_size)
    position = torch.arange(seq_len)
    question = torch.randint(3, max(4, seq_len // 8), shape, generator=generator)
    first = question + 2  # [CLS] question [SEP]
    room = seq_len - 1 - first  # tokens left before the final [SEP]
    passage = (room * uniform(shape, 0.5, 1.0, generator)).long().clamp_min(2)
    last = first + passage - 1
    context = (position >= first.unsqueeze(-1)) & (position <= last.unsqueeze(-1))
    longest = torch.minimum(passage, torch.tensor(min(20, max_answer_length)))
    answer = torch.exp(torch.rand(shape, generator=generator) * longest.log()).long().clamp(
        torch.ones_like(longest), longest)
    gold_start = first + (torch.rand(shape, generator=generator) * (passage - answer + 1)).long()
    gold = torch.stack([gold_start, gold_start + answer - 1], -1)

    level = quality(num_chunks, late_fraction, late_band, generator).unsqueeze(-1)
    right = torch.rand(shape, generator=generator) < level
    partial = torch.rand(shape, generator=generator) < 0.5
    shift = ((2 * torch.rand(*shape, 2, generator=generator) - 1)
             * (answer.unsqueeze(-1) + 1)).round().long()
    moved = gold + shift
    moved = torch.stack([moved.amin(-1), moved.amax(-1)], -1)
    distractor_start = first + (torch.rand(shape, generator=generator)
                                * (passage - answer + 1)).long()
    distractor = torch.stack([distractor_start, distractor_start + answer - 1], -1)
    favoured = torch.where(right.unsqueeze(-1), gold,
                           torch.where(partial.unsqueeze(-1), moved, distractor))
    favoured = favoured.clamp(first.unsqueeze(-1), last.unsqueeze(-1))
    favoured[..., 1] = torch.minimum(favoured[..., 1], favoured[..., 0] + max_answer_length - 1)

    noise = uniform((num_chunks, 1, 1, 1), 0.3, 2.0, generator)
    logits = noise * torch.randn(*shape, 2, seq_len, generator=generator)
    lead = noise[..., 0] * math.sqrt(2 * math.log(seq_len))
    confidence = torch.exp(uniform((num_chunks, 1, 1), math.log(0.5), math.log(6.0), generator))
    gap = lead * confidence * (0.5 + torch.rand(*shape, 2, generator=generator))
    logits.scatter_add_(-1, favoured.unsqueeze(-1), gap.unsqueeze(-1))
    runner_up = (~right).unsqueeze(-1) & (torch.rand(*shape, 2, generator=generator) < 0.6)
    boost = gap * torch.rand(*shape, 2, generator=generator) * runner_up
    logits.scatter_add_(-1, gold.unsqueeze(-1), boost.unsqueeze(-1))
    margin = lead * confidence * uniform((num_chunks, chunk_size, 1), 0.0, 2.0, generator)
    logits = logits - (margin * (~context)).unsqueeze(-2)
    return logits, gold, context.float()


TASK = Task(
    name="qa", description="extractive question answering", surrogate=QASurrogate,
    metric=span_f1, metric_label="span F1",
    original_loss=qa_cross_entropy, original_name="start/end cross-entropy",
    band=(0.6, 0.95), chunk_size=32,
    sample=sample_spans,
    sample_kinds=tuple(dict(seq_len=n) for n in (64, 128, 384)),
    prediction_fields=("logits", "positions", "context"), prediction_ndim=3,
    prediction_shapes=lambda logits: {"positions": tuple(logits.shape[:2]),
                                      "context": (logits.shape[0], logits.shape[2])},
    index_field="positions",
    # The shipped surrogate is the joint form (QASurrogate(joint=True)): the span cross-entropy
    # plus learned shares of the default loss and of the expected-F1 risk. It holds the default
    # loss already, so none is added beside it (docs/qa.md).
    default_original_weight=0.0,
    # As for classification: the gradient may fall 10x below cross-entropy's on a chunk (to
    # saturate on hopeless predictions) but rise only 1.5x above it.
    pretrain_steps=600, pretrain_tolerance=(10.0, 1.5),
)


# Answer strings: the metrics of Chinese reading comprehension, character-level.

def _is_cjk(char):
    return "\u4e00" <= char <= "\u9fff" or "\u3400" <= char <= "\u4dbf"


def _is_punctuation(char):
    return unicodedata.category(char).startswith(("P", "S"))


def cmrc_tokens(text: str) -> list[str]:
    """CMRC 2018's segmentation for F1: lower case, punctuation and symbols removed, each CJK
    character a token, other text split on white space (the official script uses nltk's word
    tokenizer there; for Chinese answers the two agree)."""
    tokens, word = [], []
    for char in str(text).lower().strip():
        if _is_punctuation(char) or char.isspace() or _is_cjk(char):
            if word:
                tokens.append("".join(word))
                word = []
            if _is_cjk(char):
                tokens.append(char)
        else:
            word.append(char)
    if word:
        tokens.append("".join(word))
    return tokens


def _longest_common_substring(a, b):
    best, previous = 0, [0] * (len(b) + 1)
    for x in a:
        current = [0] * (len(b) + 1)
        for j, y in enumerate(b, 1):
            if x == y:
                current[j] = previous[j - 1] + 1
                best = max(best, current[j])
        previous = current
    return best


def _longest_common_subsequence(a, b):
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, 1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def _check_answers(prediction, references):
    if not isinstance(prediction, str):
        raise TypeError(f"'prediction' should be a str but got {type(prediction).__name__}")
    if isinstance(references, str) or not references or not all(
            isinstance(r, str) for r in references):
        raise ValueError(f"'references' should be a non-empty list of str answers but got "
                         f"{references!r}")


def cmrc_f1(prediction: str, references: list[str]) -> float:
    """CMRC 2018 F1 of one answer: from the longest common substring of the token lists
    (:func:`cmrc_tokens`), the best over the reference answers; in [0, 1]."""
    _check_answers(prediction, references)
    predicted, best = cmrc_tokens(prediction), 0.0
    for reference in references:
        gold = cmrc_tokens(reference)
        common = _longest_common_substring(gold, predicted)
        if common:
            precision, recall = common / len(predicted), common / len(gold)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def cmrc_exact_match(prediction: str, references: list[str]) -> float:
    """CMRC 2018 exact match: 1.0 if the answer equals a reference once lower-cased and stripped
    of punctuation, symbols and white space, else 0.0."""
    _check_answers(prediction, references)
    predicted = "".join(cmrc_tokens(prediction))
    return float(any(predicted == "".join(cmrc_tokens(r)) for r in references))


def dureader_tokens(text: str) -> list[str]:
    """DuReader's normalisation: the answer's characters, white space dropped."""
    return [char for char in str(text) if not char.isspace()]


def rouge_l(prediction: str, references: list[str], beta: float = 1.2) -> float:
    """DuReader's ROUGE-L of one answer, on characters: the longest common subsequence gives a
    precision and a recall per reference; the best of each over the references combine as
    ``(1 + beta^2) P R / (R + beta^2 P)``. In [0, 1]."""
    _check_answers(prediction, references)
    predicted = dureader_tokens(prediction)
    if not predicted:
        return 0.0
    precision = recall = 0.0
    for reference in references:
        gold = dureader_tokens(reference)
        common = _longest_common_subsequence(gold, predicted)
        precision = max(precision, common / len(predicted))
        recall = max(recall, common / len(gold) if gold else 0.0)
    if precision == 0 or recall == 0:
        return 0.0
    return (1 + beta ** 2) * precision * recall / (recall + beta ** 2 * precision)


def corpus_bleu4(predictions: list[str], references: list[list[str]]) -> float:
    """DuReader's BLEU-4, on characters, over a whole set of answers (coco-caption's scorer):
    n-gram counts clipped by their largest count in any reference, summed over answers, the
    geometric mean of the 1- to 4-gram precisions, no smoothing, and a brevity penalty
    ``exp(1 - r / c)`` from the total answer length c and the total of each answer's closest
    reference length r (the shorter on a tie). In [0, 1]."""
    if len(predictions) != len(references):
        raise ValueError(f"'predictions' and 'references' should have the same length but got "
                         f"{len(predictions)} and {len(references)}")
    matched, total = [0] * 4, [0] * 4
    candidate_length = reference_length = 0
    for prediction, answers in zip(predictions, references, strict=True):
        _check_answers(prediction, answers)
        predicted = dureader_tokens(prediction)
        golds = [dureader_tokens(a) for a in answers]
        candidate_length += len(predicted)
        reference_length += min((abs(len(g) - len(predicted)), len(g)) for g in golds)[1]
        for n in range(1, 5):
            counts = Counter(tuple(predicted[i:i + n]) for i in range(len(predicted) - n + 1))
            most = Counter()
            for gold in golds:
                most |= Counter(tuple(gold[i:i + n]) for i in range(len(gold) - n + 1))
            matched[n - 1] += sum(min(c, most[g]) for g, c in counts.items())
            total[n - 1] += max(len(predicted) - n + 1, 0)
    if min(matched) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matched, total, strict=True)) / 4
    brevity = min(0.0, 1 - reference_length / candidate_length)
    return math.exp(log_precision + brevity)


def answer_scores(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    """The four figures of a set of answers, in percent: CMRC 2018 EM and F1, DuReader ROUGE-L
    and BLEU-4 (the first three averaged over questions, BLEU-4 over the corpus)."""
    if not predictions or len(predictions) != len(references):
        raise ValueError(f"'predictions' and 'references' should be non-empty and of the same "
                         f"length but got {len(predictions)} and {len(references)}")
    count = len(predictions)
    pairs = list(zip(predictions, references, strict=True))
    return {"EM": 100 * sum(cmrc_exact_match(p, r) for p, r in pairs) / count,
            "F1": 100 * sum(cmrc_f1(p, r) for p, r in pairs) / count,
            "ROUGE-L": 100 * sum(rouge_l(p, r) for p, r in pairs) / count,
            "BLEU-4": 100 * corpus_bleu4(predictions, references)}
