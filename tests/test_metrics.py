import sys

import numpy as np
import pytest
import sacrebleu
import torch
import torch.nn.functional as F
from sklearn.metrics import balanced_accuracy_score, f1_score

import reloss
from reloss import metrics, pretrain
from reloss.cli import pretrain as pretrain_command
from reloss.tasks import TASKS, cls, nat, pose


def seeded(seed):
    return torch.Generator().manual_seed(seed)


def as_string(tokens, pad):
    return " ".join(str(int(t)) for t in tokens if int(t) != pad)


def padded(rows, pad, extra=0):
    """Rows of token lists -> (S, T) right-padded with ``pad`` (``extra`` more pad columns)."""
    width = max(len(row) for row in rows) + extra
    return torch.tensor([row + [pad] * (width - len(row)) for row in rows], dtype=torch.long)


def draw(generator, length, vocab, first=2):
    return (torch.randint(vocab, (length,), generator=generator) + first).tolist()


def bleu_pairs(seed=0):
    """(hypotheses, references, kind): random pairs with small vocabularies, short hypotheses,
    100 identical pairs and 20 pairs without a common token. Tokens are >= 2."""
    generator = seeded(seed)
    hyps, refs, kind = [], [], []

    def add(hyp, ref, label):
        hyps.append(hyp)
        refs.append(ref)
        kind.append(label)

    for _ in range(300):  # small vocabularies: repeated n-grams, so clipping matters
        vocab = int(torch.randint(2, 8, (1,), generator=generator))
        hyp_len, ref_len = torch.randint(0, 16, (2,), generator=generator).tolist()
        add(draw(generator, hyp_len, vocab), draw(generator, ref_len, vocab), "random")
    for hyp_len in (0, 1, 2, 3):  # effective order
        for ref_len in (0, 1, 2, 3, 5, 9):
            for _ in range(3):
                add(draw(generator, hyp_len, 3), draw(generator, ref_len, 3), "short")
    for _ in range(40):  # hypotheses that are a prefix of the reference: brevity penalty only
        ref = draw(generator, int(torch.randint(5, 20, (1,), generator=generator)), 20)
        add(ref[:int(torch.randint(1, len(ref), (1,), generator=generator))], ref, "prefix")
    for _ in range(100):
        ref = draw(generator, int(torch.randint(1, 20, (1,), generator=generator)), 6)
        add(list(ref), ref, "identical")
    for _ in range(20):
        add(draw(generator, 6, 4), draw(generator, 7, 4, first=10), "disjoint")
    return hyps, refs, kind


@pytest.mark.parametrize("pad", [0, 1, -1])
def test_sentence_bleu_equals_sacrebleu(pad):
    hyps, refs, kind = bleu_pairs()
    # Tokens start at 2: shift those that equal the pad index out of the way.
    hyps = [[t + 100 if t == pad else t for t in row] for row in hyps]
    refs = [[t + 100 if t == pad else t for t in row] for row in refs]
    hypotheses, references = padded(hyps, pad, extra=2), padded(refs, pad)
    scores = metrics.sentence_bleu(hypotheses, references, pad)
    expected = torch.tensor([sacrebleu.sentence_bleu(as_string(h, pad), [as_string(r, pad)]).score
                             for h, r in zip(hypotheses, references, strict=True)],
                            dtype=torch.float64)
    assert scores.dtype == torch.float64 and scores.shape == (len(hyps),)
    torch.testing.assert_close(scores, expected, atol=1e-6, rtol=0)

    kind = np.array(kind)
    np.testing.assert_allclose(scores[kind == "identical"].numpy(), 100.0, atol=1e-9)
    np.testing.assert_array_equal(scores[kind == "disjoint"].numpy(), 0.0)
    lengths = torch.tensor([len(h) for h in hyps])
    assert bool((scores[lengths == 0] == 0).all())
    # The pairs exercise the interesting cases, not just 0 and 100.
    inside = (scores > 0) & (scores < 100)
    assert int(inside.sum()) > 100
    assert int((inside & (lengths <= 3)).sum()) > 5  # effective order
    prefix = torch.from_numpy(kind == "prefix")
    assert bool((scores[prefix] < 100).all()) and bool((scores[prefix] > 0).all())


