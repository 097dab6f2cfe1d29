"""Bad input at the public calls: ``reloss.load_surrogate``, the bare surrogates, ``ReLossCls``,
``ReLossPose`` and ``--criterion reloss_nat``. Each class of input gets a named error (the
argument, what was expected, what came) or is handled as the original loss handles it."""
import functools
import json
import math
import os
import shutil
from types import SimpleNamespace

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import reloss
from reloss import checkpoint

pytest.importorskip("mmpretrain")
pytest.importorskip("mmpose")
pytest.importorskip("fairseq")

from fairseq.criterions.nat_loss import LabelSmoothedDualImitationCriterion  # noqa: E402
from fairseq.data import Dictionary  # noqa: E402
from mmpose.models.losses import KeypointMSELoss  # noqa: E402

from reloss.fairseq import ReLossNATCriterion  # noqa: E402
from reloss.mmpose import ReLossPose  # noqa: E402
from reloss.mmpretrain import ReLossCls  # noqa: E402


class FixedOutputs(torch.nn.Module):
    """A stand-in NAT model: its training output is the given word-insertion logits."""

    def __init__(self, logits, targets, mask, label_smoothing=0.0):
        super().__init__()
        self.logits, self.targets, self.mask = logits, targets, mask
        self.label_smoothing = label_smoothing

    def forward(self, src_tokens, src_lengths, prev_output_tokens, tgt_tokens=None):
        return {"word_ins": {"out": self.logits, "tgt": self.targets, "mask": self.mask,
                             "ls": self.label_smoothing, "nll_loss": True}}


def nat_sample(targets):
    count = targets.shape[0]
    return {"net_input": {"src_tokens": targets, "src_lengths": torch.full((count,), 1)},
            "target": targets, "prev_target": targets, "ntokens": targets.numel(),
            "nsentences": count}


def nat_criterion(reloss_weight=1.0, ce_weight=0.0, label_smoothing=0.0, checkpoint="nat"):
    task = SimpleNamespace(target_dictionary=Dictionary())
    return ReLossNATCriterion(task, label_smoothing, checkpoint, reloss_weight, ce_weight)


def nat_loss(label_smoothing=0.0):
    return LabelSmoothedDualImitationCriterion(SimpleNamespace(target_dictionary=Dictionary()),
                                               label_smoothing)


def criterion_loss(criterion, logits, targets, mask, label_smoothing=0.0):
    model = FixedOutputs(logits, targets, mask, label_smoothing)
    return criterion(model, nat_sample(targets))


# Silent wrong values.

@pytest.mark.parametrize("call, message", [
    (lambda: ReLossPose(use_target_weight=True)(
        torch.rand(2, 3, 8, 6), torch.rand(2, 3, 8, 6), torch.tensor([[1.0, -1.0, 1.0]] * 2)),
     r"'target_weights' should hold finite values >= 0 but holds negative"),
    (lambda: ReLossPose(use_target_weight=True)(
        torch.rand(2, 3, 8, 6), torch.rand(2, 3, 8, 6), -torch.rand(2, 3, 8, 6)),
     r"'target_weights' should hold finite values >= 0"),
    (lambda: ReLossPose()(torch.rand(2, 3, 8, 6), torch.rand(2, 3, 8, 6),
                          mask=torch.full((2, 1, 8, 6), -1.0)),
     r"'mask' should hold finite values >= 0"),
    (lambda: reloss.load_surrogate("pose")(
        torch.rand(2, 3, 8, 6), torch.rand(2, 3, 8, 6), torch.tensor([[1.0, -1.0, 1.0]] * 2)),
     r"'weight' should hold finite keypoint weights >= 0"),
])
def test_negative_keypoint_weights_are_refused(call, message):
    """KeypointMSELoss would reward error on a keypoint of negative weight; mmpose's weights are
    visibilities in [0, 1], so a negative one is a mistake, named."""
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_soft_labels_are_refused(bad):
    label = torch.softmax(torch.randn(4, 10), -1)
    label[1, 3] = bad
    with pytest.raises(ValueError, match=r"'label' scores should be >= 0 with rows that sum to 1 "
                                         r".*holds NaN or Inf"):
        ReLossCls()(torch.randn(4, 10), label)


