"""The 'qa' task: span decoding and F1, the answer-string metrics of Chinese reading
comprehension (reloss.mrc_metrics) against hand-computed cases and sacrebleu, the surrogates'
gradients and the shipped one's ranking against the default QA loss."""
import itertools
import math

import pytest
import torch
from torch.autograd import gradcheck

import reloss
from reloss import mrc_metrics, pretrain
from reloss.spearman import spearman
from reloss.tasks import TASKS, qa


def logits_from(start, end):
    return torch.tensor([start, end], dtype=torch.float32)


def test_best_span_follows_run_qa_rules():
    # The best start (index 3) lies after the best end (index 1): the pair is refused.
    logits = logits_from([0, 1, 0, 5, 0], [0, 6, 0, 0, 2])
    assert qa.best_spans(logits).tolist() == [3, 4]  # 5 + 2 beats 1 + 6 (end >= start)
    assert qa.best_spans(logits, max_answer_length=1).tolist() == [1, 1]  # 1 + 6 vs 5 + 0
    context = torch.tensor([0, 0, 1, 1, 0])
    assert qa.best_spans(logits, context).tolist() == [3, 3]
    nothing = logits_from([0, 0, 9, 0], [9, 0, 0, 0])
    assert qa.best_spans(nothing, n_best=1).tolist() == [-1, -1]  # run_qa answers ""


def test_best_spans_equal_a_loop_over_every_pair():
    generator = torch.Generator().manual_seed(0)
    logits, _, context = qa.sample_spans(4, 16, generator, seq_len=40)
    spans = qa.best_spans(logits, context, max_answer_length=8, n_best=40)
    for index in itertools.product(range(4), range(16)):
        start, end = logits[index].tolist()
        inside = context[index].bool().tolist()
        best, arg = -math.inf, [-1, -1]
        for s in range(40):
            for e in range(s, min(s + 8, 40)):
                if inside[s] and inside[e] and start[s] + end[e] > best:
                    best, arg = start[s] + end[e], [s, e]
        assert spans[index].tolist() == arg


def test_span_f1_counts_shared_tokens():
    pred = torch.tensor([[2, 5], [4, 7], [-1, -1], [9, 9]])
    gold = torch.tensor([[4, 7], [4, 7], [4, 7], [1, 3]])
    exact, f1 = qa.span_overlap_f1(pred, gold)
    assert exact.tolist() == [0, 1, 0, 0]
    assert f1.tolist() == [0.5, 1.0, 0.0, 0.0]  # 2 shared of 4 and 4 tokens: P = R = 1/2


def test_default_loss_matches_the_model_loss():
    generator = torch.Generator().manual_seed(1)
    logits, positions, context = qa.sample_spans(3, 5, generator, seq_len=20)
    expected = torch.stack([
        (torch.nn.functional.cross_entropy(logits[i, :, 0], positions[i, :, 0])
         + torch.nn.functional.cross_entropy(logits[i, :, 1], positions[i, :, 1])) / 2
        for i in range(3)])
    torch.testing.assert_close(qa.qa_cross_entropy(logits, positions, context), expected)


def test_sampler_spreads_f1_over_the_range():
    generator = torch.Generator().manual_seed(0)
    for seq_len in (64, 384):
        logits, positions, context = qa.sample_spans(300, 32, generator, seq_len=seq_len)
        assert logits.shape == (300, 32, 2, seq_len) and positions.shape == (300, 32, 2)
        inside = context.gather(-1, positions)
        assert bool((inside == 1).all())  # gold answers lie in the passage
        assert bool((positions[..., 1] - positions[..., 0] < qa.MAX_ANSWER_LENGTH).all())
        f1 = qa.span_f1(logits, positions, context)
        assert float(f1.min()) < 0.3 and float(f1.max()) > 0.95
        band = TASKS["qa"].band
        assert int(((f1 >= band[0]) & (f1 <= band[1])).sum()) > 90  # dense late band


# Answer strings, hand-computed.

def test_cmrc_f1_and_exact_match():
    assert mrc_metrics.cmrc_tokens("Hello, 北京 world!") == ["hello", "北", "京", "world"]
    # Longest common substring 2 of 4 predicted and 2 reference tokens: P 1/2, R 1: F1 2/3.
    assert mrc_metrics.cmrc_f1("北京大学", ["北京"]) == pytest.approx(2 / 3)
    assert mrc_metrics.cmrc_f1("北京大学", ["上海", "北京大学"]) == 1.0  # best over references
    # A common substring, not subsequence: 1 token; P 1/3, R 1/2: F1 2/5.
    assert mrc_metrics.cmrc_f1("北大京", ["北京"]) == pytest.approx(0.4)
    assert mrc_metrics.cmrc_f1("甲", ["乙"]) == 0.0
    assert mrc_metrics.cmrc_exact_match("北京。", ["“北京”"]) == 1.0  # punctuation removed
    assert mrc_metrics.cmrc_exact_match("北京市", ["北京"]) == 0.0


