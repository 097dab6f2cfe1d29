import pytest
import torch

from reloss.metrics import chunk_accuracy, chunk_balanced_accuracy, chunk_macro_f1
from reloss.spearman import spearman
from reloss.tasks.cls import sample_long_tailed


def seeded(seed):
    return torch.Generator().manual_seed(seed)


def metrics(logits, labels):
    return (chunk_accuracy(logits, labels), chunk_balanced_accuracy(logits, labels),
            chunk_macro_f1(logits, labels))


@pytest.mark.parametrize("classes", [10, 100, 1000])
def test_shapes_and_dtypes(classes):
    logits, labels, priors = sample_long_tailed(3, 16, classes, seeded(0), return_priors=True)
    assert logits.shape == (3, 16, classes) and logits.dtype == torch.float32
    assert labels.shape == (3, 16) and labels.dtype == torch.int64
    assert priors.shape == (3, classes) and priors.dtype == torch.float32
    assert 0 <= int(labels.min()) and int(labels.max()) < classes
    assert bool(torch.isfinite(logits).all())
    torch.testing.assert_close(priors.sum(-1), torch.ones(3))
    assert len(sample_long_tailed(3, 16, classes, seeded(0))) == 2


def test_deterministic_under_a_seeded_generator():
    first = sample_long_tailed(4, 32, 10, seeded(5), return_priors=True)
    again = sample_long_tailed(4, 32, 10, seeded(5), return_priors=True)
    other = sample_long_tailed(4, 32, 10, seeded(6), return_priors=True)
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(first[0], other[0])
    # Asking for the priors changes nothing else.
    plain = sample_long_tailed(4, 32, 10, seeded(5))
    assert torch.equal(plain[0], first[0]) and torch.equal(plain[1], first[1])


def test_priors_follow_the_exponential_profile():
    _, _, priors = sample_long_tailed(5, 8, 10, seeded(1), imbalance=100.0, return_priors=True)
    ordered = priors.sort(-1, descending=True).values
    # p_c ∝ rho^(-r_c / (C - 1)): a constant ratio rho^(1/9) between neighbours, rho end to end.
    step = ordered[:, :-1] / ordered[:, 1:]
    torch.testing.assert_close(step, torch.full((5, 9), 100 ** (1 / 9)), rtol=1e-4, atol=0)
    span = ordered[:, 0] / ordered[:, -1]
    torch.testing.assert_close(span, torch.full((5,), 100.0), rtol=1e-4, atol=0)
    # The ranking differs between chunks.
    assert len({tuple(row) for row in priors.argsort(-1).tolist()}) > 1


def test_label_frequencies_follow_the_imbalance():
    _, labels, priors = sample_long_tailed(4, 20000, 10, seeded(2), imbalance=100.0,
                                           return_priors=True)
    counts = torch.zeros(4, 10).scatter_add_(1, labels, torch.ones(labels.shape))
    present = counts.masked_fill(counts == 0, float("inf"))
    # Expected head / tail count ratio 100; the rarest class expects 20000 * 0.004 = 80 labels.
    assert bool((counts.amax(-1) / present.amin(-1) > 50).all())
    assert bool((counts.argmax(-1) == priors.argmax(-1)).all())
    assert bool((spearman(counts, priors) > 0.95).all())

    _, labels = sample_long_tailed(4, 20000, 10, seeded(2), imbalance=1.0)
    counts = torch.zeros(4, 10).scatter_add_(1, labels, torch.ones(labels.shape))
    assert bool((counts.amax(-1) / counts.amin(-1) < 1.2).all())  # 2000 each, sd about 42


def test_metrics_spread_over_the_range():
    for values in metrics(*sample_long_tailed(2000, 128, 10, seeded(0))):
        assert float(values.min()) < 0.2 and float(values.max()) > 0.8


def test_class_aware_metrics_no_longer_rank_like_accuracy():
    # Measured at C = 10 over 2000 chunks of 128, seeds 0-9: Spearman(accuracy, balanced accuracy)
    # 0.77-0.80, Spearman(accuracy, macro-F1) 0.79-0.83 (sd about 0.012). With balanced priors
    # and no head bias both are >= 0.999.
    accuracy, balanced, macro_f1 = metrics(*sample_long_tailed(2000, 128, 10, seeded(0)))
    assert float(spearman(accuracy, balanced)) < 0.88
    assert float(spearman(accuracy, macro_f1)) < 0.88
    accuracy, balanced, macro_f1 = metrics(*sample_long_tailed(2000, 128, 10, seeded(0),
                                                               imbalance=1.0, head_bias=0.0))
    assert float(spearman(accuracy, balanced)) > 0.99
    assert float(spearman(accuracy, macro_f1)) > 0.99


def test_head_bias_lowers_the_recall_of_rare_classes():
    def metric_means(head_bias):
        accuracy, balanced, _ = metrics(*sample_long_tailed(500, 128, 10, seeded(3),
                                                            imbalance=100.0, head_bias=head_bias))
        return float(accuracy.mean()), float(balanced.mean())

    accuracy, balanced = metric_means(0.0)
    assert balanced == pytest.approx(accuracy, abs=0.05)
    accuracy, balanced = metric_means(3.0)
    assert balanced < accuracy - 0.15


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(num_chunks=0), ValueError, r"'num_chunks' should be an int >= 1 but got 0"),
    (dict(chunk_size=2.0), ValueError, r"'chunk_size' should be an int >= 1 but got 2.0"),
    (dict(num_classes=1), ValueError, r"'num_classes' should be an int >= 2 but got 1"),
    (dict(num_classes=True), ValueError, r"'num_classes' should be an int >= 2 but got True"),
    (dict(generator=0), TypeError, r"'generator' should be a torch.Generator or None but got int"),
    (dict(imbalance=0.5), ValueError,
     r"'imbalance' should be a number or a pair \(low, high\) with 1 <= low <= high but got 0.5"),
    (dict(imbalance=(200.0, 10.0)), ValueError, r"'imbalance' .* but got \(200.0, 10.0\)"),
    (dict(imbalance=(1.0, float("inf"))), ValueError, r"'imbalance' .* but got \(1.0, inf\)"),
    (dict(imbalance=(1.0, 2.0, 3.0)), ValueError, r"'imbalance' .* but got \(1.0, 2.0, 3.0\)"),
    (dict(imbalance="high"), ValueError, r"'imbalance' .* but got 'high'"),
    (dict(late_fraction=1.5), ValueError, r"'late_fraction' should be a number in \[0, 1\] but "
                                          r"got 1.5"),
    (dict(late_band=0.9), ValueError,
     r"'late_band' should be a pair \(low, high\) with 0 <= low <= high <= 1 but got 0.9"),
    (dict(late_band=(0.9, 1.2)), ValueError, r"'late_band' .* but got \(0.9, 1.2\)"),
    (dict(head_bias=-1.0), ValueError,
     r"'head_bias' should be a number or a pair \(low, high\) with 0 <= low <= high but got "
     r"-1.0"),
    (dict(head_bias=(0.0, float("nan"))), ValueError, r"'head_bias' .* but got \(0.0, nan\)"),
])
def test_bad_arguments(kwargs, error, message):
    kwargs = dict(num_chunks=2, chunk_size=4) | kwargs
    with pytest.raises(error, match=message):
        sample_long_tailed(**kwargs)