def test_nan_logits_at_padded_positions_change_nothing():
    """As masked cross-entropy and nat_loss: neither the loss nor the gradient of a valid
    position sees what a padded one holds, and padded positions get a zero gradient."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 20, generator=generator)
    targets = torch.randint(4, 20, (3, 7), generator=generator)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[0, 4:], mask[2, 1:] = False, False
    poisoned, garbage = logits.clone(), targets.clone()
    poisoned[~mask] = float("nan")
    poisoned[0, 5, 3] = float("inf")
    garbage[~mask] = -100  # an ignore index: never read at a padded position
    surrogate = reloss.load_surrogate("nat")
    for label_smoothing in (0.0, 0.1):
        values, grads = [], []
        for x, y in ((logits, targets), (poisoned, garbage)):
            x = x.clone().requires_grad_()
            loss = surrogate.training_terms(x, y, mask.float(), label_smoothing)[0]
            values.append(loss)
            grads.append(torch.autograd.grad(loss, x)[0])
        torch.testing.assert_close(values[1], values[0])
        torch.testing.assert_close(grads[1], grads[0])
        assert bool((grads[1][~mask] == 0).all())
    # Through the criterion, mixed with nat_loss's cross-entropy.
    losses = []
    for x, y in ((logits, targets), (poisoned, garbage)):
        x = x.clone().requires_grad_()
        loss, _, _ = criterion_loss(nat_criterion(ce_weight=0.5, label_smoothing=0.1), x, y,
                                    mask, 0.1)
        losses.append((loss, torch.autograd.grad(loss, x)[0]))
    torch.testing.assert_close(losses[1][0], losses[0][0])
    torch.testing.assert_close(losses[1][1], losses[0][1])


# Integrity.

def test_sha256_pin_is_checked_for_shipped_names_too():
    entry = checkpoint.shipped()["cls"]
    assert reloss.load_surrogate("cls", sha256=entry["sha256"].upper()).task == "cls"
    with pytest.raises(ValueError, match=r"cls.pt: sha256 [0-9a-f]{64} does not match 0{64} "
                                         r"recorded in the sha256 argument"):
        reloss.load_surrogate("cls", sha256="0" * 64)
    with pytest.raises(ValueError, match=r"'sha256' should be None or 64 hex digits but got 'abc'"):
        reloss.load_surrogate("cls", sha256="abc")


@pytest.mark.parametrize("card", [
    b"not json at all {",
    b"\xff\xfe\x00binary",
    json.dumps([1, 2, 3]).encode(),
    json.dumps({"checkpoint": "other.pt", "sha256": "0" * 64}).encode(),
    json.dumps({"name": "a config of someone else's"}).encode(),
], ids=["malformed", "binary", "list", "another-checkpoint", "unrelated"])
def test_a_json_beside_the_checkpoint_that_is_not_its_card_is_ignored(tmp_path, card):
    shutil.copy(os.path.join(checkpoint.CHECKPOINT_DIR, "cls.pt"), tmp_path / "mine.pt")
    (tmp_path / "mine.json").write_bytes(card)
    (tmp_path / "model_card.json").write_bytes(card)
    assert reloss.load_surrogate(str(tmp_path / "mine.pt")).task == "cls"


def test_a_card_of_the_checkpoint_without_a_sha256_is_refused(tmp_path):
    shutil.copy(os.path.join(checkpoint.CHECKPOINT_DIR, "cls.pt"), tmp_path / "mine.pt")
    (tmp_path / "mine.json").write_text(json.dumps({"checkpoint": "mine.pt", "sha256": None}))
    with pytest.raises(ValueError, match=r"mine.json: field 'sha256' of the model card of .*"
                                         r"mine.pt should be 64 hex digits but got None"):
        reloss.load_surrogate(str(tmp_path / "mine.pt"))


# Crashes and leniency.

@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_every_float_dtype_works(dtype):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 30, generator=generator).to(dtype).requires_grad_()
    targets = torch.randint(4, 30, (2, 6), generator=generator)
    value = reloss.load_surrogate("nat")(logits, targets)
    (grad,) = torch.autograd.grad(value, logits)
    assert torch.isfinite(value) and grad.dtype == dtype and bool(torch.isfinite(grad).all())
    loss, _, _ = criterion_loss(nat_criterion(), logits, targets, targets.ne(1))
    assert torch.isfinite(loss)
    heatmaps = torch.rand(2, 3, 8, 6, generator=generator).to(dtype).requires_grad_()
    value = reloss.load_surrogate("pose")(heatmaps, torch.rand(2, 3, 8, 6).to(dtype))
    (grad,) = torch.autograd.grad(value, heatmaps)
    assert torch.isfinite(value) and grad.dtype == dtype and bool(torch.isfinite(grad).all())


@pytest.mark.parametrize("build, message", [
    (lambda v: ReLossCls(loss_weight=v), r"'loss_weight' should be a finite number >= 0"),
    (lambda v: ReLossCls(ce_weight=v), r"'ce_weight' should be a finite number >= 0"),
    (lambda v: ReLossCls(label_smooth_val=v), r"'label_smooth_val' should be a finite number"),
    (lambda v: ReLossPose(loss_weight=v), r"'loss_weight' should be a finite number >= 0"),
    (lambda v: ReLossPose(mse_weight=v), r"'mse_weight' should be a finite number >= 0"),
    (lambda v: nat_criterion(reloss_weight=v), r"'--reloss-weight' should be a finite number"),
    (lambda v: nat_criterion(ce_weight=v), r"'--reloss-ce-weight' should be a finite number"),
])
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, -1.0, True, "1"])
def test_weights_must_be_finite_numbers_at_least_0(build, message, value):
    with pytest.raises(ValueError, match=message + f".* but got {value!r}".replace("(", r"\(")):
        build(value)


@pytest.mark.parametrize("call, message", [
    (lambda: ReLossCls()(torch.randn(3, 4), torch.tensor([True, False, True])),
     r"'label' should be \(N,\) integer class indices or \(N, C\) float scores but got a "
     r"torch.bool tensor"),
    (lambda: reloss.load_surrogate("cls")(torch.randn(3, 4), torch.tensor([True, False, True])),
     r"'target' should be \(N,\) integer class indices .* but got a torch.bool tensor"),
    (lambda: reloss.load_surrogate("nat")(torch.randn(1, 3, 8), torch.ones(1, 3, dtype=bool)),
     r"'target' should be integer token ids but got a torch.bool tensor"),
])
def test_bool_labels_are_refused(call, message):
    with pytest.raises(TypeError, match=message):
        call()


# Unclear errors made clear.

@pytest.mark.parametrize("value", [None, 3, 2.5, ["cls"], b"cls", {"name": "cls"}])
def test_checkpoint_must_be_a_name_or_a_path(value):
    kind = type(value).__name__
    with pytest.raises(TypeError, match=r"'name_or_path' should be a shipped surrogate name "
                                        r"\('cls', 'cls-balanced', 'cls-macro-f1', 'nat', 'pose', "
                                        r"'qa'\) or a checkpoint path "
                                        rf"\(str or os.PathLike\) but got {kind}"):
        reloss.load_surrogate(value)
    for build in (lambda: ReLossCls(checkpoint=value), lambda: ReLossPose(checkpoint=value),
                  lambda: nat_criterion(checkpoint=value)):
        with pytest.raises(TypeError, match=r"'checkpoint' should be a shipped surrogate name or "
                                            rf"a path \(str or os.PathLike\) but got {kind}"):
            build()


@pytest.mark.parametrize("call, message", [
    (lambda: ReLossCls()(torch.randn(3, 4, device="meta"),
                         torch.zeros(3, dtype=torch.long, device="meta")), "'cls_score'"),
    (lambda: ReLossCls()(torch.randn(3, 4), torch.zeros(3, dtype=torch.long, device="meta")),
     "'label'"),
    (lambda: ReLossPose()(torch.rand(2, 3, 4, 4, device="meta"), torch.rand(2, 3, 4, 4)),
     "'output'"),
    (lambda: criterion_loss(nat_criterion(), torch.randn(2, 3, 8, device="meta"),
                            torch.full((2, 3), 4), torch.ones(2, 3, dtype=torch.bool)),
     "'word_ins logits'"),
])
def test_meta_tensors_are_refused_by_name(call, message):
    with pytest.raises(ValueError, match=message + " should be a tensor with data .* on the meta "
                                                   "device"):
        call()


@pytest.mark.parametrize("size", [(0, 0), (0, 6), (8, 0)])
def test_empty_heatmaps_are_refused(size):
    with pytest.raises(ValueError, match=r"'output' should have [HW] >= 1 .* but got [HW]=0"):
        ReLossPose()(torch.rand(2, 3, *size), torch.rand(2, 3, *size))
    with pytest.raises(ValueError, match=r"'pred' should have [HW] >= 1 .* but got [HW]=0"):
        reloss.load_surrogate("pose")(torch.rand(2, 3, *size), torch.rand(2, 3, *size))


def test_one_class_is_refused_under_the_name_passed():
    with pytest.raises(ValueError, match=r"'cls_score' should have C >= 2 .* shape \(3, 1\)"):
        ReLossCls()(torch.randn(3, 1), torch.zeros(3, dtype=torch.long))


def test_a_vocabulary_of_one_is_refused():
    logits, targets = torch.randn(2, 3, 1), torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match=r"'pred' should have V >= 2 .* shape \(2, 3, 1\)"):
        reloss.load_surrogate("nat")(logits, targets)
    with pytest.raises(ValueError, match=r"the model's 'word_ins' logits should have V >= 2 "
                                         r"vocabulary entries \(B, T, V\) but got shape "
                                         r"\(2, 3, 1\)"):
        criterion_loss(nat_criterion(), logits, targets, torch.ones(2, 3, dtype=torch.bool))



# Properties, over shapes, dtypes, weights, label forms and masks: where the original loss
# (cross-entropy, KeypointMSELoss, nat_loss) is finite, ReLoss is finite (or a named error), of a
# sane size, and blind to what masked entries hold.

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
PROPERTY = settings(max_examples=30, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
# A loss this many times the original's (plus one) is a bug, not a learned weighting.
ABSURD = 1e3


def randn(shape, scale, dtype, generator):
    return (scale * torch.randn(shape, generator=generator, dtype=torch.float64)).to(dtype)


def finite(*tensors):
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def class_labels(form, count, classes, generator):
    """(labels for the surrogate, float64 probabilities for the reference cross-entropy)."""
    if form == "hard":
        labels = torch.randint(classes, (count,), generator=generator)
        return labels, torch.nn.functional.one_hot(labels, classes).double()
    if form == "soft":
        probabilities = torch.softmax(torch.randn(count, classes, generator=generator,
                                                  dtype=torch.float64), -1)
        return probabilities.float(), probabilities
    first, second = (torch.randint(classes, (count,), generator=generator) for _ in range(2))
    share = torch.rand(count, 1, generator=generator, dtype=torch.float64)
    onehot = torch.nn.functional.one_hot
    probabilities = share * onehot(first, classes) + (1 - share) * onehot(second, classes)
    return probabilities.float(), probabilities


def sample_weights(kind, shape, generator):
    """None, all ones, or values in [0, 1] with about a third exactly 0."""
    if kind == "none":
        return None
    if kind == "ones":
        return torch.ones(shape)
    weights = torch.rand(shape, generator=generator)
    return torch.where(torch.rand(shape, generator=generator) < 0.33, 0.0, weights)


def cross_entropy(logits, probabilities):
    """Per-sample cross-entropy in float64 (soft labels as mmpretrain's soft_cross_entropy)."""
    return -(probabilities * logits.double().log_softmax(-1)).sum(-1)


@PROPERTY
@given(count=st.integers(1, 6), classes=st.integers(2, 12), dtype=st.sampled_from(DTYPES),
       form=st.sampled_from(["hard", "soft", "mixup"]), scale=st.sampled_from([1e-3, 1.0, 30.0]),
       weighting=st.sampled_from(["none", "ones", "some zero"]), seed=st.integers(0, 2 ** 16))
def test_classification_surrogate_property(count, classes, dtype, form, scale, weighting, seed):
    generator = torch.Generator().manual_seed(seed)
    logits = randn((count, classes), scale, dtype, generator)
    labels, probabilities = class_labels(form, count, classes, generator)
    weight = sample_weights(weighting, (count,), generator)
    reference = cross_entropy(logits, probabilities)
    assert finite(reference)
    surrogate = reloss.load_surrogate("cls")
    logits.requires_grad_()
    values = surrogate(logits, labels, weight, reduction="none")
    (grad,) = torch.autograd.grad(values.sum(), logits)
    assert finite(values, grad)
    assert bool((values.double().abs() <= ABSURD * (1 + reference)).all()), (values, reference)
    assert_zero_weight_units_are_ignored(surrogate, logits, labels, weight, values, grad,
                                         generator)


def assert_zero_weight_units_are_ignored(surrogate, pred, target, weight, values, grad,
                                         generator):
    """Replacing the predictions of the units with weight 0 by huge values changes neither the
    summed loss nor the gradient at the other units."""
    if weight is None or not bool((weight == 0).any()):
        return
    masked = weight == 0
    changed = pred.detach().clone()
    changed[masked] = randn((int(masked.sum()), *pred.shape[masked.dim():]), 1e3, pred.dtype,
                            generator)
    changed.requires_grad_()
    again = surrogate(changed, target, weight, reduction="sum")
    (grad_again,) = torch.autograd.grad(again, changed)
    torch.testing.assert_close(again, values.sum())
    torch.testing.assert_close(grad_again[~masked], grad[~masked])


def heatmap_case(count, keypoints, height, width, dtype, generator):
    target = torch.rand(count, keypoints, height, width, generator=generator)
    target = torch.where(target > 0.8, target, 0.0)
    output = randn((count, keypoints, height, width), 0.5, dtype, generator)
    return output, target.to(dtype)


@PROPERTY
@given(count=st.integers(1, 3), keypoints=st.integers(1, 4), height=st.integers(1, 9),
       width=st.integers(1, 9), dtype=st.sampled_from(DTYPES),
       weighting=st.sampled_from(["none", "ones", "some zero"]), seed=st.integers(0, 2 ** 16))
def test_pose_surrogate_property(count, keypoints, height, width, dtype, weighting, seed):
    """Finite, and never above the largest per-keypoint MSE (the weights are at most 1 and the
    keypoints' shares sum to 1); masked keypoints change nothing."""
    generator = torch.Generator().manual_seed(seed)
    output, target = heatmap_case(count, keypoints, height, width, dtype, generator)
    weight = sample_weights(weighting, (count, keypoints), generator)
    per_keypoint = (output.double() - target.double()).square().flatten(2).mean(-1)
    surrogate = reloss.load_surrogate("pose")
    output.requires_grad_()
    values = surrogate(output, target, weight, reduction="none")
    (grad,) = torch.autograd.grad(values.sum(), output)
    assert finite(values, grad)
    counted = per_keypoint if weight is None else torch.where(weight > 0, per_keypoint, 0.0)
    bound = counted.amax(-1) * (1 + 1e-3) + 1e-6
    assert bool((values.double() <= bound).all() & (values >= 0).all()), (values, bound)
    assert_zero_weight_units_are_ignored(surrogate, output, target, weight, values, grad,
                                         generator)


def sequence_case(count, length, vocabulary, dtype, scale, generator):
    logits = randn((count, length, vocabulary), scale, dtype, generator)
    targets = torch.randint(vocabulary, (count, length), generator=generator)
    mask = torch.rand(count, length, generator=generator) < 0.7
    return logits, targets, mask


def poisoned(logits, targets, mask, generator):
    """The same case with NaN, Inf and huge logits and out-of-range ids at masked positions."""
    logits, targets = logits.detach().clone(), targets.clone()
    fill = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e4], dtype=torch.float64)
    choice = torch.randint(4, logits.shape, generator=generator)
    logits = torch.where(mask.unsqueeze(-1), logits, fill[choice].to(logits.dtype))
    targets = torch.where(mask, targets, torch.randint(-100, 0, targets.shape,
                                                       generator=generator))
    return logits, targets