def test_rouge_l_takes_best_precision_and_recall_over_references():
    # Longest common subsequence 3 of 4 and 4: P = R = 3/4, so F = 3/4 for any beta.
    assert mrc_metrics.rouge_l("甲乙丙丁", ["甲丙乙丁"]) == pytest.approx(0.75)
    # P = 1 from the second reference, R = 1 from the first: F = 1.
    assert mrc_metrics.rouge_l("甲乙", ["甲", "甲乙丙丁"]) == pytest.approx(1.0)
    # P = 1, R = 1/2, beta 1.2: (1 + 1.44) * 0.5 / (0.5 + 1.44).
    assert mrc_metrics.rouge_l("甲 乙", ["甲乙丙丁"]) == pytest.approx(2.44 * 0.5 / 1.94)
    assert mrc_metrics.rouge_l("", ["甲"]) == 0.0


def test_corpus_bleu4_by_hand_and_against_sacrebleu():
    assert mrc_metrics.corpus_bleu4(["甲乙丙丁戊"], [["甲乙丙丁戊"]]) == pytest.approx(1.0)
    assert mrc_metrics.corpus_bleu4(["甲乙丙"], [["甲乙丙丁"]]) == 0.0  # no 4-gram: no smoothing
    # 1..4-gram precisions 4/4, 3/3, 2/2, 1/1; brevity exp(1 - 6/4).
    assert mrc_metrics.corpus_bleu4(["甲乙丙丁"], [["甲乙丙丁戊己"]]) == pytest.approx(
        math.exp(-0.5))
    sacrebleu = pytest.importorskip("sacrebleu")
    generator = torch.Generator().manual_seed(0)
    alphabet = "甲乙丙丁戊己庚辛"

    def text(length):
        return "".join(alphabet[i] for i in torch.randint(8, (length,), generator=generator))

    predictions = [text(int(n)) for n in torch.randint(4, 12, (30,), generator=generator)]
    references = [[text(int(n)) for n in torch.randint(4, 12, (2,), generator=generator)]
                  for _ in predictions]
    expected = sacrebleu.corpus_bleu(
        [" ".join(p) for p in predictions],
        [[" ".join(r[k]) for r in references] for k in range(2)],
        tokenize="none", smooth_method="none", force=True).score / 100
    assert mrc_metrics.corpus_bleu4(predictions, references) == pytest.approx(expected, rel=1e-9)


def test_answer_scores_in_percent():
    scores = mrc_metrics.answer_scores(["北京", "上海"], [["北京"], ["广州"]])
    assert scores["EM"] == 50.0 and scores["F1"] == 50.0 and scores["ROUGE-L"] == 50.0


@pytest.mark.parametrize("call, error, message", [
    (lambda: mrc_metrics.cmrc_f1(3, ["a"]), TypeError, "'prediction' should be a str but got int"),
    (lambda: mrc_metrics.cmrc_f1("a", "a"), ValueError, "'references' should be a non-empty list"),
    (lambda: mrc_metrics.corpus_bleu4(["a"], []), ValueError, "the same length but got 1 and 0"),
    (lambda: qa.span_f1(torch.zeros(1, 2, 3, 5), torch.zeros(1, 2, 2, dtype=torch.long)),
     ValueError, r"'logits' should be \(\.\.\., 2, L\)"),
    (lambda: qa.span_f1(torch.zeros(1, 2, 2, 5), torch.zeros(1, 2, 2)),
     ValueError, "'positions' should be integer"),
    (lambda: qa.span_f1(torch.zeros(1, 2, 2, 5), torch.zeros(1, 2, 2, dtype=torch.long),
                        torch.ones(1, 2, 4)), ValueError, r"'context' should be \(\.\.\., L\)"),
])
def test_bad_input_names_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()


# The surrogate.

def test_stepped_form_gradcheck_and_minimum_at_gold():
    torch.manual_seed(0)
    surrogate = qa.QAStepsSurrogate().double()
    logits = torch.randn(4, 2, 12, dtype=torch.float64, requires_grad=True)
    positions = torch.tensor([[2, 4], [5, 5], [0, 0], [7, 11]])
    assert gradcheck(lambda x: surrogate(x, positions), (logits,))
    values = surrogate(logits, positions, reduction="none")
    assert values.shape == (4,)
    # Raising the gold start's logit never raises the loss.
    better = logits.detach().clone()
    better[torch.arange(4), 0, positions[:, 0]] += 3
    assert bool((surrogate(better, positions, reduction="none") <= values + 1e-12).all())


