"""The class-aware classification surrogate: its frozen evaluation, soft labels, the class
frequencies it reads, how the shipped ones rank long-tailed chunks, and its bad input."""
import pytest
import torch

import reloss
from reloss import pretrain
from reloss.cli import pretrain as pretrain_cli
from reloss.metrics import chunk_balanced_accuracy, chunk_macro_f1
from reloss.spearman import spearman
from reloss.tasks.cls import chunk_priors, sample_long_tailed


def long_tailed_counts(classes, imbalance=100.0):
    return [imbalance ** (-c / (classes - 1)) for c in range(classes)]


@pytest.mark.parametrize("classes", [2, 10, 1000])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("given", [True, False])
def test_frozen_evaluation_matches_autograd(classes, reduction, given):
    frozen = reloss.load_surrogate("cls-balanced")
    plain = reloss.load_surrogate("cls-balanced", trainable=True).double()
    generator = torch.Generator().manual_seed(classes)
    logits = (3 * torch.randn(64, classes, generator=generator, dtype=torch.float64)
              ).requires_grad_()
    labels = torch.randint(max(classes - 1, 2), (64,), generator=generator)
    counts = long_tailed_counts(classes)
    if classes > 2:
        counts[-1] = 0  # a class without examples and without labels is allowed
    priors = reloss.class_priors(counts).double() if given else None
    a = frozen(logits, labels, reduction=reduction, priors=priors)
    b = plain(logits, labels, reduction=reduction, priors=priors)
    (grad_a,) = torch.autograd.grad(a.sum(), logits)
    (grad_b,) = torch.autograd.grad(b.sum(), logits)
    assert a.shape == b.shape
    # Frequencies given and shared: the frozen evaluation; read from the labels: autograd's.
    assert (type(a.grad_fn).__name__ == "_FrozenClassAwareBackward") == given
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(grad_a, grad_b, rtol=1e-6, atol=1e-9)


def test_soft_labels_weights_and_what_it_reads():
    surrogate = reloss.load_surrogate("cls-macro-f1")
    generator = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(16, 10, generator=generator), torch.randint(10, (16,))
    priors = reloss.class_priors(long_tailed_counts(10))
    hard = surrogate(logits, labels, priors=priors, reduction="none")
    one_hot = surrogate(logits, torch.nn.functional.one_hot(labels, 10).float(), priors=priors,
                        reduction="none")
    torch.testing.assert_close(hard, one_hot)
    # Mixup: the label-weighted mean of the two classes' values.
    other = (labels + 1) % 10
    mixed = 0.3 * torch.nn.functional.one_hot(labels, 10) + 0.7 * torch.nn.functional.one_hot(
        other, 10)
    torch.testing.assert_close(
        surrogate(logits, mixed, priors=priors, reduction="none"),
        0.3 * hard + 0.7 * surrogate(logits, other, priors=priors, reduction="none"))
    # Sample weights multiply each sample's value; 'mean' is over the samples with a non-zero
    # weight.
    weight = (torch.arange(16) % 3) * 0.75
    torch.testing.assert_close(surrogate(logits, labels, weight, priors=priors, reduction="none"),
                               hard * weight)
    torch.testing.assert_close(surrogate(logits, labels, weight, priors=priors),
                               (hard * weight).sum() / (weight != 0).sum())
    torch.testing.assert_close(surrogate(logits, mixed, weight, priors=priors, reduction="sum"),
                               (surrogate(logits, mixed, priors=priors, reduction="none")
                                * weight).sum())
    # A rarer label weighs more: the learned class weight falls with the frequency.
    same = torch.zeros(2, 10)
    values = surrogate(same, torch.tensor([0, 9]), priors=priors, reduction="none")
    assert values[1] > values[0] and 0 < float(surrogate.beta) < 1
    # Without priors it reads the batch's labels, smoothed.
    torch.testing.assert_close(surrogate(logits, labels),
                               surrogate(logits, labels, priors=chunk_priors(labels, 10)))


def test_pretraining_reads_each_chunks_frequencies():
    surrogate = reloss.ClassAwareSurrogate()
    logits, labels = sample_long_tailed(4, 32, 10, torch.Generator().manual_seed(0))
    inputs = surrogate.chunk_inputs(logits, labels)
    assert inputs["priors"].shape == (4, 32, 10)
    torch.testing.assert_close(inputs["priors"][:, 0], chunk_priors(labels, 10))
    data = pretrain.prepare(surrogate, reloss.get_task("cls"), logits, labels,
                            metric=chunk_balanced_accuracy)
    assert data["features"].shape == (4, 32, 1, len(surrogate.taus) + 1)
    # The frequency feature has no gradient: its rows of the Gram matrices are 0.
    assert float(data["gram"][..., -1, :].abs().max()) == 0


@pytest.mark.parametrize("name, metric", [("cls-balanced", chunk_balanced_accuracy),
                                          ("cls-macro-f1", chunk_macro_f1)])
