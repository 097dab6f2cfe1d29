import math

import pytest
import torch

from tools.benchmarks.reference import longtail

COUNTS = [500, 200, 80, 30, 12, 5]  # a long tail over six classes
CLASSES = len(COUNTS)


def batch(seed=0, size=16, classes=CLASSES, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(size, classes, generator=generator, dtype=dtype)
    target = torch.randint(classes, (size,), generator=generator)
    return logits, target


def mean_cross_entropy(rows, targets, weights=None):
    """sum_i w_yi * (-log softmax(row_i)[y_i]) / sum_i w_yi, one sample at a time with math."""
    total = norm = 0.0
    for row, y in zip(rows, targets, strict=True):
        w = 1.0 if weights is None else weights[y]
        total += w * (math.log(sum(math.exp(v) for v in row)) - row[y])
        norm += w
    return total / norm


@pytest.mark.parametrize("tau", [0.0, 0.5, 1.0, 2.0])
def test_logit_adjusted_loss_equals_the_per_sample_formula(tau):
    logits, target = batch(1)
    total = sum(COUNTS)
    rows = [[float(z) + tau * math.log(n / total) for z, n in zip(row, COUNTS, strict=True)]
            for row in logits.tolist()]
    expected = mean_cross_entropy(rows, target.tolist())
    loss = longtail.logit_adjusted_loss(logits, target, COUNTS, tau)
    assert loss.shape == () and loss.dtype == torch.float32
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_balanced_softmax_equals_the_per_sample_formula_and_logit_adjustment_at_tau_1():
    logits, target = batch(2, dtype=torch.float64)
    rows = [[z + math.log(n) for z, n in zip(row, COUNTS, strict=True)]
            for row in logits.tolist()]
    loss = longtail.balanced_softmax_loss(logits, target, COUNTS)
    assert float(loss) == pytest.approx(mean_cross_entropy(rows, target.tolist()), rel=1e-12)
    torch.testing.assert_close(loss, longtail.logit_adjusted_loss(logits, target, COUNTS, 1.0))
    assert not torch.allclose(loss, longtail.logit_adjusted_loss(logits, target, COUNTS, 0.5))


@pytest.mark.parametrize("weighted", [False, True])
def test_ldam_loss_equals_the_per_sample_formula(weighted):
    logits, target = batch(3, dtype=torch.float64)
    scale, max_margin = 30.0, 0.5
    rarest = min(COUNTS)
    margins = [max_margin * (rarest / n) ** 0.25 for n in COUNTS]
    weights = [1.0 + j for j in range(len(COUNTS))] if weighted else None
    rows = [[scale * (z - (margins[j] if j == y else 0.0)) for j, z in enumerate(row)]
            for row, y in zip(logits.tolist(), target.tolist(), strict=True)]
    expected = mean_cross_entropy(rows, target.tolist(), weights)
    loss = longtail.ldam_loss(logits, target, COUNTS, max_margin, scale,
                              None if weights is None else torch.tensor(weights))
    assert float(loss) == pytest.approx(expected, rel=1e-12)


def test_ldam_margins_follow_the_fourth_root_of_the_counts():
    margins = longtail.ldam_margins(COUNTS, max_margin=0.7)
    assert margins.dtype == torch.float64 and margins.shape == (len(COUNTS),)
    assert float(margins.max()) == pytest.approx(0.7)
    assert int(margins.argmax()) == COUNTS.index(min(COUNTS))
    for i, n_i in enumerate(COUNTS):
        for j, n_j in enumerate(COUNTS):
            assert float(margins[j] / margins[i]) == pytest.approx((n_i / n_j) ** 0.25)
    # A class without images is never a target: margin 0; the others keep their ratios.
    with_empty = longtail.ldam_margins(COUNTS + [0], max_margin=0.7)
    assert float(with_empty[-1]) == 0.0
    torch.testing.assert_close(with_empty[:-1], margins)


def test_drw_weights_sum_to_the_classes_and_favour_rare_ones():
    beta = 0.999
    weights = longtail.drw_weights(COUNTS, beta)
    assert weights.dtype == torch.float64
    assert float(weights.sum()) == pytest.approx(len(COUNTS))
    raw = [(1 - beta) / (1 - beta ** n) for n in COUNTS]
    for w, r in zip(weights.tolist(), raw, strict=True):
        assert w == pytest.approx(r * len(COUNTS) / sum(raw))
    assert bool((weights.diff() > 0).all())  # the rarer class weighs more
    torch.testing.assert_close(longtail.drw_weights(COUNTS, 0.0),
                               torch.ones(len(COUNTS), dtype=torch.float64))
    empty = longtail.drw_weights([10, 0, 5], beta)
    assert float(empty[1]) == 0.0 and float(empty.sum()) == pytest.approx(3)


def test_drw_switches_on_at_a_fraction_of_training():
    assert [e for e in range(200) if longtail.drw_active(e, 200)] == list(range(160, 200))
    assert [e for e in range(10) if longtail.drw_active(e, 10, start=0.7)] == [7, 8, 9]
    assert not any(longtail.drw_active(e, 10, start=1.0) for e in range(10))
    with pytest.raises(ValueError, match=r"'epoch' should be in \[0, epochs\) = \[0, 10\)"):
        longtail.drw_active(10, 10)
    with pytest.raises(ValueError, match=r"'start' should be a fraction of training in \[0, 1\]"):
        longtail.drw_active(0, 10, start=1.5)


def test_posthoc_adjustment_moves_a_close_call_to_the_rare_class():
    counts = [900, 100]
    logits = torch.tensor([[2.0, 0.5], [2.0, -3.0]])  # both predict the head class
    adjusted = longtail.posthoc_adjust(logits, counts, tau=1.0)
    # log(0.9 / 0.1) = 2.2 > 1.5: the first flips to the rare class; the second stays.
    assert adjusted.argmax(-1).tolist() == [1, 0]
    torch.testing.assert_close(adjusted - logits, -torch.tensor([math.log(0.9), math.log(0.1)])
                               .expand(2, 2))
    torch.testing.assert_close(longtail.posthoc_adjust(logits, counts, tau=0.0), logits)
    with pytest.raises(ValueError, match=r"'class_counts' should be > 0 for every class in "
                                         r"posthoc_adjust .* but got 0 for class 1"):
        longtail.posthoc_adjust(logits, [900, 0])


LOSSES = {
    "logit_adjusted": lambda logits, target, counts: longtail.logit_adjusted_loss(
        logits, target, counts, 1.5),
    "balanced_softmax": longtail.balanced_softmax_loss,
    "ldam": lambda logits, target, counts: longtail.ldam_loss(
        logits, target, counts, weight=longtail.drw_weights(counts)),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_losses_have_exact_gradients(name):
    logits, target = batch(4, size=5, dtype=torch.float64)
    logits.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: LOSSES[name](x, target, COUNTS), (logits,))


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_a_class_without_images_that_is_no_target_keeps_losses_finite(name):
    logits, target = batch(5, classes=4)
    target = target % 3  # class 3 never occurs
    logits.requires_grad_()
    loss = LOSSES[name](logits, target, [40, 20, 10, 0])
    loss.backward()
    assert torch.isfinite(loss) and bool(torch.isfinite(logits.grad).all())
    with pytest.raises(ValueError, match=r"'class_counts' should be > 0 for every class in "
                                         r"'labels' but got 0 for class 3, which occurs there"):
        LOSSES[name](logits, torch.full_like(target, 3), [40, 20, 10, 0])


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_losses_refuse_soft_and_misshapen_targets(name):
    logits, target = batch(6)
    soft = torch.softmax(torch.randn(logits.shape), -1)
    with pytest.raises(TypeError, match=r"'target' should be \(N,\) integer class indices: the "
                                        r"long-tail anchors take hard labels only, but got soft "
                                        r"labels of shape \(16, 6\)"):
        LOSSES[name](logits, soft, COUNTS)
    with pytest.raises(ValueError, match=r"'target' should be \(N,\) = \(16,\) integer class "
                                         r"indices but got torch.int64 \(15,\)"):
        LOSSES[name](logits, target[:15], COUNTS)
    with pytest.raises(ValueError, match=r"'logits' should be a 2-D \(N, C\) floating-point "
                                         r"tensor but got torch.float32 \(2, 16, 6\)"):
        LOSSES[name](logits.expand(2, 16, 6), target, COUNTS)
    with pytest.raises(ValueError, match=r"'class_counts' should be 1-D with one count per class "
                                         r"\(C = 6\) but got shape \(5,\)"):
        LOSSES[name](logits, target, COUNTS[:5])


def test_ldam_refuses_a_misshapen_weight():
    logits, target = batch(7)
    with pytest.raises(ValueError, match=r"'weight' should be None or a \(6,\) tensor of class "
                                         r"weights but got \(5,\)"):
        longtail.ldam_loss(logits, target, COUNTS, weight=torch.ones(5))


@pytest.mark.parametrize("counts, num_classes, labels, error, message", [
    ([5, 3, 1], 4, None, ValueError,
     r"'class_counts' should be 1-D with one count per class \(C = 4\) but got shape \(3,\)"),
    ([[5, 3], [1, 1]], 4, None, ValueError,
     r"'class_counts' should be 1-D with one count per class \(C = 4\) but got shape \(2, 2\)"),
    ([], None, None, ValueError,
     r"'class_counts' should be 1-D with one count per class \(C\) but got shape \(0,\)"),
    ([5, -1, 2], 3, None, ValueError,
     r"'class_counts' should hold counts >= 0 but got -1 for class 1"),
    ([5, 3, float("nan")], 3, None, ValueError,
     r"'class_counts' should hold finite counts but got nan for class 2"),
    ([float("inf"), 3, 1], 3, None, ValueError,
     r"'class_counts' should hold finite counts but got inf for class 0"),
    ([5, 2.5, 1], 3, None, ValueError,
     r"'class_counts' should hold whole numbers of images but got 2.5 for class 1"),
    ([0, 0, 0], 3, None, ValueError,
     r"'class_counts' should have at least one count > 0 but all are 0"),
    ([5, 3, 0], 3, torch.tensor([0, 2, 1]), ValueError,
     r"'class_counts' should be > 0 for every class in 'labels' but got 0 for class 2, which "
     r"occurs there"),
    (torch.tensor([True, False]), 2, None, TypeError,
     r"'class_counts' should hold real numbers \(images per class\) but got dtype torch.bool"),
    ("abc", 3, None, TypeError,
     r"'class_counts' should be a 1-D tensor or sequence of numbers \(images per class\) but got "
     r"str"),
    (None, 3, None, TypeError,
     r"'class_counts' should be a 1-D tensor or sequence of numbers \(images per class\) but got "
     r"NoneType"),
])
def test_check_class_counts_errors(counts, num_classes, labels, error, message):
    with pytest.raises(error, match=message):
        longtail.check_class_counts(counts, num_classes, labels)


@pytest.mark.parametrize("num_classes, labels, error, message", [
    (0, None, ValueError, r"'num_classes' should be an integer >= 1 or None but got 0"),
    (True, None, ValueError, r"'num_classes' should be an integer >= 1 or None but got True"),
    (3, torch.tensor([0, 3]), ValueError,
     r"'labels' should hold class indices in \[0, C\) = \[0, 3\) but got values from 0 to 3"),
    (3, torch.tensor([0.0, 1.0]), TypeError,
     r"'labels' should hold integer class indices but got dtype torch.float32"),
])
def test_check_class_counts_errors_on_its_other_arguments(num_classes, labels, error, message):
    with pytest.raises(error, match=message):
        longtail.check_class_counts([5, 3, 1], num_classes, labels)


def test_check_class_counts_takes_whole_numbers_in_any_form():
    expected = torch.tensor([5.0, 3.0, 0.0], dtype=torch.float64)
    for counts in ([5, 3, 0], (5, 3, 0), torch.tensor([5, 3, 0]), torch.tensor([5.0, 3.0, 0.0]),
                   [5.0000000001, 3, 0]):
        torch.testing.assert_close(longtail.check_class_counts(counts, 3), expected)
    # A class without images is fine where no label is of it.
    longtail.check_class_counts([5, 3, 0], 3, torch.tensor([[0, 1], [1, 1]]))
    longtail.check_class_counts([5, 3, 0], 3, torch.tensor([], dtype=torch.long))