@pytest.mark.parametrize("form", [qa.QASurrogate, qa.QARiskSurrogate, qa.QAStepsSurrogate])
def test_surrogate_refuses_positions_outside_the_sequence(form):
    surrogate = form()
    with pytest.raises(ValueError, match=r"'target' should hold token indices in \[0, 12\)"):
        surrogate(torch.randn(2, 2, 12), torch.tensor([[0, 3], [4, 12]]))


def test_shipped_surrogate_ranks_better_than_the_default_loss():
    surrogate = reloss.load_surrogate("qa")
    task = TASKS["qa"]
    generator = torch.Generator().manual_seed(12345)  # not the pretraining seed
    data = pretrain.prepare_batches(
        surrogate, "qa", pretrain.synthetic_chunks("qa", 240, generator))
    figures = pretrain.evaluate(surrogate, data, task.band)
    assert figures["surrogate"]["full"] > figures["baseline"]["full"]
    assert figures["surrogate"]["band"] > figures["baseline"]["band"]
    losses = pretrain.chunk_losses(surrogate, data)
    assert float(spearman(-losses, data["metric"])) == pytest.approx(
        figures["surrogate"]["full"])


def test_shipped_surrogate_is_the_span_loss_with_learned_weights():
    """The shipped form is the joint one: it holds a share of the default loss, so the adapters
    add none beside it, and the default loss carries less than half of its gradient on
    held-out chunks (the span loss and the risk the rest)."""
    surrogate, task = reloss.load_surrogate("qa"), TASKS["qa"]
    assert type(surrogate) is qa.QASurrogate and task.default_original_weight == 0
    ce_weight, risk_weight = surrogate.risk_weights.tolist()
    logits, positions, _ = qa.sample_spans(60, 32, torch.Generator().manual_seed(7))
    shares = []
    for chunk_logits, chunk_positions in zip(logits, positions, strict=True):
        leaf = chunk_logits.clone().requires_grad_()
        (own,) = torch.autograd.grad(surrogate(leaf, chunk_positions), leaf)
        default = qa.qa_cross_entropy(leaf[None], chunk_positions[None]).sum()
        (ce,) = torch.autograd.grad(default, leaf)
        rest = (own - ce_weight * ce).norm()
        shares.append(float(rest / (rest + ce_weight * ce.norm())))
        value = surrogate(chunk_logits, chunk_positions)
        expected = (qa.span_cross_entropy(chunk_logits, chunk_positions) / 2
                    + risk_weight * (1 - qa.expected_decoded_f1(chunk_logits, chunk_positions))
                    ).mean() + ce_weight * default
        assert float(value) == pytest.approx(float(expected.detach()), rel=1e-5)
    assert float(torch.tensor(shares).median()) > 0.5


# The expected-F1 form: the default loss plus a learned share of 1 - E[F1].

def test_expected_span_f1_equals_a_sum_over_every_span():
    torch.manual_seed(1)
    logits = 2 * torch.randn(3, 2, 9)
    positions = torch.tensor([[2, 4], [5, 5], [0, 8]])
    probs = logits.softmax(-1)
    for width in (30, 3):
        expected = torch.zeros(3)
        for n, (s, e) in itertools.product(range(3), itertools.product(range(9), range(9))):
            if s <= e < s + width:
                f1 = qa.span_overlap_f1(torch.tensor([s, e]), positions[n])[1]
                expected[n] += probs[n, 0, s] * probs[n, 1, e] * float(f1)
        assert torch.allclose(qa.expected_span_f1(logits, positions, width), expected,
                              atol=1e-6)
    # A gold end before its start shares no token with any span: 0, not a division by 0.
    assert float(qa.expected_span_f1(logits[:1], torch.tensor([[5, 3]]))) == 0


def test_risk_form_is_the_default_loss_plus_its_weight_times_the_risk():
    torch.manual_seed(2)
    surrogate = qa.QARiskSurrogate(risk_weight=0.7).double()
    assert surrogate.risk_weights.item() == pytest.approx(0.7)
    logits = torch.randn(4, 2, 12, dtype=torch.float64, requires_grad=True)
    positions = torch.tensor([[2, 4], [5, 5], [0, 0], [7, 11]])
    assert gradcheck(lambda x: surrogate(x, positions), (logits,))
    ce = qa.qa_cross_entropy(logits[:, None], positions[:, None]).squeeze(-1)
    risk = 1 - qa.expected_span_f1(logits, positions)
    assert torch.allclose(surrogate(logits, positions, reduction="none"), ce + 0.7 * risk)
    gold = torch.full((4, 2, 12), -40.0, dtype=torch.float64)
    gold.scatter_(-1, positions[..., None], 40.0)
    assert float(surrogate(gold, positions).detach().abs()) < 1e-12
    assert qa.QARiskSurrogate(**surrogate.config()).config() == {"risk_weight": 0.7}