def test_sentence_bleu_known_values():
    # Hypothesis 'a a a a' against 'a b': clipped unigram precision 1/4, no bigram match.
    score = metrics.sentence_bleu(torch.tensor([[5, 5, 5, 5]]), torch.tensor([[5, 6, 0, 0]]))
    expected = sacrebleu.sentence_bleu("5 5 5 5", ["5 6"]).score
    torch.testing.assert_close(score, torch.tensor([expected], dtype=torch.float64))
    assert 0 < expected < 30


BLEU_ERRORS = [
    (lambda: metrics.sentence_bleu(torch.ones(2, 3), torch.ones(2, 3, dtype=torch.long)), TypeError,
     r"'hypotheses' should hold integer token ids but got dtype torch.float32"),
    (lambda: metrics.sentence_bleu(torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3)), TypeError,
     r"'references' should hold integer token ids"),
    (lambda: metrics.sentence_bleu(torch.tensor([[4, 0, 5]]), torch.tensor([[4, 5, 0]])),
     ValueError, r"'hypotheses' should be padded on the right only"),
    (lambda: metrics.sentence_bleu(torch.tensor([[4, 5, 0]]), torch.tensor([[0, 4, 5]])),
     ValueError, r"'references' should be padded on the right only"),
    (lambda: metrics.sentence_bleu(torch.ones(2, 3, dtype=torch.long),
                                   torch.ones(3, 3, dtype=torch.long)),
     ValueError, r"should have the same number of rows but got 2 and 3"),
    (lambda: metrics.sentence_bleu(torch.ones(3, dtype=torch.long),
                                   torch.ones(1, 3, dtype=torch.long)),
     ValueError, r"'hypotheses' should be a 2-D"),
]


@pytest.mark.parametrize("call, error, message", BLEU_ERRORS)
def test_sentence_bleu_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


def gaussians(centers, size, sigma):
    """(..., 2) (x, y) centres -> (..., H, W) Gaussians of peak 1."""
    height, width = size
    y = torch.arange(height, dtype=torch.float32)[:, None]
    x = torch.arange(width, dtype=torch.float32)
    dx = x - centers[..., 0, None, None]
    dy = y - centers[..., 1, None, None]
    return torch.exp(-(dx.square() + dy.square()) / (2 * sigma ** 2))


def pose_chunks(size, seed=0, chunks=6, instances=5, keypoints=4):
    """Random heatmaps, targets and masks (S, N, K[, H, W]) hitting mmpose's special cases."""
    generator = seeded(seed)
    height, width = size
    shape = (chunks, instances, keypoints)
    extent = torch.tensor([width - 1, height - 1], dtype=torch.float32)
    centers = torch.rand(shape + (2,), generator=generator) * extent
    target = gaussians(centers, size, 2.0)
    spread = 0.15 * torch.rand(shape + (1,), generator=generator)  # near and far misses
    offset = torch.randn(shape + (2,), generator=generator) * spread * extent
    pred = 0.8 * gaussians(centers + offset, size, 2.0)
    pred = pred + 0.05 * torch.randn(pred.shape, generator=generator)
    # All-negative predictions: mmpose puts them at (-1, -1).
    negative = torch.rand(shape, generator=generator) < 0.2
    pred = torch.where(negative[..., None, None], -torch.rand(pred.shape, generator=generator),
                       pred)
    mask = torch.rand(shape, generator=generator) < 0.75
    mask[1, :, 0] = False  # a keypoint invisible in every instance of a chunk
    mask[2] = False  # a chunk without any visible keypoint
    target[0, 0, 1] = 0.0  # a visible keypoint with an empty target: its location is (-1, -1)
    mask[0, 0, 1] = True
    return pred, target, mask, negative


