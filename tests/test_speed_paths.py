"""The fast paths of the frozen surrogates and of the adapters' checks compute what the plain
autograd evaluation of the surrogate computes: the same values and gradients, on random inputs,
with hard and soft labels and with weights, in float32 and float64."""
import copy
import math

import pytest
import torch

import reloss
from reloss._validate import DeferredCheck
from reloss.surrogate import Surrogate
from reloss.tasks._cls_frozen import FEW_CLASSES, SHORT_ROWS
from reloss.tasks.pose import sample_pose

# float64 shows that the math is the same; float32, that the fast path stays within round-off.
TOLERANCE = {torch.float32: dict(rtol=2e-5, atol=2e-6), torch.float64: dict(rtol=1e-10,
                                                                              atol=1e-12)}


def value_and_grad(loss_fn, pred, *args, **kwargs):
    pred = pred.detach().clone().requires_grad_()
    value = loss_fn(pred, *args, **kwargs)
    (grad,) = torch.autograd.grad(value.sum(), pred)
    return value.detach(), grad


def surrogates(name, dtype):
    """(frozen, trainable) copies of a shipped surrogate in ``dtype``: the trainable one runs the
    plain autograd evaluation."""
    return (reloss.load_surrogate(name).to(dtype),
            reloss.load_surrogate(name, trainable=True).to(dtype))


def class_targets(form, count, classes, generator):
    labels = torch.randint(classes, (count,), generator=generator)
    if form == "hard":
        return labels
    one_hot = torch.nn.functional.one_hot(labels, classes).double()
    if form == "mixup":
        other = torch.nn.functional.one_hot(labels.roll(1), classes).double()
        return 0.7 * one_hot + 0.3 * other
    return 0.9 * one_hot + 0.1 / classes  # label smoothing: every class non-zero


def compare_classification(frozen, trainable, form, count, classes, scales, dtype, generator,
                           zero_weight):
    """The frozen and the plain autograd evaluation agree (value and gradient) on logits at each
    scale, with and without sample weights (one of them 0), under every reduction."""
    weight = torch.rand(count, generator=generator, dtype=torch.float64) + 0.5
    weight[zero_weight] = 0.0
    for scale in scales:
        logits = (scale * torch.randn(count, classes, generator=generator,
                                      dtype=torch.float64)).to(dtype)
        target = class_targets(form, count, classes, generator)
        if target.is_floating_point():
            target = target.to(dtype)
        for w in (None, weight.to(dtype)):
            for reduction in ("none", "mean", "sum"):
                fast = value_and_grad(frozen, logits, target, w, reduction=reduction)
                plain = value_and_grad(trainable, logits, target, w, reduction=reduction)
                where = f"{scale=} {w is None=} {reduction=}"
                torch.testing.assert_close(fast, plain, **TOLERANCE[dtype],
                                           msg=lambda m, where=where: f"{where}: {m}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("classes", [10, FEW_CLASSES + 1, 1000])
@pytest.mark.parametrize("form", ["hard", "mixup", "smoothed"])
def test_classification_frozen_path_equals_autograd(dtype, classes, form):
    frozen, trainable = surrogates("cls", dtype)
    generator = torch.Generator().manual_seed(classes)
    count = 16
    # Scales from near-uniform to far-apart logits (whose exps underflow at T = 0.1); float32
    # carries z / T with an absolute error of ulp(z / T), so it is compared at moderate scales.
    scales = (0.1, 2.0, 8.0) if dtype == torch.float32 else (0.1, 2.0, 40.0)
    compare_classification(frozen, trainable, form, count, classes, scales, dtype, generator,
                           zero_weight=2)


def perturbed_surrogates(temperatures, dtype, seed=0):
    """(frozen, trainable) ClassificationSurrogates with the given temperatures and the same
    random learned steps (not the evenly spread ones they start with)."""
    from reloss.tasks.cls import ClassificationSurrogate

    trainable = ClassificationSurrogate(temperatures)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in trainable.parameters():
            parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator))
    trainable = trainable.to(dtype)
    frozen = copy.deepcopy(trainable).requires_grad_(False)
    return frozen, trainable


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("temperatures", [(1.0,), (0.5,), (1.0, 0.1)])
@pytest.mark.parametrize("classes", [2, 10, SHORT_ROWS, 1000])
@pytest.mark.parametrize("form", ["hard", "mixup", "smoothed"])
def test_single_and_several_temperatures_equal_autograd(dtype, temperatures, classes, form):
    """One temperature takes the specialised frozen path (T = 1 over short rows: one autograd
    node; otherwise autograd's log-softmax and gather, then the learned steps), several the
    general one: both equal the plain autograd evaluation, with every label form, weight and
    reduction."""
    frozen, trainable = perturbed_surrogates(temperatures, dtype, seed=classes)
    generator = torch.Generator().manual_seed(classes)
    count = 12
    compare_classification(frozen, trainable, form, count, classes, (0.1, 3.0), dtype, generator,
                           zero_weight=3)