@pytest.mark.parametrize("form, kwargs, error, message", [
    (qa.QARiskSurrogate, dict(risk_weight=0), ValueError,
     r"'risk_weight' should be a number in \(0, 1000\)"),
    (qa.QASurrogate, dict(risk_weight=-1), ValueError,
     r"'risk_weight' should be a number in \(0, 1000\)"),
    (qa.QASurrogate, dict(ce_weight=-1), ValueError,
     r"'ce_weight' should be a number in \(0, 1000\)"),
    (qa.QAStepsSurrogate, dict(temperatures=(1.0, 0.0)), ValueError,
     r"'temperatures' should be one or more numbers > 0 but got \(1.0, 0.0\)"),
    # One class per form: the flags that chose a form are gone.
    (qa.QASurrogate, dict(joint=True), TypeError, "unexpected keyword argument 'joint'"),
    (qa.QASurrogate, dict(risk=True), TypeError, "unexpected keyword argument 'risk'"),
])
def test_forms_bad_arguments(form, kwargs, error, message):
    with pytest.raises(error, match=message):
        form(**kwargs)


# The joint form: one softmax over the spans the decoder may return.

def _every_span(length, width):
    return [(s, e) for s in range(length) for e in range(s, min(length, s + width))]


def test_span_cross_entropy_and_expected_f1_equal_sums_over_every_span():
    torch.manual_seed(3)
    logits = 2 * torch.randn(4, 2, 9, dtype=torch.float64)
    positions = torch.tensor([[2, 4], [5, 5], [0, 8], [3, 3]])
    for width in (30, 3):
        spans = _every_span(9, width)
        for n in range(4):
            scores = torch.stack([logits[n, 0, s] + logits[n, 1, e] for s, e in spans])
            g0, g1 = positions[n].tolist()
            gold = logits[n, 0, g0] + logits[n, 1, g1]
            if (g0, g1) not in spans:  # an answer longer than the decoder allows: counted once
                scores = torch.cat([scores, gold[None]])
            total = scores.logsumexp(0)
            ce = qa.span_cross_entropy(logits[n:n + 1], positions[n:n + 1], width)
            assert float(ce) == pytest.approx(float(total - gold), abs=1e-9)
            f1 = sum(float((logits[n, 0, s] + logits[n, 1, e] - total).exp())
                     * float(qa.span_overlap_f1(torch.tensor([s, e]), positions[n])[1])
                     for s, e in spans)
            got = qa.expected_decoded_f1(logits[n:n + 1], positions[n:n + 1], width)
            assert float(got) == pytest.approx(f1, abs=1e-9)
    assert bool((qa.span_cross_entropy(logits, positions) >= 0).all())


def test_joint_form_is_the_span_loss_plus_weighted_default_loss_and_risk():
    torch.manual_seed(4)
    surrogate = qa.QASurrogate(ce_weight=0.2, risk_weight=0.7).double()
    assert surrogate.risk_weights.tolist() == pytest.approx([0.2, 0.7])
    logits = torch.randn(4, 2, 12, dtype=torch.float64, requires_grad=True)
    positions = torch.tensor([[2, 4], [5, 5], [0, 0], [7, 11]])
    assert gradcheck(lambda x: surrogate(x, positions), (logits,))
    ce = qa.qa_cross_entropy(logits[:, None], positions[:, None]).squeeze(-1)
    expected = (qa.span_cross_entropy(logits, positions) / 2 + 0.2 * ce
                + 0.7 * (1 - qa.expected_decoded_f1(logits, positions)))
    assert torch.allclose(surrogate(logits, positions, reduction="none"), expected)
    gold = torch.full((4, 2, 12), -40.0, dtype=torch.float64)
    gold.scatter_(-1, positions[..., None], 40.0)
    assert float(surrogate(gold, positions).detach().abs()) < 1e-12
    rebuilt = qa.QASurrogate(**surrogate.config())
    assert rebuilt.config() == surrogate.config() == {"ce_weight": 0.2, "risk_weight": 0.7}
    # The decoder never returns an end before its start: the span loss does not pay for such
    # pairs, the default loss does.
    apart = torch.zeros(1, 2, 6, dtype=torch.float64)
    apart[0, 0, 4], apart[0, 1, 1] = 5.0, 5.0  # start 4 and end 1 look best, a pair never decoded
    target = torch.tensor([[2, 3]])
    assert float(qa.span_cross_entropy(apart, target)) < 2 * float(
        qa.qa_cross_entropy(apart[:, None], target[:, None]))