@pytest.mark.parametrize("size", [(16, 12), (64, 48)])
@pytest.mark.parametrize("thr", [0.05, 0.2])
def test_pck_accuracy_equals_mmpose(size, thr):
    from mmpose.evaluation.functional import pose_pck_accuracy

    pred, target, mask, negative = pose_chunks(size)
    ours = metrics.pck_accuracy(pred, target, mask, thr)
    expected = [pose_pck_accuracy(p.numpy(), t.numpy(), m.numpy(), thr)[1]
                for p, t, m in zip(pred, target, mask, strict=True)]
    assert ours.dtype == torch.float32 and ours.shape == (pred.shape[0],)
    torch.testing.assert_close(ours.double(), torch.tensor(expected, dtype=torch.float64),
                               atol=1e-6, rtol=0)
    assert bool((negative & mask).any())  # the -1 path is hit on visible keypoints
    assert float(ours[2]) == 0.0
    assert len(set(np.round(expected, 6))) >= 3  # not a constant


def test_pck_accuracy_counts_only_visible_instances():
    target = gaussians(torch.tensor([[[[4.0, 4.0]], [[4.0, 4.0]]]]), (20, 20), 1.5)  # (1,2,1,H,W)
    pred = target.clone()
    pred[0, 1] = gaussians(torch.tensor([[15.0, 15.0]]), (20, 20), 1.5)  # instance 1 is wrong
    both = torch.ones(1, 2, 1, dtype=torch.bool)
    torch.testing.assert_close(metrics.pck_accuracy(pred, target, both), torch.tensor([0.5]))
    only_first = torch.tensor([[[True], [False]]])
    torch.testing.assert_close(metrics.pck_accuracy(pred, target, only_first), torch.tensor([1.0]))


def test_chunk_accuracy_equals_a_loop():
    generator = seeded(1)
    logits = torch.randn(7, 20, 5, generator=generator)
    labels = torch.randint(5, (7, 20), generator=generator)
    expected = torch.tensor([sum(int(logits[s, n].argmax()) == int(labels[s, n])
                                 for n in range(20)) / 20 for s in range(7)])
    accuracy = metrics.chunk_accuracy(logits, labels)
    torch.testing.assert_close(accuracy, expected)
    assert 0 < float(accuracy.min()) and float(accuracy.max()) < 1
    assert metrics.chunk_accuracy(logits.double(), labels).dtype == torch.float64

    # Soft labels count by their argmax.
    soft = torch.softmax(3 * torch.randn(7, 20, 5, generator=generator), -1)
    expected_soft = (logits.argmax(-1) == soft.argmax(-1)).float().mean(-1)
    torch.testing.assert_close(metrics.chunk_accuracy(logits, soft), expected_soft)
    torch.testing.assert_close(metrics.chunk_accuracy(logits, soft),
                               metrics.chunk_accuracy(logits, soft.argmax(-1)))


@pytest.mark.parametrize("labels", [torch.zeros(7, 19, dtype=torch.long),
                                    torch.zeros(7, dtype=torch.long),
                                    torch.zeros(7, 20, 5, 1)])
def test_chunk_accuracy_rejects_a_wrong_label_shape(labels):
    with pytest.raises(ValueError, match=r"'labels' should have shape \(S, N\) = \(7, 20\)"):
        metrics.chunk_accuracy(torch.randn(7, 20, 5), labels)