@pytest.mark.parametrize("temperatures", [(1.0,), (1.0, 0.1)])
def test_frozen_mean_equals_the_scaled_mean_of_plain_autograd(temperatures):
    """ClassificationSurrogate.frozen_mean, the public fast path ReLossCls takes: scale times the
    mean, value and gradient, for any number of classes; 0 on an empty batch."""
    frozen, trainable = perturbed_surrogates(temperatures, torch.float64, seed=5)
    assert frozen.frozen and not trainable.frozen
    generator = torch.Generator().manual_seed(5)
    for classes in (2, SHORT_ROWS, 1000):
        logits = 3 * torch.randn(12, classes, generator=generator, dtype=torch.float64)
        labels = torch.randint(classes, (12,), generator=generator)
        fast = value_and_grad(lambda z, y: frozen.frozen_mean(z, y, 2.5), logits, labels)
        plain = value_and_grad(lambda z, y: 2.5 * trainable(z, y), logits, labels)
        torch.testing.assert_close(fast, plain, **TOLERANCE[torch.float64])
    empty = torch.zeros(0, 10, dtype=torch.float64, requires_grad=True)
    assert float(frozen.frozen_mean(empty, torch.zeros(0, dtype=torch.long)).detach()) == 0.0


@pytest.mark.parametrize("logits, labels, error, message", [
    (torch.randn(4, 5), torch.zeros(4), ValueError,
     r"'labels' should be \(N,\) = \(4,\) integer class indices but got torch.float32 \(4,\)"),
    (torch.randn(4, 5), torch.zeros(3, dtype=torch.long), ValueError,
     r"'labels' should be \(N,\) = \(4,\) integer class indices but got torch.int64 \(3,\)"),
    (torch.randn(4, 5), torch.zeros(4, dtype=torch.bool), ValueError, r"but got torch.bool"),
    (torch.randn(4, 1), torch.zeros(4, dtype=torch.long), ValueError,
     r"'logits' should have C >= 2"),
    (torch.randn(5), torch.zeros(5, dtype=torch.long), ValueError,
     r"'logits' should be a 2-D \(N, C\) logits tensor but got shape \(5,\)"),
    (torch.zeros(4, 5, dtype=torch.long), torch.zeros(4, dtype=torch.long), TypeError,
     r"'logits' should be a floating-point tensor"),
    (torch.randn(4, 5), [0, 1, 2, 3], TypeError, r"'labels' should be a torch.Tensor but got list"),
])
def test_frozen_mean_names_what_does_not_fit(logits, labels, error, message):
    with pytest.raises(error, match=message):
        reloss.load_surrogate("cls").frozen_mean(logits, labels)


def test_single_temperature_backward_twice_and_empty_batch():
    """The written-out backward keeps what it saved intact (retain_graph), and N = 0 works."""
    frozen, _ = perturbed_surrogates((1.0,), torch.float32)
    for classes in (10, 1000):
        logits = torch.randn(6, classes, requires_grad=True)
        labels = torch.arange(6) % classes
        loss = frozen(logits, labels)
        (first,) = torch.autograd.grad(loss, logits, retain_graph=True)
        (second,) = torch.autograd.grad(loss, logits)
        torch.testing.assert_close(first, second, rtol=0, atol=0)
        empty = torch.zeros(0, classes, requires_grad=True)
        for reduction in ("none", "mean", "sum"):
            frozen(empty, torch.zeros(0, dtype=torch.long), reduction=reduction).sum().backward()
            assert empty.grad.shape == empty.shape


def test_relosscls_fast_path_equals_plain_autograd():
    """ReLossCls's hard-label mean (the frozen evaluation called directly, its scale folded in)
    against the trainable surrogate's plain autograd evaluation, times
    loss_weight N / avg_factor."""
    pytest.importorskip("mmpretrain")
    from reloss.mmpretrain import ReLossCls

    plain = reloss.load_surrogate("cls", trainable=True)
    generator = torch.Generator().manual_seed(1)
    for classes in (10, 1000):
        logits = 3 * torch.randn(12, classes, generator=generator)
        labels = torch.randint(classes, (12,), generator=generator)
        for loss_weight in (1.0, 2.5):
            loss = ReLossCls(loss_weight=loss_weight)
            for avg_factor in (None, 12, 30):
                factor = loss_weight * (1 if avg_factor is None else 12 / avg_factor)
                fast = value_and_grad(loss, logits, labels, avg_factor=avg_factor)
                expected = value_and_grad(lambda z, y, f: f * plain(z, y), logits, labels,
                                          factor)
                torch.testing.assert_close(fast, expected, **TOLERANCE[torch.float32])