def masked_nll(logits, targets, mask):
    """Token NLL in float64 over the masked-in positions (0 where there are none)."""
    nll = -logits[mask].double().log_softmax(-1).gather(-1, targets[mask].unsqueeze(-1))
    return nll.mean() if nll.numel() else torch.zeros((), dtype=torch.float64)


@PROPERTY
@given(count=st.integers(1, 3), length=st.integers(1, 6), vocabulary=st.integers(2, 12),
       dtype=st.sampled_from(DTYPES), scale=st.sampled_from([1e-3, 1.0, 30.0]),
       label_smoothing=st.sampled_from([0.0, 0.1]), seed=st.integers(0, 2 ** 16))
def test_sequence_surrogate_property(count, length, vocabulary, dtype, scale, label_smoothing,
                                     seed):
    """Finite; unsmoothed, between the token NLL and the NLL plus the n-gram weights' sum (each
    bag distance is in [0, 1]); blind to masked positions, NaN included."""
    generator = torch.Generator().manual_seed(seed)
    logits, targets, mask = sequence_case(count, length, vocabulary, dtype, scale, generator)
    surrogate = reloss.load_surrogate("nat")
    results = []
    for x, y in ((logits, targets), poisoned(logits, targets, mask, generator)):
        x = x.clone().requires_grad_()
        loss, value, _ = surrogate.training_terms(x, y, mask.float(), label_smoothing)
        results.append((loss, value, torch.autograd.grad(loss, x)[0]))
    (loss, value, grad), (loss_poisoned, _, grad_poisoned) = results
    assert finite(loss, grad)
    torch.testing.assert_close(loss_poisoned, loss)
    torch.testing.assert_close(grad_poisoned, grad)
    assert bool((grad[~mask] == 0).all())
    nll = float(masked_nll(logits, targets, mask))
    ceiling = nll + float(surrogate.ngram_weights.sum()) * bool(mask.any())
    assert nll * (1 - 1e-3) - 1e-5 <= float(value) <= ceiling * (1 + 1e-3) + 1e-5