def test_task_metrics_give_one_value_per_chunk():
    generator = seeded(2)
    logits, labels = cls.sample_classification(6, 16, 10, generator=generator)
    accuracy = cls.classification_metric(logits, labels)
    assert accuracy.shape == (6,) and accuracy.dtype == torch.float64
    torch.testing.assert_close(accuracy, metrics.chunk_accuracy(logits, labels).double())

    heatmaps, targets, weights = pose.sample_pose(5, 4, 6, generator=generator)
    pck = pose.pose_metric(heatmaps, targets, weights)
    assert pck.shape == (5,) and pck.dtype == torch.float64
    torch.testing.assert_close(pck, metrics.pck_accuracy(heatmaps, targets, weights > 0).double())

    logits, targets, weights = nat.sample_sequences(4, 3, 60, generator=generator)
    bleu = nat.sequence_metric(logits, targets, weights)
    assert bleu.shape == (4,) and bleu.dtype == torch.float64
    assert bool(((bleu >= 0) & (bleu <= 100)).all())


def test_sequence_metric_equals_mean_sacrebleu():
    logits, targets, weights = nat.sample_sequences(5, 4, 100, generator=seeded(3))
    hypotheses = logits.argmax(-1)
    expected = []
    for s in range(5):
        scores = []
        for n in range(4):
            keep = weights[s, n] > 0
            hyp = " ".join(map(str, hypotheses[s, n][keep].tolist()))
            ref = " ".join(map(str, targets[s, n][keep].tolist()))
            scores.append(sacrebleu.sentence_bleu(hyp, [ref]).score)
        expected.append(sum(scores) / len(scores))
    bleu = nat.sequence_metric(logits, targets, weights)
    torch.testing.assert_close(bleu, torch.tensor(expected, dtype=torch.float64), atol=1e-6, rtol=0)
    assert float(bleu.max() - bleu.min()) > 1


@pytest.mark.parametrize("classes", [10, 100, 1000])
def test_classification_sampler_spreads_accuracy(classes):
    logits, labels = cls.sample_classification(300, 128, classes, generator=seeded(4))
    assert logits.shape == (300, 128, classes) and labels.shape == (300, 128)
    accuracy = metrics.chunk_accuracy(logits, labels)
    assert float(accuracy.min()) < 0.2
    assert float(accuracy.max()) > 0.95
    late = (accuracy >= 0.85) & (accuracy <= 0.99)
    assert float(late.float().mean()) >= 0.15


@pytest.mark.parametrize("size", [(64, 48), (96, 72)])
def test_pose_sampler_spreads_pck(size):
    heatmaps, targets, weights = pose.sample_pose(40, 8, heatmap_size=size,
                                                      generator=seeded(5))
    assert heatmaps.shape == targets.shape == (40, 8, 17) + size
    assert weights.shape == (40, 8, 17)
    pck = pose.pose_metric(heatmaps, targets, weights)
    assert float(pck.min()) < 0.5
    assert float(pck.max()) > 0.9
    invisible = weights == 0
    assert bool(invisible.any()) and bool((~invisible).any())
    assert float(targets[invisible].abs().max()) == 0.0
    assert bool((targets[~invisible].flatten(-2).amax(-1) > 0.5).all())


def test_sequence_sampler_spreads_bleu_and_pads_on_the_right():
    logits, targets, weights = nat.sample_sequences(400, generator=seeded(6))
    assert logits.shape[:3] == targets.shape == weights.shape and targets.shape[:2] == (400, 1)
    bleu = nat.sequence_metric(logits, targets, weights)
    assert float(bleu.min()) == 0.0
    assert float(bleu.max()) > 80

    targets, weights = targets[:, 0], weights[:, 0]
    is_pad = targets == nat.PAD
    torch.testing.assert_close(weights, (~is_pad).float())
    assert bool(is_pad.any())
    assert not bool((is_pad[:, :-1] & ~is_pad[:, 1:]).any())  # nothing after padding
    assert bool((targets[~is_pad] >= nat.FIRST_TOKEN).all())

    hypotheses = logits[:, 0].argmax(-1)
    both = ~is_pad[:, :-1] & ~is_pad[:, 1:]
    repeated = (hypotheses[:, :-1] == hypotheses[:, 1:]) & both
    assert bool((repeated & (targets[:, :-1] != targets[:, 1:])).any())


