"""Extractive question answering: QASurrogate (and the forms it replaced, QARiskSurrogate and
QAStepsSurrogate), F1 of the decoded answer span per chunk, the default loss of Hugging Face QA
models, and synthetic start/end logits whose F1 spreads over [0, 1]. The metrics of answer
strings (CMRC 2018, DuReader) are in :mod:`reloss.mrc_metrics`.

Stored predictions: ``logits`` (M, 2, L) float (start logits, end logits), ``positions`` (M, 2)
gold (start, end) token indices in [0, L) and ``context`` (M, L), 1 where a token belongs to the
passage (the only tokens a decoded answer may start or end on).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .._validate import check_float, check_ndim, check_not_bool, check_tensor
from ..surrogate import (
    MonotoneSteps,
    Surrogate,
    softplus_weights,
    upcast_half,
    weighted_unit_mean,
)
from .base import Task, moved_architecture, quality, uniform

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


def _checked_logits(pred, target, weight):
    """(logits, float16 and bfloat16 as float32; gold positions as long), after the checks every
    form makes."""
    check_ndim("pred", pred, (3,), "3-D (N, 2, L) start and end logits")
    _check_spans(pred, target, weight)
    length = pred.shape[-1]
    # Values are read on the CPU only (on an accelerator that would wait for the device every
    # step; the adapter clamps positions before they arrive here).
    if target.device.type == "cpu" and target.numel() and (
            int(target.min()) < 0 or int(target.max()) >= length):
        raise ValueError(f"'target' should hold token indices in [0, {length}) but holds "
                         f"[{int(target.min())}, {int(target.max())}]")
    return upcast_half(pred), target.long()


def _start_end_cross_entropy(logits, positions):
    """The default loss per question, (CE(start) + CE(end)) / 2: (N, 2, L), (N, 2) -> (N,)."""
    ce = F.cross_entropy(logits.flatten(0, 1), positions.flatten(), reduction="none")
    return ce.view(positions.shape).mean(-1)


def _one_unit(features):
    """(features (N, 1, F), unit weights (N, 1)) from per-question features (N, F)."""
    return features.unsqueeze(1), features.new_ones(features.shape[0], 1)


class _LearnedShares(Surrogate):
    """What the forms with learned shares have in common: a question's value is its first
    feature plus learned weights ``softplus(theta) >= 0`` times the others."""

    task = "qa"

    @property
    def risk_weights(self):
        """The learned weights of the features after the first: :class:`QASurrogate`'s (b, a) of
        the default loss and of ``1 - E_span[F1]``, :class:`QARiskSurrogate`'s (a,) of
        ``1 - E[F1]``."""
        return F.softplus(self.theta)

    def head(self, features, weights):
        values = features[..., 0] + features[..., 1:] @ self.risk_weights.to(features.dtype)
        return weighted_unit_mean(values, weights)


class QASurrogate(_LearnedShares):
    """A learned loss of extractive QA that reads the answer as the decoder does: one span,
    scored ``z_start + z_end``, among the spans the decoder may return.

    Per question its value is ``CE_span / 2 + b (CE(start) + CE(end)) / 2 + a (1 - E_span[F1])``:
    the cross-entropy of the gold span under one softmax over those spans
    (:func:`span_cross_entropy`; halved, as the default loss halves its two), plus learned
    shares ``b, a = softplus(theta) >= 0`` of the default loss and of the expected-F1 risk under
    the same span distribution (:func:`expected_decoded_f1`). The gold span is the minimum (every
    term 0 when its score dominates). The default builds the shipped 'qa' form; the forms it
    replaced are :class:`QARiskSurrogate` and :class:`QAStepsSurrogate`.

    Args:
        ce_weight (float): the initial b.
        risk_weight (float): the initial a.

    Note:
        N predictions, L tokens. ``pred`` (N, 2, L) start and end logits, ``target`` (N, 2) gold
        (start, end) token indices in [0, L); ``weight`` (N, L), the passage mask, is accepted
        for pretraining and not read (the loss, like the default one, takes every token).
    """

    num_features = 3

    def __init__(self, ce_weight=0.5, risk_weight=1.0):
        super().__init__()
        risk_theta = softplus_weights("risk_weight", risk_weight, 1)
        ce_theta = softplus_weights("ce_weight", ce_weight, 1)
        self.ce_weight, self.risk_weight = float(ce_weight), float(risk_weight)
        self.theta = nn.Parameter(torch.cat([ce_theta, risk_theta]).detach())  # (b, a)

    def config(self):
        return dict(ce_weight=self.ce_weight, risk_weight=self.risk_weight)

    def features(self, pred, target, weight=None):
        logits, target = _checked_logits(pred, target, weight)
        ce = _start_end_cross_entropy(logits, target)
        span_ce, f1 = _span_terms(logits, target, MAX_ANSWER_LENGTH)
        return _one_unit(torch.stack([span_ce / 2, ce, 1 - f1.to(ce.dtype)], -1))


class QARiskSurrogate(_LearnedShares):
    """The default QA loss plus a learned share of the expected-F1 risk (the 'qa' form shipped
    before :class:`QASurrogate`).

    Per question it reads the default loss ``(CE(start) + CE(end)) / 2`` and ``1 - E[F1]``, one
    minus the expected F1 of a span drawn from the independent start and end distributions
    (:func:`expected_span_f1`), and its value is ``CE + a (1 - E[F1])`` with a learned
    ``a = softplus(theta) >= 0``.

    Args:
        risk_weight (float): the initial a.

    Note:
        As :class:`QASurrogate`.
    """

    num_features = 2

    def __init__(self, risk_weight=1.0):
        super().__init__()
        self.theta = softplus_weights("risk_weight", risk_weight, 1)  # a = softplus(theta)
        self.risk_weight = float(risk_weight)

    def config(self):
        return dict(risk_weight=self.risk_weight)

    def features(self, pred, target, weight=None):
        logits, target = _checked_logits(pred, target, weight)
        ce = _start_end_cross_entropy(logits, target)
        risk = 1 - expected_span_f1(logits, target).to(ce.dtype)
        return _one_unit(torch.stack([ce, risk], -1))


class QAStepsSurrogate(Surrogate):
    """A learned, non-decreasing function of tempered cross-entropies of the answer's start and
    end (the first 'qa' form shipped).

    For the start and for the end logits it reads, at each temperature T, ``u_T = T lse(z / T) -
    z_gold`` (T = 1: the cross-entropy the default QA loss takes; small T: the hinge that decides
    whether the arg-max is the gold token) and ``v_T = T lse(z / T) - T lse_{i in span}(z_i / T)``,
    the same with every token of the gold answer counted right: a start or end inside the gold
    answer still shares most of its tokens with it, which is what F1 rewards and what
    cross-entropy ignores. It adds up learned non-decreasing functions of them
    (:class:`~reloss.surrogate.MonotoneSteps`), so every feature is smallest at the gold span and
    the loss never rises when one falls, and it may saturate on hopeless predictions.

    Args:
        temperatures (sequence of float): the temperatures T, each > 0.
        knots (int): learned steps per feature.
        span (float): the range the steps start out spread over.

    Note:
        As :class:`QASurrogate`.
    """

    task = "qa"

    def __init__(self, temperatures=(1.0, 0.1), knots=16, span=8.0):
        super().__init__()
        self.temperatures = tuple(float(t) for t in temperatures)
        if not self.temperatures or min(self.temperatures) <= 0:
            raise ValueError(f"'temperatures' should be one or more numbers > 0 but got "
                             f"{temperatures!r}")
        self.knots, self.span = knots, span
        self.num_features = 4 * len(self.temperatures)
        self.net = MonotoneSteps(self.num_features, knots, span)

    def config(self):
        return dict(temperatures=list(self.temperatures), knots=self.knots, span=self.span)

    def features(self, pred, target, weight=None):
        logits, target = _checked_logits(pred, target, weight)
        return _one_unit(_tempered_span_losses(logits, target, self.temperatures))


#: What the 'QASurrogate' that held three forms read, besides the joint form's weights.
_OLD_ARGUMENTS = ("temperatures", "knots", "span", "risk", "joint")


def upgrade(architecture: dict) -> dict:
    """A checkpoint's architecture as the current classes take it: one written when
    ``QASurrogate`` held three forms (it carries ``temperatures``, ``knots`` and ``span``, and
    ``joint`` or ``risk`` where one of them chose the form) becomes ``QASurrogate``,
    ``QARiskSurrogate`` or ``QAStepsSurrogate`` with only that form's arguments; any other passes
    unchanged."""
    if architecture.get("type") != "QASurrogate" or not set(_OLD_ARGUMENTS) & set(architecture):
        return architecture
    if architecture.get("joint"):
        return moved_architecture(architecture, "QASurrogate", _OLD_ARGUMENTS)
    if architecture.get("risk"):
        return moved_architecture(architecture, "QARiskSurrogate", (*_OLD_ARGUMENTS, "ce_weight"))
    return moved_architecture(architecture, "QAStepsSurrogate",
                              ("risk", "joint", "risk_weight", "ce_weight"))


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
    variants=(QARiskSurrogate, QAStepsSurrogate), upgrade=upgrade,
    metric=span_f1, metric_label="span F1",
    original_loss=qa_cross_entropy, original_name="start/end cross-entropy",
    band=(0.6, 0.95), chunk_size=32,
    sample=sample_spans,
    sample_kinds=tuple(dict(seq_len=n) for n in (64, 128, 384)),
    prediction_fields=("logits", "positions", "context"), prediction_ndim=3,
    prediction_shapes=lambda logits: {"positions": tuple(logits.shape[:2]),
                                      "context": (logits.shape[0], logits.shape[2])},
    index_field="positions",
    # The shipped surrogate (QASurrogate) is the span cross-entropy plus learned shares of the
    # default loss and of the expected-F1 risk. It holds the default loss already, so none is
    # added beside it (docs/qa.md).
    default_original_weight=0.0,
    # As for classification: the gradient may fall 10x below cross-entropy's on a chunk (to
    # saturate on hopeless predictions) but rise only 1.5x above it.
    pretrain_steps=600, pretrain_tolerance=(10.0, 1.5),
)