@functools.lru_cache(maxsize=None)
def relosscls(loss_weight, ce_weight):
    return ReLossCls(loss_weight=loss_weight, ce_weight=ce_weight)


@PROPERTY
@given(count=st.integers(1, 6), classes=st.integers(2, 12), dtype=st.sampled_from(DTYPES),
       form=st.sampled_from(["hard", "soft", "mixup"]), scale=st.sampled_from([1e-3, 1.0, 30.0]),
       weighting=st.sampled_from(["none", "some zero"]),
       reduction=st.sampled_from(["mean", "sum", "none"]), avg_factor=st.booleans(),
       loss_weight=st.sampled_from([0.5, 2.0]), seed=st.integers(0, 2 ** 16))
def test_relosscls_property(count, classes, dtype, form, scale, weighting, reduction,
                            avg_factor, loss_weight, seed):
    """Finite where mmpretrain's CrossEntropyLoss is; loss_weight scales the whole loss; the
    ce_weight term is CrossEntropyLoss itself, reduced the same way."""
    from mmpretrain.models.losses import CrossEntropyLoss

    generator = torch.Generator().manual_seed(seed)
    logits = randn((count, classes), scale, dtype, generator)
    labels, _ = class_labels(form, count, classes, generator)
    weight = sample_weights(weighting, (count,), generator)
    if avg_factor and reduction == "sum":
        reduction = "mean"  # mmpretrain refuses avg_factor with 'sum'
    call = dict(weight=weight, avg_factor=count if avg_factor else None,
                reduction_override=reduction)
    original = CrossEntropyLoss(use_soft=form != "hard")(logits.float(), labels, **call)
    assert finite(original)
    logits.requires_grad_()
    alone = relosscls(1.0, 0.0)(logits, labels, **call)
    (grad,) = torch.autograd.grad(alone.sum(), logits)
    assert finite(alone, grad) and alone.dtype == torch.float32
    assert bool((alone.abs() <= ABSURD * (1 + original.abs())).all())
    scaled = relosscls(loss_weight, 1.0)(logits, labels, **call)
    mixed = relosscls(1.0, 1.0)(logits, labels, **call)
    torch.testing.assert_close(scaled, loss_weight * mixed)
    torch.testing.assert_close(mixed - alone, original, rtol=1e-4, atol=1e-5)
    if weighting == "none":
        bad = logits.detach().clone()
        bad[0, 0] = float("nan")
        with pytest.raises(ValueError, match="'cls_score' should hold only finite values"):
            relosscls(1.0, 0.0)(bad, labels, **call)


