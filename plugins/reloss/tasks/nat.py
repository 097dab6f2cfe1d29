"""Non-autoregressive translation: SequenceSurrogate, sentence BLEU per chunk, token
cross-entropy, and synthetic logits with the typical NAT errors.

Stored predictions: ``logits`` (M, T, V) float, ``targets`` (M, T) token ids in [0, V) and
``target_weights`` (M, T) (0 at padding).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .._validate import check_float, check_min_size, check_ndim, check_not_bool, check_tensor
from ..metrics import sentence_bleu
from ..rank import upcast_half
from ..surrogate import Surrogate, mlp, unit_weights, weighted_unit_mean
from .base import Task, quality, uniform

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
    """Per position, from logits (N, T, V) and token ids (N, T, 3) (target, previous and next
    target token): log p(target), log p(target) - max over other tokens of log p, log p(previous),
    log p(next), and with ``spread`` also the mean over the vocabulary of -log p (label
    smoothing's term), as (N, T, 4 or 5). Positions where ``present`` (N, T) is False read 0 and
    get a zero gradient, whatever their logits hold (NaN included).

    Three passes over the vocabulary forward (log-sum-exp, top two; a mean with ``spread``) and
    one backward (the softmax, written in place of the gradient), instead of autograd's passes
    through log_softmax, scatter and max.
    """

    @staticmethod
    def forward(ctx, logits, tokens, spread, present):
        normalizer = torch.logsumexp(logits, -1, keepdim=True)
        picked = logits.gather(-1, tokens)
        top2, top2_index = logits.topk(2, dim=-1)
        is_top = top2_index[..., :1] == tokens[..., :1]
        best_other = torch.where(is_top, top2[..., 1:], top2[..., :1])
        best_other_index = torch.where(is_top, top2_index[..., 1:], top2_index[..., :1])
        log_p = picked - normalizer
        ctx.save_for_backward(logits, normalizer, tokens, best_other_index, present)
        out = [log_p[..., :1], picked[..., :1] - best_other, log_p[..., 1:]]
        if spread:
            out.append(normalizer - logits.mean(-1, keepdim=True))
        out = torch.cat(out, -1)
        # Each value above reads its own position only: masking them here keeps whatever an
        # absent position holds out of everything that follows.
        return torch.where(present.unsqueeze(-1), out, torch.zeros((), dtype=out.dtype,
                                                                   device=out.device))

    @staticmethod
    def backward(ctx, grad):
        logits, normalizer, tokens, best_other_index, present = ctx.saved_tensors
        own, margin, previous, following = grad[..., :4].unbind(-1)
        # d log p(k) / d z = onehot(k) - softmax; d margin / d z = onehot(target) - onehot(best);
        # d mean_k(-log p(k)) / d z = softmax - 1 / V.
        coefficient = -(own + previous + following)
        if grad.shape[-1] == 5:
            coefficient = coefficient + grad[..., 4]
        out = torch.sub(logits, normalizer).exp_().mul_(coefficient.unsqueeze(-1))
        if grad.shape[-1] == 5:
            out.sub_((grad[..., 4] / logits.shape[-1]).unsqueeze(-1))
        out.scatter_add_(-1, tokens, torch.stack((own + margin, previous, following), -1))
        out.scatter_add_(-1, best_other_index, -margin.unsqueeze(-1))
        return out.masked_fill_(~present.unsqueeze(-1), 0), None, None, None


class SequenceSurrogate(Surrogate):
    """A learned loss for non-autoregressive translation, independent of vocabulary and model width.

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
    not yet right (a weight that favours tokens already learned ranks as well but trains worse).
    Pretraining learns the gates by ranking. Without ``reweight`` the transformer's output is the
    value itself (free form, the earlier design).

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

    task, num_features = "nat", 4

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

    def features(self, pred, target, weight=None):
        """pred: (N, T, V) logits; target: (N, T) token ids; weight: (N, T), 0 at padding."""
        return self._features(pred, target, weight)[:2]

    def _features(self, pred, target, weight, spread=False):
        """(features, weights, log p(target) (N, T) before the floor, and with ``spread`` the mean
        of -log p over the vocabulary (N, T), else None)."""
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
        previous = torch.cat((target[:, :1], target[:, :-1]), 1)
        following = torch.cat((target[:, 1:], target[:, -1:]), 1)
        scores = _TokenScores.apply(upcast_half(pred), torch.stack((target, previous, following),
                                                                   -1), spread, present)
        own, margin, previous_lp, following_lp = scores[..., :4].unbind(-1)
        # Where there is no neighbour (sentence ends, padding), read the floor.
        floor = torch.full_like(own, self.floor)
        none = torch.zeros_like(present[:, :1])
        previous_lp = torch.where(torch.cat((none, present[:, :-1]), 1), previous_lp, floor)
        following_lp = torch.where(torch.cat((present[:, 1:], none), 1), following_lp, floor)
        features = torch.stack((own, margin, previous_lp, following_lp), -1)
        features = torch.maximum(features, torch.full_like(features, self.floor))
        return features, weight.to(features.dtype), own, scores[..., 4] if spread else None

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
        features, weights, log_p, spread = self._features(pred, target, weight,
                                                          spread=label_smoothing > 0)
        tokens = weights.sum(-1)
        total = tokens.sum().clamp_min(torch.finfo(tokens.dtype).tiny)
        nll = -(log_p.detach() * weights).sum() / total
        value = (self.head(features, weights) * tokens).sum() / total
        loss = value
        if label_smoothing > 0:
            loss = (1 - label_smoothing) * value + label_smoothing * (
                (spread * weights).sum() / total)
        return loss, value.detach(), nll


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