def test_classification_frozen_path_is_finite_at_extreme_logits():
    """Logit gaps of thousands (every exp at T = 0.1 underflows) keep values and gradients
    finite and equal to the plain evaluation's in float64."""
    frozen, trainable = surrogates("cls", torch.float64)
    for classes in (10, 1000):
        logits = 3000 * torch.randn(8, classes, generator=torch.Generator().manual_seed(0),
                                    dtype=torch.float64)
        labels = torch.arange(8) % classes
        fast = value_and_grad(frozen, logits, labels, reduction="none")
        plain = value_and_grad(trainable, logits, labels, reduction="none")
        assert all(bool(torch.isfinite(t).all()) for t in fast)
        torch.testing.assert_close(fast, plain, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pose_custom_backward_equals_autograd(dtype):
    """PoseSurrogate.forward (features without gradient, a written-out backward) against the
    base class's features -> head -> reduction, differentiated by autograd."""
    surrogate = reloss.load_surrogate("pose").to(dtype)
    generator = torch.Generator().manual_seed(0)
    pred, target, visible = (t[0].to(dtype) for t in sample_pose(
        1, 6, 5, (16, 12), generator=generator))
    weight = visible * torch.rand(visible.shape, generator=generator, dtype=dtype)
    weight[1] = 0.0  # an instance without a visible keypoint
    target[0, 0] = 0.0  # a keypoint without a peak region
    for w in (None, weight):
        for reduction in ("none", "mean", "sum"):
            fast = value_and_grad(surrogate, pred, target, w, reduction=reduction)
            plain = value_and_grad(lambda p, *a, **k: Surrogate.forward(surrogate, p, *a, **k),
                                   pred, target, w, reduction=reduction)
            tolerance = dict(rtol=2e-5, atol=1e-8) if dtype == torch.float32 else dict(
                rtol=1e-9, atol=1e-14)  # head goes through exp(log(mse + eps)) - eps
            torch.testing.assert_close(fast, plain, **tolerance)


def test_relosscls_reduced_path_equals_the_general_one():
    """ReLossCls reduces inside the surrogate's autograd node when nothing weighs the samples;
    sample weights of 1 take the general path (per-sample values, then mmpretrain's reduction)."""
    pytest.importorskip("mmpretrain")
    from reloss.mmpretrain import ReLossCls

    generator = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(12, 10, generator=generator)
    labels = torch.randint(10, (12,), generator=generator)
    ones = torch.ones(12)
    for loss_weight in (1.0, 2.5):
        loss = ReLossCls(loss_weight=loss_weight)
        for avg_factor in (None, 12, 30):
            fast = value_and_grad(loss, logits, labels, avg_factor=avg_factor)
            general = value_and_grad(loss, logits, labels, weight=ones, avg_factor=avg_factor)
            torch.testing.assert_close(fast, general)


@pytest.mark.parametrize("device_check", ["finite", "within"])
def test_cheap_checks_refuse_exactly_what_the_element_wise_ones_do(device_check):
    check = DeferredCheck()
    if device_check == "finite":
        huge = torch.full((4, 3), torch.finfo(torch.float32).max)  # its sum overflows
        for fine in (torch.randn(4, 3), huge, -huge, torch.empty(0, 3)):
            check.finite(fine, "bad")
        for bad in (math.nan, math.inf, -math.inf):
            value = torch.randn(4, 3)
            value[2, 1] = bad
            with pytest.raises(ValueError, match="bad"):
                check.finite(value.requires_grad_(), "bad")
    else:
        for fine in (torch.tensor([0, 9, 3]), torch.zeros(0, dtype=torch.long)):
            check.within(fine, 0, 10, "bad")
        for bad in (torch.tensor([0, 10]), torch.tensor([-1, 3])):
            with pytest.raises(ValueError, match="bad"):
                check.within(bad, 0, 10, "bad")


def test_benchmark_loss_times_every_loss(capsys):
    pytest.importorskip("mmpretrain")
    from tools.benchmarks import loss as benchmark_loss

    record = benchmark_loss.main(["--task", "cls", "--repeats", "2", "--warmup", "0"])
    assert {(tuple(r["size"]), r["loss"]) for r in record} == {
        (size, loss) for size in ((128, 10), (128, 1000))
        for loss in ("cross-entropy", "CrossEntropyLoss (mmpretrain)", "ReLossCls", "surrogate",
                     "ReLossCls('cls-balanced', class_counts)")}
    assert all(r["ms"] > 0 for r in record)
    host = {tuple(r["size"]): r["ms"] for r in record if r["loss"] == benchmark_loss.HOST["cls"]}
    for r in record:
        assert r["host_ratio"] == pytest.approx(r["ms"] / host[tuple(r["size"])])
    assert "| cls, 128 x 10 logits | ReLossCls |" in capsys.readouterr().out


def test_saved_bytes_counts_what_autograd_keeps_but_not_the_inputs():
    from tools.benchmarks import loss as benchmark_loss

    logits = torch.randn(8, 100)
    labels = torch.randint(100, (8,))
    # cross_entropy keeps its log_softmax output (8 x 100 floats); a sum keeps nothing.
    held = benchmark_loss.saved_bytes(
        lambda z: torch.nn.functional.cross_entropy(z, labels), (logits,))
    assert held >= 8 * 100 * 4
    assert benchmark_loss.saved_bytes(lambda z: z.sum(), (logits,)) == 0
    # z * z saves z itself, the input: not counted.
    assert benchmark_loss.saved_bytes(lambda z: (z * z).sum(), (logits,)) == 0