@functools.lru_cache(maxsize=None)
def relosspose(loss_weight, mse_weight, skip_empty_channel):
    return ReLossPose(use_target_weight=True, loss_weight=loss_weight, mse_weight=mse_weight,
                      skip_empty_channel=skip_empty_channel)


@PROPERTY
@given(count=st.integers(1, 3), keypoints=st.integers(1, 4), height=st.integers(1, 9),
       width=st.integers(1, 9), dtype=st.sampled_from(DTYPES),
       weighting=st.sampled_from(["keypoint", "pixel", "keypoint and mask"]),
       skip_empty_channel=st.booleans(), loss_weight=st.sampled_from([0.5, 2.0]),
       seed=st.integers(0, 2 ** 16))
def test_relosspose_property(count, keypoints, height, width, dtype, weighting,
                              skip_empty_channel, loss_weight, seed):
    """Finite where mmpose's KeypointMSELoss is; loss_weight scales the whole loss; the
    mse_weight term is KeypointMSELoss itself; heatmaps of weight-0 keypoints change nothing."""
    generator = torch.Generator().manual_seed(seed)
    output, target = heatmap_case(count, keypoints, height, width, dtype, generator)
    weights = sample_weights("some zero", (count, keypoints), generator)
    mask = None
    if weighting == "pixel":
        weights = (weights[..., None, None] * torch.ones(height, width)).contiguous()
    elif weighting == "keypoint and mask":
        mask = torch.rand(count, 1, height, width, generator=generator) < 0.8
    original = KeypointMSELoss(True, skip_empty_channel)(output.float(), target.float(),
                                                         weights, mask)
    assert finite(original)
    output.requires_grad_()
    alone = relosspose(1.0, 0.0, skip_empty_channel)(output, target, weights, mask)
    (grad,) = torch.autograd.grad(alone, output)
    assert finite(alone, grad) and alone.dtype == torch.float32
    assert float(alone.detach().abs()) <= ABSURD * (1 + float(original))
    scaled = relosspose(loss_weight, 1.0, skip_empty_channel)(output, target, weights, mask)
    mixed = relosspose(1.0, 1.0, skip_empty_channel)(output, target, weights, mask)
    torch.testing.assert_close(scaled, loss_weight * mixed)
    torch.testing.assert_close(mixed - alone, original, rtol=1e-4, atol=1e-6)
    if weighting == "keypoint" and bool((weights == 0).any()):
        masked = weights == 0
        changed = output.detach().clone()
        changed[masked] = randn((int(masked.sum()), height, width), 1e3, dtype, generator)
        changed.requires_grad_()
        again = relosspose(1.0, 0.0, skip_empty_channel)(changed, target, weights)
        (grad_again,) = torch.autograd.grad(again, changed)
        torch.testing.assert_close(again, alone)
        torch.testing.assert_close(grad_again[~masked], grad[~masked])
        changed = changed.detach()
        changed[masked] = float("nan")  # a diverged model: refused, by name
        with pytest.raises(ValueError, match="'output' should hold only finite values"):
            relosspose(1.0, 0.0, skip_empty_channel)(changed, target, weights)