@pytest.mark.parametrize("sampler, arguments", [
    (cls.sample_classification, (5, 8, 10)),
    (pose.sample_pose, (3, 2, 4, (16, 12))),
    (nat.sample_sequences, (4, 2, 50)),
])
def test_samplers_are_deterministic(sampler, arguments):
    first = sampler(*arguments, generator=seeded(7))
    second = sampler(*arguments, generator=seeded(7))
    other = sampler(*arguments, generator=seeded(8))
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(first[0], other[0])


def long_tail_chunks(generator, chunks=200, size=12, classes=6):
    """Chunks whose labels follow a long tail (some classes missing from a chunk) and whose
    logits are right about half the time: (S, N, C) logits and (S, N) labels."""
    prior = torch.tensor([0.5 ** c for c in range(classes)])
    labels = torch.multinomial(prior, chunks * size, replacement=True,
                               generator=generator).view(chunks, size)
    logits = torch.randn(chunks, size, classes, generator=generator)
    right = torch.rand(chunks, size, generator=generator) < 0.5
    logits += 3 * F.one_hot(labels, classes) * right.unsqueeze(-1)
    return logits, labels


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true",
                            "ignore:A single label was found in 'y_true' and 'y_pred'")
@pytest.mark.parametrize("name, reference", [
    ("chunk_macro_f1", lambda y, p: f1_score(y, p, average="macro", zero_division=0)),
    ("chunk_balanced_accuracy", balanced_accuracy_score),
])
def test_class_aware_metrics_equal_scikit_learn(name, reference):
    metric = getattr(metrics, name)
    generator = seeded(9)
    label_missing = predicted_not_labelled = 0
    for size, classes in ((12, 6), (1, 3), (40, 4), (7, 20)):
        logits, labels = long_tail_chunks(generator, 150, size, classes)
        predicted = logits.argmax(-1)
        expected = torch.tensor([reference(labels[s].numpy(), predicted[s].numpy())
                                 for s in range(labels.shape[0])], dtype=torch.float64)
        values = metric(logits, labels)
        assert values.shape == (labels.shape[0],) and values.dtype == torch.float32
        torch.testing.assert_close(values, expected.float())

        double = metric(logits.double(), labels)
        assert double.dtype == torch.float64
        torch.testing.assert_close(double, expected.double(), rtol=1e-12, atol=1e-12)

        # Soft labels count by their argmax.
        spread = torch.rand(logits.shape, generator=generator)
        soft = 0.6 * F.one_hot(labels, classes) + 0.4 * spread / spread.sum(-1, keepdim=True)
        torch.testing.assert_close(metric(logits, soft), values)

        labelled = F.one_hot(labels, classes).sum(1) > 0  # (S, C)
        label_missing += int((~labelled).any(-1).sum())
        predicted_not_labelled += int((F.one_hot(predicted, classes).sum(1) > 0)
                                      .logical_and(~labelled).any(-1).sum())
    # The draw covers chunks without some classes, and chunks predicting a class none is of.
    assert label_missing > 100 and predicted_not_labelled > 100


def test_class_aware_metrics_differ_from_accuracy_on_a_long_tail():
    # Four of class 0, one of class 1: predicting class 0 everywhere is 80% accurate.
    logits = F.one_hot(torch.zeros(1, 5, dtype=torch.long), 2).float()
    labels = torch.tensor([[0, 0, 0, 0, 1]])
    torch.testing.assert_close(metrics.chunk_accuracy(logits, labels), torch.tensor([0.8]))
    torch.testing.assert_close(metrics.chunk_balanced_accuracy(logits, labels),
                               torch.tensor([0.5]))
    torch.testing.assert_close(metrics.chunk_macro_f1(logits, labels),
                               torch.tensor([(8 / 9 + 0) / 2]))


