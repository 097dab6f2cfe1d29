"""Non-autoregressive translation: SequenceSurrogate (and its token-level predecessor,
TokenSequenceSurrogate), sentence BLEU per chunk, token cross-entropy, and synthetic logits with
the typical NAT errors.

Stored predictions: ``logits`` (M, T, V) float, ``targets`` (M, T) token ids in [0, V) and
``target_weights`` (M, T) (0 at padding).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .._validate import check_float, check_min_size, check_ndim, check_not_bool, check_tensor
from ..metrics import sentence_bleu
from ..surrogate import (
    Surrogate,
    mlp,
    refuse_second_derivative,
    softplus_weights,
    unit_weights,
    upcast_half,
    weighted_unit_mean,
)
from .base import Task, moved_architecture, quality, uniform

#: Index used for padding in sampled token sequences (fairseq's dictionary: bos 0, pad 1, eos 2,
#: unk 3; real tokens from 4).
PAD = 1
FIRST_TOKEN = 4


def _sinusoid(positions, dim):
    """(T,) positions -> (T, dim) sinusoidal encodings (Vaswani et al., 2017)."""
    frequencies = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=positions.device)
                            * (-math.log(10000.0) / dim))
    angles = positions.float().unsqueeze(-1) * frequencies
    return torch.cat((angles.sin(), angles.cos()), -1)


class _TokenScores(torch.autograd.Function):
    """Per position, from logits (N, T, V) and token ids (N, T, K) (the target token first): the
    log-probability of each of the K tokens; with ``margin`` then log p(target) - max over other
    tokens of log p; with ``spread`` then the mean over the vocabulary of -log p (label
    smoothing's term): (N, T, K [+ 1] [+ 1]). Positions where ``present`` (N, T) is False read 0
    and get a zero gradient, whatever their logits hold (NaN included).

    Two or three passes over the vocabulary forward (log-sum-exp; the top two with ``margin``; a
    mean with ``spread``) and one backward (the softmax, written in place of the gradient),
    instead of autograd's passes through log_softmax, scatter and max.
    """

    @staticmethod
    def forward(ctx, logits, tokens, margin, spread, present):
        normalizer = torch.logsumexp(logits, -1, keepdim=True)
        picked = logits.gather(-1, tokens)
        out = [picked - normalizer]
        best_other_index = tokens[..., :0]
        if margin:
            top2, top2_index = logits.topk(2, dim=-1)
            is_top = top2_index[..., :1] == tokens[..., :1]
            best_other = torch.where(is_top, top2[..., 1:], top2[..., :1])
            best_other_index = torch.where(is_top, top2_index[..., 1:], top2_index[..., :1])
            out.append(picked[..., :1] - best_other)
        if spread:
            out.append(normalizer - logits.mean(-1, keepdim=True))
        ctx.save_for_backward(logits, normalizer, tokens, best_other_index, present)
        ctx.flags = margin, spread
        out = torch.cat(out, -1)
        # Each value above reads its own position only: masking them here keeps whatever an
        # absent position holds out of everything that follows.
        return torch.where(present.unsqueeze(-1), out, torch.zeros((), dtype=out.dtype,
                                                                   device=out.device))

    @staticmethod
    def backward(ctx, grad):
        refuse_second_derivative("the nat surrogates have no other path: their second "
                                 "derivative is not computed")
        logits, normalizer, tokens, best_other_index, present = ctx.saved_tensors
        margin, spread = ctx.flags
        count = tokens.shape[-1]
        picked = grad[..., :count].contiguous()
        # d log p(k) / d z = onehot(k) - softmax; d margin / d z = onehot(target) - onehot(best);
        # d mean_k(-log p(k)) / d z = softmax - 1 / V.
        coefficient = -picked.sum(-1)
        if spread:
            coefficient = coefficient + grad[..., -1]
        out = torch.sub(logits, normalizer).exp_().mul_(coefficient.unsqueeze(-1))
        if spread:
            out.sub_((grad[..., -1] / logits.shape[-1]).unsqueeze(-1))
        if margin:
            picked[..., 0] += grad[..., count]
            out.scatter_add_(-1, best_other_index, -grad[..., count:count + 1])
        out.scatter_add_(-1, tokens, picked)
        return out.masked_fill_(~present.unsqueeze(-1), 0), None, None, None, None


def bag_of_ngrams_distance(log_p: torch.Tensor, target: torch.Tensor, present: torch.Tensor,
                           max_n: int) -> torch.Tensor:
    """Per sentence and n = 1 .. ``max_n``, one minus the expected clipped n-gram precision of
    the output, as (N, max_n).

    ``log_p`` (N, T, T) holds log p_t(target_s): what output position t gives the target token
    at position s. Output positions are independent (as a non-autoregressive model's are), so the
    expected number of times the reference n-gram starting at s occurs in the output is
    ``E(s) = sum_t prod_{i<n} p_{t+i}(target_{s+i})``; clipped by the n-gram's count in the
    reference, summed over the reference's n-grams and divided by their number, it is the
    expected clipped match rate: the bag-of-n-grams precision of Shao et al. (AAAI 2020, who
    minimise the L1 distance between the two bags, twice this value times the count). n-grams
    are counted over runs of ``present`` positions; a sentence with no n-gram reads 0.
    Cost O(N T^2) per n.
    """
    keep = present.unsqueeze(-1) & present.unsqueeze(-2)
    prob = torch.where(keep, log_p.exp(), torch.zeros((), dtype=log_p.dtype,
                                                      device=log_p.device))
    same = target.unsqueeze(-1) == target.unsqueeze(-2)
    joint, equal, valid, out = prob, same, present, []
    for n in range(1, max_n + 1):
        if n > 1:  # extend each n-gram by the next position on both sides
            joint = joint[:, :-1, :-1] * prob[:, n - 1:, n - 1:]
            equal = equal[:, :-1, :-1] & same[:, n - 1:, n - 1:]
            valid = valid[:, :-1] & present[:, n - 1:]
        expected = joint.sum(1)
        copies = (equal & valid.unsqueeze(1)).sum(-1).to(prob.dtype)
        matched = (torch.minimum(expected, copies) / copies.clamp_min(1) * valid).sum(-1)
        count = valid.sum(-1).to(prob.dtype)
        out.append(torch.where(count > 0, 1 - matched / count.clamp_min(1),
                               torch.zeros_like(count)))
    return torch.stack(out, -1)


def _checked_sequences(pred, target, weight):
    """(target ids as long, 0 where absent; position weights (N, T); present (N, T) bool), after
    the checks every form makes."""
    check_float("pred", pred)
    check_ndim("pred", pred, (3,), "3-D (N, T, V) logits")
    check_min_size("pred", pred, 2, 2, "V")
    check_tensor("target", target)
    check_not_bool("target", target, "integer token ids")
    if target.shape != pred.shape[:2] or target.is_floating_point() or target.is_complex():
        raise ValueError(f"'target' should be (N, T) = {tuple(pred.shape[:2])} token ids but "
                         f"got {target.dtype} {tuple(target.shape)}")
    weight = unit_weights(weight, pred, "(N, T)", "position weights (0 at padding)")
    present = weight > 0
    target = target.long()
    vocabulary = pred.shape[-1]
    # An id out of range would fail inside gather; on an accelerator checking here would wait
    # for the device every step, so the toolkit criterion checks there (reloss.fairseq). Ids
    # at absent positions are never read.
    if target.device.type == "cpu" and target.numel():
        outside = ((target < 0) | (target >= vocabulary)) & present
        if bool(outside.any()):
            raise ValueError(f"'target' should hold token ids in [0, {vocabulary}) (V of "
                             f"'pred' {tuple(pred.shape)}) but holds "
                             f"{sorted(set(target[outside].tolist()))[:5]}")
    target = torch.where(present, target, torch.zeros((), dtype=target.dtype,
                                                      device=target.device))
    return target, weight, present


class _SequenceLoss(Surrogate):
    """What the forms of the translation surrogate share: the checks, a 'mean' over tokens and
    :meth:`training_terms`. A form defines ``_read(pred, target, weight, present, spread)`` ->
    (features, unit weights, log p(target) (N, T) before any floor, with ``spread`` the mean of
    -log p over the vocabulary (N, T) else None, position weights (N, T))."""

    task = "nat"

    def features(self, pred, target, weight=None):
        """pred: (N, T, V) logits; target: (N, T) token ids; weight: (N, T), 0 at padding."""
        return self._read(pred, *_checked_sequences(pred, target, weight), False)[:2]

    def forward(self, pred, target, weight=None, reduction="mean"):
        """As :meth:`Surrogate.forward`, except that 'mean' weighs each sentence by its number of
        (weighted) target positions: a mean over tokens, as fairseq's criteria and token
        cross-entropy normalise."""
        if reduction != "mean":
            return super().forward(pred, target, weight, reduction)
        return self.training_terms(pred, target, weight)[0]

    def training_terms(self, pred, target, weight=None, label_smoothing=0.0):
        """(loss, the 'mean' value without gradient, the plain token NLL without gradient): means
        over the weighted positions, from one pass over the logits; 0 where no position has
        weight. The loss is the 'mean' value, or with ``label_smoothing`` e
        ``(1 - e) value + e mean_k(-log p(k))`` (the mean over the vocabulary, then over
        positions): label smoothing as fairseq applies it to token cross-entropy, with the
        surrogate in place of the cross-entropy.
        """
        if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float)) \
                or not 0 <= label_smoothing < 1:
            raise ValueError(f"'label_smoothing' should be in [0, 1) but got {label_smoothing!r}")
        features, units, log_p, spread, weights = self._read(
            pred, *_checked_sequences(pred, target, weight), label_smoothing > 0)
        tokens = weights.sum(-1)
        total = tokens.sum().clamp_min(torch.finfo(tokens.dtype).tiny)
        nll = -(log_p.detach() * weights).sum() / total
        value = (self.head(features, units) * tokens).sum() / total
        loss = value
        if label_smoothing > 0:
            loss = (1 - label_smoothing) * value + label_smoothing * (
                (spread * weights).sum() / total)
        return loss, value.detach(), nll


class SequenceSurrogate(_SequenceLoss):
    """A learned loss for non-autoregressive translation: token cross-entropy plus learned
    bag-of-n-grams distances, independent of vocabulary and model width.

    It reads whole sentences (one unit per sentence): a sentence's token cross-entropy and, for
    k = 1 .. n, one minus the expected clipped k-gram precision of the output
    (:func:`bag_of_ngrams_distance`), which sees repeated tokens, dropped ones and shifted
    outputs. Its value is ``CE + sum_k a_k (1 - precision_k)`` with learned
    ``a_k = softplus(theta_k) >= 0``: token cross-entropy plus a learned mix of the
    bag-of-n-grams distances of Shao et al. (AAAI 2020). The target tokens score lowest (every
    term 0 when they are sure). The default builds the shipped 'nat' form (n = 4).

    Args:
        ngrams (int): the longest n-gram n, in [1, 8].
        ngram_weight (float): the initial a_k.

    Note:
        N sentences, T target positions, V vocabulary entries; any T and V.
    """

    def __init__(self, ngrams=4, ngram_weight=0.5):
        super().__init__()
        if isinstance(ngrams, bool) or not isinstance(ngrams, int) or not 1 <= ngrams <= 8:
            raise ValueError(f"'ngrams' should be an int in [1, 8] but got {ngrams!r}")
        self.theta = softplus_weights("ngram_weight", ngram_weight, ngrams)  # a_k = softplus
        self.ngrams, self.ngram_weight = ngrams, float(ngram_weight)
        self.num_features = 1 + ngrams

    def config(self):
        return dict(ngrams=self.ngrams, ngram_weight=self.ngram_weight)

    @property
    def ngram_weights(self):
        """The weights a_k of the bag-of-n-grams distances, (ngrams,)."""
        return nn.functional.softplus(self.theta)

    def _read(self, pred, target, weight, present, spread):
        """(N, 1, 1 + ngrams) features: one unit per sentence."""
        length = target.shape[1]
        scores = _TokenScores.apply(upcast_half(pred), target.unsqueeze(1).expand(-1, length, -1),
                                    False, spread, present)
        log_p = scores[..., :length]  # [i, t, s]: log p_t(target_s)
        own = log_p.diagonal(dim1=1, dim2=2)
        weight = weight.to(own.dtype)
        tokens = weight.sum(-1)
        nll = -(own * weight).sum(-1) / tokens.clamp_min(torch.finfo(own.dtype).tiny)
        distance = bag_of_ngrams_distance(log_p, target, present, self.ngrams)
        features = torch.cat((nll.unsqueeze(-1), distance), -1).unsqueeze(1)
        units = (tokens > 0).to(own.dtype).unsqueeze(1)
        return features, units, own, scores[..., -1] if spread else None, weight

    def head(self, features, weights):
        values = features[..., 0] + features[..., 1:] @ self.ngram_weights.to(features.dtype)
        return weighted_unit_mean(values, weights)


class TokenSequenceSurrogate(_SequenceLoss):
    """A learned loss for non-autoregressive translation read per target position: token
    cross-entropy re-weighted by a small transformer (the form before :class:`SequenceSurrogate`;
    docs/design.md has how it trained).

    Per target position t it reads the log-probability of the target token, its margin to the
    best other token, and the log-probabilities the position gives the previous and next target
    tokens (high when the output is shifted by one: the typical NAT repetition and length errors).
    A small transformer encoder over the positions (sinusoidal positions, padding masked) gives a
    value per position; a sentence's value is their mean over non-padding positions.

    With ``reweight`` (the default) a position's value is ``c_t * (-log p(target))`` with
    ``c_t = 1 + spread * g_t * (1 - p(target))``: the transformer gives the gate ``g_t`` in (0, 1),
    computed without gradient. The gradient at each position's logits is then token
    cross-entropy's times ``c_t`` >= 1: it points as cross-entropy's does, the target tokens are
    the minimum (nothing to game), and the learned part can only add weight to positions that are
    not yet right. Pretraining learns the gates by ranking. Without ``reweight`` the
    transformer's output is the value itself (free form, the earliest design).

    Args:
        dim (int): transformer width.
        layers (int): transformer encoder layers.
        heads (int): attention heads.
        floor (float): log-probabilities are read no lower than this.
        reweight (bool): the value is the token cross-entropy with learned extra weights.
        spread (float): with ``reweight``, the largest extra weight.

    Note:
        N sentences, T target positions, V vocabulary entries; any T and V.
    """

    num_features = 4

    def __init__(self, dim=32, layers=2, heads=4, floor=-20.0, reweight=True, spread=0.5):
        super().__init__()
        self.dim, self.layers, self.heads, self.floor = dim, layers, heads, floor
        self.reweight, self.spread = reweight, spread
        self.embed = mlp([self.num_features, dim, dim])
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out = mlp([dim, dim, 1])

    def config(self):
        return dict(dim=self.dim, layers=self.layers, heads=self.heads, floor=self.floor,
                    reweight=self.reweight, spread=self.spread)

    def _read(self, pred, target, weight, present, spread):
        """(N, T, 4) features: one unit per position."""
        previous = torch.cat((target[:, :1], target[:, :-1]), 1)
        following = torch.cat((target[:, 1:], target[:, -1:]), 1)
        scores = _TokenScores.apply(upcast_half(pred), torch.stack((target, previous, following),
                                                                   -1), True, spread, present)
        own, previous_lp, following_lp, margin = scores[..., :4].unbind(-1)
        # Where there is no neighbour (sentence ends, padding), read the floor.
        floor = torch.full_like(own, self.floor)
        none = torch.zeros_like(present[:, :1])
        previous_lp = torch.where(torch.cat((none, present[:, :-1]), 1), previous_lp, floor)
        following_lp = torch.where(torch.cat((present[:, 1:], none), 1), following_lp, floor)
        features = torch.stack((own, margin, previous_lp, following_lp), -1)
        features = torch.maximum(features, torch.full_like(features, self.floor))
        weight = weight.to(features.dtype)
        return features, weight, own, scores[..., 4] if spread else None, weight

    def position_values(self, features, weights):
        """The transformer's output per position, (N, T), from features (N, T, F)."""
        positions = torch.arange(features.shape[1], device=features.device)
        features = features.to(self.embed[0].weight.dtype)  # float64 logits: the net's dtype
        hidden = self.embed(features) + _sinusoid(positions, self.dim).to(features.dtype)
        # A sentence with no position at all keeps them unmasked (its value is 0 either way).
        padding = (weights <= 0) & (weights > 0).any(-1, keepdim=True)
        hidden = self.encoder(hidden, src_key_padding_mask=padding)
        return self.out(hidden).squeeze(-1)

    def token_weights(self, features, weights):
        """With ``reweight``: each position's weight ``c_t`` (N, T), computed without gradient."""
        detached = features.detach()
        gate = torch.sigmoid(self.position_values(detached, weights))
        return 1 + self.spread * gate * -torch.expm1(detached[..., 0])

    def head(self, features, weights):
        if not self.reweight:
            return weighted_unit_mean(self.position_values(features, weights), weights)
        return weighted_unit_mean(self.token_weights(features, weights) * -features[..., 0],
                                  weights)


#: The token-level form's arguments: checkpoints of the 'SequenceSurrogate' that held both forms
#: always saved them (and 'ngrams', 'ngram_weight' where ngrams > 0 chose the sentence form).
_TOKEN_ARGUMENTS = ("dim", "layers", "heads", "floor", "reweight", "spread")


def upgrade(architecture: dict) -> dict:
    """A checkpoint's architecture as the current classes take it: one written when
    ``SequenceSurrogate`` held both forms (it carries the token-level form's arguments) becomes
    ``SequenceSurrogate`` with its n-gram arguments where ``ngrams`` > 0, else
    ``TokenSequenceSurrogate`` (without ``reweight``, the first design: the free form); any other
    passes unchanged."""
    if architecture.get("type") != "SequenceSurrogate" or \
            not set(_TOKEN_ARGUMENTS) & set(architecture):
        return architecture
    if architecture.get("ngrams"):
        return moved_architecture(architecture, "SequenceSurrogate", _TOKEN_ARGUMENTS)
    token = moved_architecture(architecture, "TokenSequenceSurrogate", ("ngrams", "ngram_weight"))
    return {"reweight": False, **token}


def sample_sequences(num_chunks, chunk_size=1, vocab_size=1000, length_range=(4, 40),
                     generator=None, late_fraction=0.5, late_band=(0.7, 1.0)):
    """Logits (S, N, T, V), target tokens (S, N, T) (``PAD`` after each length) and weights.

    Per sentence: a token accuracy; wrong positions take a random token, repeat the previous
    output token (the typical NAT error) or copy a neighbouring target token; some sentences get a
    length error (a target token dropped or an extra one inserted, shifting what follows). Logits
    put a margin of varied size on the output token and often keep the target as runner-up.
    """
    count = num_chunks * chunk_size
    longest = length_range[1]
    lengths = torch.randint(length_range[0], length_range[1] + 1, (count,), generator=generator)
    positions = torch.arange(longest)
    valid = positions < lengths.unsqueeze(-1)
    # Zipf-like token frequencies, as in natural text.
    ranks = torch.arange(1, vocab_size - FIRST_TOKEN + 1, dtype=torch.float32)
    tokens = torch.multinomial(1.0 / ranks, count * longest, replacement=True, generator=generator)
    target = (tokens.view(count, longest) + FIRST_TOKEN).masked_fill(~valid, PAD)

    accuracy = quality(count, late_fraction, late_band, generator).unsqueeze(-1)
    output = target.clone()
    # Length errors: drop (shift left) or insert (shift right) at a random position.
    kind = torch.randint(3, (count,), generator=generator)  # 0 none, 1 drop, 2 insert
    kind = torch.where(torch.rand(count, generator=generator) < 0.3 * (1 - accuracy[:, 0]),
                       kind, torch.zeros_like(kind))
    cut = (torch.rand(count, generator=generator) * lengths).long().unsqueeze(-1)
    after = positions >= cut
    left = torch.cat((target[:, 1:], target[:, -1:]), 1)
    right = torch.cat((target[:, :1], target[:, :-1]), 1)
    output = torch.where(after & (kind == 1).unsqueeze(-1), left, output)
    output = torch.where(after & (kind == 2).unsqueeze(-1), right, output)
    # Token errors.
    wrong = torch.rand(count, longest, generator=generator) >= accuracy
    error = torch.randint(3, (count, longest), generator=generator)
    random_token = torch.randint(FIRST_TOKEN, vocab_size, (count, longest), generator=generator)
    neighbour = torch.where(torch.rand(count, longest, generator=generator) < 0.5, left, right)
    output = torch.where(wrong & (error == 0), random_token, output)
    output = torch.where(wrong & (error == 2), neighbour, output)
    repeat = wrong & (error == 1) & (positions > 0)
    for t in range(1, longest):  # a repeat copies the (possibly repeated) previous output
        output[:, t] = torch.where(repeat[:, t], output[:, t - 1], output[:, t])
    # Where the last position shifted in a pad, emit the last real token again.
    last = target.gather(1, (lengths - 1).unsqueeze(-1))
    output = torch.where(valid & (output == PAD), last, output).masked_fill(~valid, PAD)

    noise = uniform((count, 1, 1), 0.5, 2.0, generator)
    logits = noise * torch.randn(count, longest, vocab_size, generator=generator)
    lead = noise[..., 0] * math.sqrt(2 * math.log(vocab_size))  # see sample_classification
    confidence = torch.exp(uniform((count, 1), math.log(0.5), math.log(4.0), generator))
    gap = lead * confidence * (0.5 + torch.rand(count, longest, generator=generator))
    logits.scatter_add_(-1, output.unsqueeze(-1), gap.unsqueeze(-1))
    runner_up = (output != target) & (torch.rand(count, longest, generator=generator) < 0.6)
    boost = gap * torch.rand(count, longest, generator=generator) * runner_up
    logits.scatter_add_(-1, target.unsqueeze(-1), boost.unsqueeze(-1))
    view = (num_chunks, chunk_size, longest)
    return logits.view(*view, vocab_size), target.view(view), valid.view(view).float()


def sequence_metric(logits: torch.Tensor, targets: torch.Tensor,
                    weights: torch.Tensor) -> torch.Tensor:
    """Mean sentence BLEU (0-100) of the argmax tokens per chunk of sentences."""
    chunks, sentences, length = targets.shape
    keep = weights.reshape(-1, length) > 0
    hypotheses = logits.argmax(-1).reshape(-1, length).masked_fill(~keep, -1)
    references = targets.reshape(-1, length).masked_fill(~keep, -1)
    return sentence_bleu(hypotheses, references, pad=-1).view(chunks, sentences).mean(-1)


def token_cross_entropy_per_chunk(logits: torch.Tensor, targets: torch.Tensor,
                                  weights: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of the target tokens over a chunk's non-padding positions."""
    nll = -logits.float().log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (nll * weights).flatten(1).sum(-1) / weights.flatten(1).sum(-1).clamp_min(1)


TASK = Task(
    name="nat", description="translation", surrogate=SequenceSurrogate,
    variants=(TokenSequenceSurrogate,), upgrade=upgrade,
    metric=sequence_metric, metric_label="sentence BLEU",
    original_loss=token_cross_entropy_per_chunk, original_name="token cross-entropy",
    band=(40.0, 90.0), chunk_size=1,
    sample=sample_sequences,
    prediction_fields=("logits", "targets", "target_weights"), prediction_ndim=3,
    prediction_shapes=lambda logits: {"targets": tuple(logits.shape[:2]),
                                      "target_weights": tuple(logits.shape[:2])},
    index_field="targets",
    pretrain_steps=300, pretrain_tolerance=(4.0,),
)