def test_shipped_surrogates_rank_long_tailed_chunks_by_their_metric(name, metric):
    """On fresh long-tailed chunks (another seed than pretraining's), each ranks chunks by its
    metric better than cross-entropy and than the accuracy surrogate 'cls': by more than three
    standard errors of the difference (chunks resampled with replacement, the same draw for
    both)."""
    logits, labels = sample_long_tailed(600, 128, 10, torch.Generator().manual_seed(123))
    value = metric(logits, labels).double()
    aware, accuracy = reloss.load_surrogate(name), reloss.load_surrogate("cls")
    losses = {
        "aware": torch.stack([aware(z, y) for z, y in zip(logits, labels, strict=True)]),
        "cls": torch.stack([accuracy(z, y) for z, y in zip(logits, labels, strict=True)]),
        "ce": torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels,
                                                reduction="none").mean(-1)}
    rho = {key: float(spearman(-loss.double(), value)) for key, loss in losses.items()}
    draws = torch.randint(value.numel(), (500, value.numel()),
                          generator=torch.Generator().manual_seed(0))
    resampled = {key: spearman(-loss.double()[draws], value[draws])
                 for key, loss in losses.items()}
    for other in ("ce", "cls"):
        error = float((resampled["aware"] - resampled[other]).std())
        assert 0 < error < 0.02 and rho["aware"] - rho[other] > 3 * error, (other, rho, error)


def test_reloss_pretrain_learns_a_class_aware_surrogate(tmp_path):
    card = pretrain_cli.main([
        "--task", "cls", "--arch", "type=ClassAwareSurrogate", "--metric",
        "reloss.metrics:chunk_macro_f1", "--train-chunks", "200", "--steps", "20",
        "--eval-every", "10", "--out", str(tmp_path / "out")])
    assert card["architecture"]["type"] == "ClassAwareSurrogate"
    assert "sample_long_tailed" in card["data"][0]
    loaded = reloss.load_surrogate(str(tmp_path / "out" / "surrogate.pt"))
    assert isinstance(loaded, reloss.ClassAwareSurrogate)


@pytest.mark.parametrize("call, message", [
    (lambda s, z, y: s(z, y, priors=torch.ones(3) / 3), r"'priors' should be \(C,\) = \(5,\)"),
    (lambda s, z, y: s(z, y, priors=torch.tensor([0.5, 0.5, 0.0, 0.0, 0.0])),
     r"frequency 0 to class\(es\) \[2, 3, 4\]"),
    (lambda s, z, y: s(z, y, priors=torch.tensor([2.0, -1.0, 0.0, 0.0, 0.0])),
     r"'priors' should hold class frequencies in \[0, 1\]"),
    (lambda s, z, y: s(z, y, priors=[0.2] * 5), r"'priors' should be a torch.Tensor"),
    (lambda s, z, y: s(z.long(), y), r"'pred' should"),
])
def test_bad_input_names_the_argument(call, message):
    surrogate = reloss.load_surrogate("cls-balanced")
    logits, labels = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 4, 0])
    with pytest.raises((ValueError, TypeError), match=message):
        call(surrogate, logits, labels)


@pytest.mark.parametrize("counts, message", [
    ([1, 2, 3], "one count per class, 5"), ([1, -1, 2, 2, 2], "finite counts >= 0"),
    ([1, float("nan"), 2, 2, 2], "finite counts >= 0"), ([0, 0, 0, 0, 0], "not all 0"),
    ("abc", "sequence or 1-D tensor"), ([[1, 2]], "sequence or 1-D tensor"),
])
def test_class_counts_are_checked(counts, message):
    with pytest.raises(ValueError, match=f"'class_counts' should.*{message}"):
        reloss.class_priors(counts, 5)


def test_bad_architecture_arguments_are_named():
    for kwargs, name in ((dict(taus=(-1.0,)), "taus"), (dict(beta=1.5), "beta"),
                         (dict(smoothing=0), "smoothing")):
        with pytest.raises(ValueError, match=f"'{name}' should"):
            reloss.ClassAwareSurrogate(**kwargs)


def test_the_recipes_metric_file_is_worst_class_recall():
    """projects/long_tailed_digits/worst_recall.py, the metric of docs/own_metric.md's recipe,
    against scikit-learn's per-class recall."""
    import importlib.util
    import os

    from sklearn.metrics import recall_score

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "projects",
                        "long_tailed_digits", "worst_recall.py")
    spec = importlib.util.spec_from_file_location("worst_recall", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    logits, labels = sample_long_tailed(50, 64, 10, torch.Generator().manual_seed(5))
    values = module.worst_class_recall(logits, labels)
    for z, y, value in zip(logits, labels, values, strict=True):
        present = sorted(set(y.tolist()))
        expected = recall_score(y, z.argmax(-1), labels=present, average=None).min()
        assert float(value) == pytest.approx(expected)


def test_frozen_evaluation_under_autocast():
    """Under autocast (bf16 on the CPU) the frozen evaluation keeps its products in float32: the
    value and gradient of the bf16 logits upcast, without autocast."""
    surrogate = reloss.load_surrogate("cls-balanced")
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(32, 10, generator=generator).bfloat16().requires_grad_()
    labels = torch.randint(10, (32,), generator=generator)
    priors = reloss.class_priors(long_tailed_counts(10))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a = surrogate.frozen_mean(logits, labels, 2.0, priors)
    b = surrogate.frozen_mean(logits.float(), labels, 2.0, priors)
    assert a.dtype == torch.float32
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(*(torch.autograd.grad(v, logits)[0] for v in (a, b)))