@pytest.mark.parametrize("metric", [metrics.chunk_macro_f1, metrics.chunk_balanced_accuracy])
@pytest.mark.parametrize("logits, labels, error, message", [
    (torch.randn(20, 5), torch.zeros(20, dtype=torch.long), ValueError,
     r"'logits' should be a 3-D \(S, N, C\) tensor but got shape \(20, 5\)"),
    (torch.randn(7, 20, 5), torch.zeros(7, 19, dtype=torch.long), ValueError,
     r"'labels' should have shape \(S, N\) = \(7, 20\) \(or \(S, N, C\) = \(7, 20, 5\) soft "
     r"labels\) but got \(7, 19\)"),
    (torch.randn(7, 20, 5), torch.zeros(7, 20, 4), ValueError,
     r"'labels' should have shape \(S, N\) = \(7, 20\) .* but got \(7, 20, 4\)"),
    (torch.randn(7, 20, 5), torch.zeros(7, 20), TypeError,
     r"'labels' should be \(S, N\) integer class indices or \(S, N, C\) float soft labels but "
     r"got dtype torch.float32"),
    (torch.randn(7, 20, 5), torch.full((7, 20), 5), ValueError,
     r"'labels' should hold class indices in \[0, C\) = \[0, 5\) but got values from 5 to 5"),
    (torch.randn(7, 20, 5), torch.full((7, 20), -1), ValueError,
     r"'labels' should hold class indices in \[0, C\) = \[0, 5\) but got values from -1"),
    (torch.randn(7, 20, 5), [[0] * 20] * 7, TypeError,
     r"'labels' should be a torch.Tensor but got list"),
])
def test_class_aware_metrics_reject_bad_input(metric, logits, labels, error, message):
    with pytest.raises(error, match=message):
        metric(logits, labels)


@pytest.mark.parametrize("name", ["chunk_macro_f1", "chunk_balanced_accuracy"])
def test_pretrain_takes_class_aware_metrics_by_name(name):
    """``reloss pretrain --task cls --metric reloss.metrics:NAME`` finds the function, and its
    values over synthetic chunks are what the pretraining data holds."""
    parser, _ = pretrain_command.parse_args(["--task", "cls", "--out", "unused"])
    metric = pretrain_command.import_metric(parser, f"reloss.metrics:{name}")
    assert metric is getattr(reloss, name) is getattr(metrics, name)
    chunks = list(pretrain.synthetic_chunks("cls", 6, seeded(10), chunk_size=16))
    data = pretrain.prepare_batches(TASKS["cls"].surrogate(), "cls", chunks, metric)
    expected = torch.cat([metric(logits, labels) for logits, labels, _ in chunks]).double()
    torch.testing.assert_close(data["metric"], expected)


def test_pretrain_imports_a_package_module_of_the_current_directory(tmp_path, monkeypatch):
    """``--metric pkg.module:function`` run beside ``pkg/`` imports it as a package module, so
    that its relative imports work (as ``python -m`` would find it)."""
    package = tmp_path / "my_metric_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "base.py").write_text("def accuracy(logits, labels):\n"
                                     "    return (logits.argmax(-1) == labels).float().mean(-1)\n")
    (package / "scores.py").write_text("from .base import accuracy\n\n\n"
                                       "def score(logits, labels):\n"
                                       "    return accuracy(logits, labels)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "my_metric_pkg", raising=False)
    parser, _ = pretrain_command.parse_args(["--task", "cls", "--out", "unused"])
    metric = pretrain_command.import_metric(parser, "my_metric_pkg.scores:score")
    logits, labels = torch.eye(3).unsqueeze(0), torch.tensor([[0, 1, 0]])
    torch.testing.assert_close(metric(logits, labels), torch.tensor([2 / 3]))
    assert str(tmp_path) not in sys.path
    for name in ("my_metric_pkg", "my_metric_pkg.base", "my_metric_pkg.scores"):
        sys.modules.pop(name, None)