@functools.lru_cache(maxsize=None)
def reloss_nat(reloss_weight, ce_weight, label_smoothing):
    return nat_criterion(reloss_weight, ce_weight, label_smoothing)


@PROPERTY
@given(count=st.integers(1, 3), length=st.integers(1, 6), vocabulary=st.integers(2, 12),
       dtype=st.sampled_from(DTYPES), scale=st.sampled_from([1e-3, 1.0, 30.0]),
       label_smoothing=st.sampled_from([0.0, 0.1]), loss_weight=st.sampled_from([0.5, 2.0]),
       seed=st.integers(0, 2 ** 16))
def test_reloss_nat_property(count, length, vocabulary, dtype, scale, label_smoothing,
                             loss_weight, seed):
    """Finite where nat_loss is; --reloss-weight scales the whole word-insertion loss; the
    --reloss-ce-weight term is nat_loss's; masked positions (NaN included) change nothing."""
    generator = torch.Generator().manual_seed(seed)
    logits, targets, mask = sequence_case(count, length, vocabulary, dtype, scale, generator)
    original, _, their_logged = criterion_loss(nat_loss(label_smoothing), logits, targets, mask,
                                               label_smoothing)
    assert finite(original)
    results = []
    for x, y in ((logits, targets), poisoned(logits, targets, mask, generator)):
        x = x.clone().requires_grad_()
        loss, _, logged = criterion_loss(reloss_nat(1.0, 1.0, label_smoothing), x, y, mask,
                                         label_smoothing)
        results.append((loss, logged, torch.autograd.grad(loss, x)[0]))
    (mixed, logged, grad), (mixed_poisoned, _, grad_poisoned) = results
    assert finite(mixed, grad) and mixed.dtype == torch.promote_types(dtype, torch.float32)
    torch.testing.assert_close(mixed_poisoned, mixed)
    torch.testing.assert_close(grad_poisoned, grad)
    _, _, logged_alone = criterion_loss(reloss_nat(1.0, 0.0, label_smoothing), logits, targets,
                                        mask, label_smoothing)
    _, _, logged_scaled = criterion_loss(reloss_nat(loss_weight, 1.0, label_smoothing), logits,
                                         targets, mask, label_smoothing)
    assert logged_scaled["word_ins-loss"] == pytest.approx(loss_weight * logged["word_ins-loss"],
                                                           rel=1e-5, abs=1e-6)
    assert logged["word_ins-loss"] == pytest.approx(
        logged_alone["word_ins-loss"] + their_logged["word_ins-loss"], rel=1e-4, abs=1e-5)
    # The logged NLL is nat_loss's, read in float32 from half-precision logits.
    assert float(logged["nll_loss"]) == pytest.approx(float(masked_nll(logits, targets, mask)),
                                                      rel=1e-4, abs=1e-5)
