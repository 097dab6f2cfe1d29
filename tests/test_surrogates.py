import pytest
import torch
from torch.autograd import gradcheck

import reloss
from reloss.checkpoint import save_surrogate
from reloss.surrogate import Surrogate
from reloss.tasks.cls import ClassificationSurrogate
from reloss.tasks.nat import (
    PAD,
    SequenceSurrogate,
    TokenSequenceSurrogate,
    bag_of_ngrams_distance,
)
from reloss.tasks.pose import PoseSurrogate, gaussian_heatmaps


def seeded(seed):
    return torch.Generator().manual_seed(seed)


def fresh(cls):
    torch.manual_seed(0)
    return cls()


def classification_batch(count=12, classes=10, seed=0):
    """Logits (N, C), labels (N,) and sample weights (N,) with one zero."""
    generator = seeded(seed)
    logits = 2 * torch.randn(count, classes, generator=generator)
    labels = torch.randint(classes, (count,), generator=generator)
    weight = torch.rand(count, generator=generator) + 0.5
    weight[3] = 0.0
    return logits, labels, weight


def pose_batch(count=5, keypoints=4, size=(16, 12), seed=0):
    """Heatmaps, target heatmaps (N, K, H, W) and keypoint weights (N, K): some zeros, and
    instance 1 with none visible."""
    generator = seeded(seed)
    height, width = size
    extent = torch.tensor([width - 1, height - 1], dtype=torch.float32)
    centers = torch.rand(count, keypoints, 2, generator=generator) * extent
    target = gaussian_heatmaps(centers, size, 2.0)
    shifted = centers + 2 * torch.randn(count, keypoints, 2, generator=generator)
    pred = gaussian_heatmaps(shifted, size, 2.0, 0.8)
    pred = pred + 0.05 * torch.randn(pred.shape, generator=generator)
    weight = (torch.rand(count, keypoints, generator=generator) < 0.7).float()
    weight[0] = torch.tensor([1.0, 0.0, 1.0, 1.0])[:keypoints]
    weight[1] = 0.0
    target = target * (weight > 0)[..., None, None]
    return pred, target, weight


def sequence_batch(count=4, length=7, vocab=30, seed=0):
    """Logits (N, T, V), targets (N, T) right-padded with PAD and weights (N, T) (0 at pads);
    sentence 2 is all padding."""
    generator = seeded(seed)
    logits = 2 * torch.randn(count, length, vocab, generator=generator)
    lengths = torch.tensor([length, 3, 0, 5, 6, 2, 1, 4])[:count]
    weight = (torch.arange(length) < lengths[:, None]).float()
    target = torch.randint(4, vocab, (count, length), generator=generator)
    target = target.masked_fill(weight == 0, PAD)
    return logits, target, weight


TASKS = {
    "cls": (ClassificationSurrogate, classification_batch),
    "pose": (PoseSurrogate, pose_batch),
    "nat": (SequenceSurrogate, sequence_batch),
    "nat-token": (TokenSequenceSurrogate, sequence_batch),
}


def counted(task, weight):
    """Which samples have any non-zero unit weight."""
    return weight != 0 if task == "cls" else (weight != 0).any(-1)


@pytest.mark.parametrize("task", list(TASKS))
def test_reductions(task):
    cls, batch = TASKS[task]
    surrogate = fresh(cls)
    pred, target, weight = batch()
    values = surrogate(pred, target, weight, reduction="none")
    assert values.shape == (pred.shape[0],)
    assert bool(torch.isfinite(values).all())
    torch.testing.assert_close(surrogate(pred, target, weight, reduction="sum"), values.sum())
    kept = counted(task, weight)
    assert 0 < int(kept.sum()) < pred.shape[0]  # some sample is left out of the mean
    torch.testing.assert_close(values[~kept], torch.zeros(int((~kept).sum())))
    mean = surrogate(pred, target, weight, reduction="mean")
    if task.startswith("nat"):  # a mean over tokens: each sentence weighs its number of positions
        tokens = weight.sum(-1)
        torch.testing.assert_close(mean, (values * tokens).sum() / tokens.sum())
    else:
        torch.testing.assert_close(mean, values[kept].mean())
    torch.testing.assert_close(surrogate(pred, target, weight), mean)  # 'mean' is the default

    permutation = torch.randperm(pred.shape[0], generator=seeded(1))
    permuted = surrogate(pred[permutation], target[permutation], weight[permutation],
                         reduction="none")
    torch.testing.assert_close(permuted, values[permutation])
    torch.testing.assert_close(
        surrogate(pred[permutation], target[permutation], weight[permutation]), mean)


# Classification.

def one_hot(labels, classes):
    return torch.nn.functional.one_hot(labels, classes).float()


@pytest.mark.parametrize("classes", [2, 10, 1000])
def test_classification_hard_labels_equal_one_hot(classes):
    surrogate = fresh(ClassificationSurrogate)
    logits, labels, weight = classification_batch(classes=classes)
    values = surrogate(logits, labels, reduction="none")
    assert values.shape == (logits.shape[0],) and bool(torch.isfinite(values).all())
    torch.testing.assert_close(surrogate(logits, one_hot(labels, classes), reduction="none"),
                               values)
    torch.testing.assert_close(surrogate(logits, one_hot(labels, classes), weight),
                               surrogate(logits, labels, weight))


@pytest.mark.parametrize("classes", [2, 10, 1000])
def test_classification_mixup_is_the_label_weighted_average(classes):
    surrogate = fresh(ClassificationSurrogate)
    logits, first, _ = classification_batch(classes=classes)
    generator = seeded(2)
    second = (first + torch.randint(1, classes, first.shape, generator=generator)) % classes
    lam = 0.1 + 0.8 * torch.rand(first.shape, generator=generator)
    mixed = lam[:, None] * one_hot(first, classes) + (1 - lam[:, None]) * one_hot(second, classes)
    values = surrogate(logits, mixed, reduction="none")
    expected = (lam * surrogate(logits, first, reduction="none")
                + (1 - lam) * surrogate(logits, second, reduction="none"))
    torch.testing.assert_close(values, expected)
    # Not trivially so: the two labels' values differ.
    difference = (surrogate(logits, first, reduction="none")
                  - surrogate(logits, second, reduction="none"))
    assert float(difference.detach().abs().max()) > 1e-3


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_classification_low_precision_logits(dtype):
    surrogate = fresh(ClassificationSurrogate)
    logits, labels, _ = classification_batch()
    reference = surrogate(logits, labels, reduction="none")
    low = logits.to(dtype).requires_grad_()
    values = surrogate(low, labels, reduction="none")
    assert bool(torch.isfinite(values).all())
    # bfloat16 keeps 8 significant bits of each logit: relative agreement is all there can be.
    torch.testing.assert_close(values.float(), reference, atol=5e-3, rtol=1e-2)
    values.sum().backward()
    assert low.grad.dtype == dtype and bool(torch.isfinite(low.grad).all())
    assert float(low.grad.float().abs().sum()) > 0
    soft = surrogate(low.detach(), one_hot(labels, 10).to(dtype), reduction="none")
    torch.testing.assert_close(soft, values.detach())


# Pose.

def test_pose_is_size_free():
    surrogate = fresh(PoseSurrogate)
    outputs = []
    for size in ((64, 48), (96, 72)):
        scale = size[0] / 64
        # Even pixel positions at 64x48 stay on the pixel grid at 96x72.
        centers = torch.tensor([[[10.0, 20.0], [30.0, 40.0], [24.0, 12.0]]]) * scale
        target = gaussian_heatmaps(centers, size, 2 * scale)
        pred = gaussian_heatmaps(centers + 4 * scale, size, 2 * scale, 0.8)
        features, _ = surrogate.features(pred, target)
        values = surrogate(pred, target, reduction="none")
        assert values.shape == (1,) and bool(torch.isfinite(values).all())
        outputs.append((features, values))
    # The same picture at two resolutions reads (nearly) the same features and value.
    (small, small_value), (large, large_value) = outputs
    torch.testing.assert_close(large[..., 0], small[..., 0], atol=1e-2, rtol=0)
    torch.testing.assert_close(large[..., 1:], small[..., 1:], atol=0.05, rtol=0)
    torch.testing.assert_close(large_value, small_value, atol=0.02, rtol=0)


def test_pose_ignores_keypoints_with_zero_weight():
    surrogate = fresh(PoseSurrogate)
    pred, target, weight = pose_batch()
    values = surrogate(pred, target, weight, reduction="none")
    hidden = (weight == 0)[..., None, None]
    noise = torch.rand(pred.shape, generator=seeded(3))
    changed = surrogate(torch.where(hidden, noise, pred), torch.where(hidden, noise, target),
                        weight, reduction="none")
    torch.testing.assert_close(changed, values)
    # An instance without a visible keypoint is worth 0, whatever its heatmaps.
    assert float(values[1].detach()) == 0.0 and float(changed[1].detach()) == 0.0
    # Control: changing a visible keypoint's heatmap does change its instance's value.
    visible = torch.zeros_like(hidden)
    visible[0, 0] = True
    moved = surrogate(torch.where(visible, noise, pred), target, weight, reduction="none")
    assert float((moved[0] - values[0]).detach().abs()) > 1e-4
    torch.testing.assert_close(moved[1:], values[1:])


def test_pose_mean_excludes_an_instance_without_weights():
    surrogate = fresh(PoseSurrogate)
    pred, target, weight = pose_batch()
    values = surrogate(pred, target, weight, reduction="none")
    mean = surrogate(pred, target, weight)
    keep = torch.arange(pred.shape[0]) != 1
    torch.testing.assert_close(mean, values[keep].mean())
    torch.testing.assert_close(mean, surrogate(pred[keep], target[keep], weight[keep]))


def test_pose_feature_gram_closed_form_equals_autograd():
    surrogate = fresh(PoseSurrogate)
    pred, target, weight = pose_batch(count=4, size=(12, 10), seed=4)
    target[0, 1] = 0.0  # no peak region: the 'inside' feature is constant
    target[2, 3] = 1.0  # peak region everywhere: the 'outside' feature is constant
    features, weights, gram = surrogate.feature_gram(pred, target, weight)
    auto_features, auto_weights, auto_gram = Surrogate.feature_gram(surrogate, pred, target,
                                                                     weight)
    assert gram.shape == (4, 4, 4, 4)
    torch.testing.assert_close(features, auto_features)
    torch.testing.assert_close(weights, auto_weights)
    scale = auto_gram.abs().amax((-1, -2), keepdim=True)
    torch.testing.assert_close(gram / scale, auto_gram / scale, atol=1e-4, rtol=1e-4)
    assert float(gram[0, 1, 2, 2]) == 0.0 and float(gram[2, 3, 3, 3]) == 0.0
    assert float(gram[0, 0, 2, 2]) == 1.0 and float(gram[0, 0, 3, 3]) == 1.0


def region_weighted_mse(surrogate, pred, target, weight):
    """The pose surrogate's loss written out with plain autograd, its region weights held fixed."""
    features, _ = surrogate.features(pred.detach(), target, weight)
    region_weights = surrogate.region_weights(features).detach()
    peak = target.flatten(-2).amax(-1)[..., None, None]
    near = (target > surrogate.region * peak.clamp_min(1e-6)).to(pred.dtype)
    squared = (pred - target).square()
    pixels = pred.shape[-1] * pred.shape[-2]
    per_keypoint = (region_weights[..., 0] * (squared * near).sum((-1, -2))
                    + region_weights[..., 1] * (squared * (1 - near)).sum((-1, -2))) / pixels
    per_instance = (per_keypoint * weight).sum(-1) / weight.sum(-1).clamp_min(1e-12)
    counted = weight.sum(-1) > 0
    return per_instance[counted].mean()


def test_pose_gradient_is_mse_reweighted_by_region():
    """Value and gradient equal those of the squared error weighted per keypoint and region with
    the weights held fixed: the weights are computed without gradient, so they cannot be gamed."""
    surrogate = fresh(PoseSurrogate).double()
    pred, target, weight = (t.double() for t in pose_batch(count=4, size=(10, 8), seed=7))
    pred = pred.requires_grad_()
    value = surrogate(pred, target, weight)
    (grad,) = torch.autograd.grad(value, pred)
    reference = region_weighted_mse(surrogate, pred, target, weight)
    (expected,) = torch.autograd.grad(reference, pred)
    torch.testing.assert_close(value, reference)
    torch.testing.assert_close(grad, expected)
    # Both region weights are positive, so each keypoint's gradient points MSE's way.
    mse_grad = (pred - target).detach() * (weight > 0)[..., None, None]
    cosine = torch.nn.functional.cosine_similarity(grad.flatten(2), mse_grad.flatten(2), dim=-1)
    assert bool((cosine[weight > 0] > 0).all())


def test_pose_target_is_the_minimum():
    surrogate = fresh(PoseSurrogate)
    pred, target, weight = pose_batch()
    assert float(surrogate(target, target, weight)) == 0.0
    assert float(surrogate(pred, target, weight)) > 0.0


# Sequence.

@pytest.mark.parametrize("form", [SequenceSurrogate, TokenSequenceSurrogate])
def test_sequence_ignores_the_logits_at_padding(form):
    surrogate = fresh(form)
    logits, target, weight = sequence_batch()
    values = surrogate(logits, target, weight, reduction="none")
    padding = (weight == 0)[..., None]
    noise = 5 * torch.randn(logits.shape, generator=seeded(5))
    changed = surrogate(torch.where(padding, noise, logits), target, weight, reduction="none")
    torch.testing.assert_close(changed, values)
    # Control: the logits of a real position do count.
    real = torch.zeros_like(padding)
    real[1, 0] = True
    moved = surrogate(torch.where(real, noise, logits), target, weight, reduction="none")
    assert float((moved[1] - values[1]).detach().abs()) > 1e-5


@pytest.mark.parametrize("form", [SequenceSurrogate, TokenSequenceSurrogate])
def test_sequence_ignores_the_target_ids_at_padding(form):
    surrogate = fresh(form)
    logits, target, weight = sequence_batch()
    values = surrogate(logits, target, weight, reduction="none")
    other = torch.randint(4, logits.shape[-1], target.shape, generator=seeded(6))
    changed = surrogate(logits, torch.where(weight == 0, other, target), weight,
                        reduction="none")
    torch.testing.assert_close(changed, values)


def test_sequence_gradcheck():
    """The free form (every feature's gradient reaches the logits); the reweighted form's gate
    takes no gradient by design (next test)."""
    torch.manual_seed(0)
    surrogate = TokenSequenceSurrogate(reweight=False).double()
    logits, target, weight = sequence_batch(length=5, vocab=9)
    logits = logits.double().requires_grad_()
    assert gradcheck(lambda x: surrogate(x, target, weight.double()), (logits,))


def test_sequence_reweighted_gradient_points_as_cross_entropy():
    """Per position, the gradient is token cross-entropy's times a positive weight."""
    surrogate = fresh(TokenSequenceSurrogate)
    logits, target, weight = sequence_batch()
    logits = logits.requires_grad_()
    (ours,) = torch.autograd.grad(surrogate(logits, target, weight, reduction="sum"), logits)
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none")
    (theirs,) = torch.autograd.grad((nll * weight).sum(), logits)
    present = weight > 0
    cosine = torch.nn.functional.cosine_similarity(ours[present], theirs[present], dim=-1)
    torch.testing.assert_close(cosine, torch.ones_like(cosine))
    assert float(ours[~present].abs().max()) == 0.0


def test_sequence_without_extra_weight_is_token_cross_entropy():
    surrogate = TokenSequenceSurrogate(spread=0.0)
    logits, target, weight = sequence_batch()
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none")
    torch.testing.assert_close(surrogate(logits, target, weight), (nll * weight).sum()
                               / weight.sum())


def test_sequence_training_terms_label_smoothing_is_fairseqs():
    """Without extra weight the surrogate is token NLL, so with label smoothing its loss is
    fairseq's label-smoothed NLL (nat_loss), value and gradient; the NLL is the exact one."""
    surrogate = TokenSequenceSurrogate(spread=0.0).double()
    logits, target, weight = sequence_batch(length=5, vocab=9)
    logits = logits.double().requires_grad_()
    loss, value, nll = surrogate.training_terms(logits, target, weight.double(), 0.1)
    log_p = logits.log_softmax(-1)
    present = weight > 0
    expected_nll = -log_p.gather(-1, target.unsqueeze(-1)).squeeze(-1)[present].mean()
    expected = 0.9 * expected_nll - 0.1 * log_p[present].mean()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(nll, expected_nll.detach())
    torch.testing.assert_close(value, expected_nll.detach())
    assert not value.requires_grad and not nll.requires_grad
    torch.testing.assert_close(torch.autograd.grad(loss, logits)[0],
                               torch.autograd.grad(expected, logits)[0])
    assert gradcheck(lambda x: surrogate.training_terms(x, target, weight.double(), 0.3)[0],
                     (logits,))
    for bad in (1.0, -0.1, True, "0.1"):
        with pytest.raises(ValueError, match="'label_smoothing' should be in \\[0, 1\\)"):
            surrogate.training_terms(logits, target, weight, bad)


@pytest.mark.parametrize("form", [SequenceSurrogate, TokenSequenceSurrogate])
def test_sequence_does_not_depend_on_unused_vocabulary(form):
    surrogate = fresh(form)
    logits, target, weight = sequence_batch()
    values = surrogate(logits, target, weight, reduction="none")
    extra = torch.full(logits.shape[:2] + (50,), -1e4)
    wider = surrogate(torch.cat((logits, extra), -1), target, weight, reduction="none")
    torch.testing.assert_close(wider, values, atol=1e-5, rtol=0)


# Errors.

def bad(cls, *args, **kwargs):
    return lambda: fresh(cls)(*args, **kwargs)


BAD_INPUTS = [
    (bad(ClassificationSurrogate, torch.randn(4, 5), torch.zeros(4, 6)), ValueError,
     r"'target' should be \(N,\) = \(4,\) class indices or \(N, C\) = \(4, 5\) soft labels but "
     r"got torch.float32 \(4, 6\)"),
    (bad(ClassificationSurrogate, torch.randn(4, 5), torch.zeros(3, dtype=torch.long)),
     ValueError, r"'target' should be \(N,\) = \(4,\)"),
    (bad(ClassificationSurrogate, torch.randn(4, 5), torch.zeros(4)), ValueError,
     r"'target' should be .* but got torch.float32 \(4,\)"),
    (bad(ClassificationSurrogate, torch.randn(5), torch.zeros(5, dtype=torch.long)), ValueError,
     r"'pred' should be a 2-D \(N, C\) logits tensor but got shape \(5,\)"),
    (bad(ClassificationSurrogate, torch.randn(4, 5), torch.zeros(4, dtype=torch.long),
         reduction="avg"), ValueError,
     r"'reduction' should be one of 'mean', 'sum', 'none' but got 'avg'"),
    (bad(PoseSurrogate, torch.rand(2, 3, 8, 6), torch.rand(2, 3, 8, 6), torch.ones(2, 4)),
     ValueError, r"'weight' should be \(N, K\) = \(2, 3\) keypoint weights but got \(2, 4\)"),
    (bad(PoseSurrogate, torch.rand(2, 3, 8, 6), torch.rand(2, 3, 8, 6), torch.ones(6)),
     ValueError, r"'weight' should be \(N, K\)"),
    (bad(PoseSurrogate, torch.rand(2, 3, 8, 6), torch.rand(2, 3, 6, 8)), ValueError,
     r"'target' should have the shape of 'pred'"),
    (bad(PoseSurrogate, torch.rand(2, 3, 8, 6), torch.rand(2, 3, 8, 6), reduction=None),
     ValueError, r"'reduction' should be one of"),
    (bad(SequenceSurrogate, torch.randn(2, 5, 9), torch.zeros(2, 4, dtype=torch.long)),
     ValueError, r"'target' should be \(N, T\) = \(2, 5\) token ids but got torch.int64 \(2, 4\)"),
    (bad(SequenceSurrogate, torch.randn(2, 5, 9), torch.zeros(2, 5)), ValueError,
     r"'target' should be \(N, T\) = \(2, 5\) token ids but got torch.float32"),
    (bad(SequenceSurrogate, torch.randn(2, 5, 9), torch.zeros(2, 5, dtype=torch.long),
         torch.ones(2, 4)), ValueError, r"'weight' should be \(N, T\) = \(2, 5\)"),
]


@pytest.mark.parametrize("call, error, message", BAD_INPUTS)
def test_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call()


# Gradients.

def test_classification_gradcheck():
    surrogate = fresh(ClassificationSurrogate).double()
    logits, labels, weight = classification_batch(count=6, classes=5)
    logits = logits.double().requires_grad_()
    assert gradcheck(lambda x: surrogate(x, labels, weight.double()), (logits,))
    mixed = 0.3 * one_hot(labels, 5) + 0.7 * one_hot((labels + 2) % 5, 5)
    assert gradcheck(lambda x: surrogate(x, mixed.double()), (logits,))


@pytest.mark.parametrize("task", list(TASKS))
def test_gradient_is_finite_and_non_zero(task):
    cls, batch = TASKS[task]
    surrogate = fresh(cls)
    pred, target, weight = batch()
    pred = pred.requires_grad_()
    surrogate(pred, target, weight).backward()
    assert bool(torch.isfinite(pred.grad).all())
    assert float(pred.grad.abs().sum()) > 0


# What training with the classification surrogate relies on.


def test_classification_frozen_path_equals_autograd():
    """A frozen surrogate (as when training a model) computes the same values and gradients with
    its written-out backward as autograd does through the trainable net."""
    surrogate = fresh(ClassificationSurrogate).double()
    logits, labels, weight = classification_batch()
    logits = (3 * logits).double()
    soft = one_hot(labels, 10).double() * 0.7 + one_hot((labels + 3) % 10, 10).double() * 0.3
    for target, w in ((labels, None), (labels, weight.double()), (soft, None)):
        results = []
        for trainable in (True, False):
            surrogate.requires_grad_(trainable)
            leaf = logits.clone().requires_grad_()
            value = surrogate(leaf, target, w)
            (grad,) = torch.autograd.grad(value, leaf)
            results.append((value.detach(), grad))
        torch.testing.assert_close(results[0], results[1])
    surrogate.requires_grad_(False)
    assert gradcheck(lambda z: surrogate(z, soft[:4]), (logits[:4].clone().requires_grad_(),))


def test_classification_has_nothing_to_game():
    """The loss never rises when the label's logit rises (it is a non-decreasing function of
    cross-entropies at several temperatures), and its gradient points like cross-entropy's for
    every sample (positive cosine)."""
    torch.manual_seed(0)
    surrogate = ClassificationSurrogate(temperatures=(1.0, 0.3, 0.1))
    with torch.no_grad():  # random, not pretrained: the guarantees hold for any parameters
        for p in surrogate.parameters():
            p.add_(torch.randn_like(p))
    surrogate.requires_grad_(False)
    logits, labels, _ = classification_batch(count=256, classes=7)
    logits = (logits * 3).requires_grad_()
    values = surrogate(logits, labels, reduction="none")
    (grad,) = torch.autograd.grad(values.sum(), logits)
    ce_grad = logits.detach().softmax(-1) - one_hot(labels, 7).float()
    cosine = torch.nn.functional.cosine_similarity(grad, ce_grad, dim=-1)
    assert bool((cosine > 0).all()), cosine.min()
    assert bool((grad.gather(-1, labels[:, None]) <= 0).all())  # raising the label's logit helps
    raised = logits.detach().clone()
    raised.scatter_add_(-1, labels[:, None], torch.full((256, 1), 2.0))
    assert bool((surrogate(raised, labels, reduction="none") <= values.detach() + 1e-6).all())


def test_classification_soft_labels_over_every_class_equal_the_nonzero_ones():
    """On a GPU soft labels are evaluated over every class (counting the non-zero ones would
    wait for the device); zero labels must contribute nothing."""
    from reloss.tasks._cls_frozen import FrozenClassificationLoss, general_table

    surrogate = fresh(ClassificationSurrogate).double().requires_grad_(False)
    logits, labels, _ = classification_batch()
    logits = (3 * logits).double().requires_grad_()
    soft = one_hot(labels, 10).double() * 0.6 + one_hot((labels + 1) % 10, 10).double() * 0.4
    index = torch.arange(10).expand(12, 10)
    table = general_table(surrogate.net, surrogate.temperatures, logits.dtype, logits.device)
    every = FrozenClassificationLoss.apply(logits, index, soft, table)
    nonzero = surrogate(logits, soft, reduction="none")
    torch.testing.assert_close(every, nonzero)
    grads = [torch.autograd.grad(v.sum(), logits)[0] for v in (every, nonzero)]
    torch.testing.assert_close(grads[0], grads[1])


# Sequence, sentence-level form (SequenceSurrogate, the shipped one): token cross-entropy plus
# learned weights on bag-of-n-grams distances.

def one_hot_log_p(output, target, vocab=12):
    """log p_t(target_s) (N, T, T) of predictions sure of ``output`` (N, T)."""
    logits = torch.full((*output.shape, vocab), -1e4, dtype=torch.float64)
    logits.scatter_(-1, output.unsqueeze(-1), 0.0)
    length = target.shape[1]
    return logits.log_softmax(-1).gather(-1, target.unsqueeze(1).expand(-1, length, -1))


def test_distance_of_sure_predictions_is_one_minus_clipped_precision():
    """Counted by hand: reference 5 6 5 6 7, output 5 5 5 6 7. Unigrams: 5 clipped to 2, 6 once,
    7 once: 4/5. Bigrams 55 55 56 67 against 56 65 56 67: 56 and 67 match: 2/4. Trigrams 555 556
    567 against 565 656 567: 1/3. 4- and 5-grams: none. No 6-gram at all: 0."""
    target = torch.tensor([[5, 6, 5, 6, 7]])
    output = torch.tensor([[5, 5, 5, 6, 7]])
    present = torch.ones(1, 5, dtype=torch.bool)
    distance = bag_of_ngrams_distance(one_hot_log_p(output, target), target, present, 6)
    torch.testing.assert_close(distance, torch.tensor([[1 / 5, 2 / 4, 2 / 3, 1.0, 1.0, 0.0]],
                                                      dtype=torch.float64))
    # A shifted copy matches every n-gram but the ones across the shift.
    shifted = torch.tensor([[6, 5, 6, 5, 6]])
    distance = bag_of_ngrams_distance(one_hot_log_p(shifted, target), target, present, 2)
    torch.testing.assert_close(distance, torch.tensor([[1 / 5, 1 / 4]], dtype=torch.float64))


def test_distance_counts_runs_of_present_positions_only():
    target = torch.tensor([[5, 6, 7, PAD, PAD]])
    present = target != PAD
    output = torch.tensor([[5, 6, 8, 5, 6]])  # what padding positions hold does not count
    distance = bag_of_ngrams_distance(one_hot_log_p(output, target), target, present, 4)
    torch.testing.assert_close(distance, torch.tensor([[1 / 3, 1 / 2, 1.0, 0.0]],
                                                      dtype=torch.float64))


def test_distance_is_expected_clipped_count_under_independent_positions():
    """Against a Monte Carlo estimate: E[min(count, clip)] is not min(E[count], clip), so the
    expected-count form (Shao et al.) is compared where nothing is clipped: unique tokens."""
    generator = torch.Generator().manual_seed(0)
    target = torch.tensor([[4, 5, 6, 7]])
    logits = torch.randn(1, 4, 8, generator=generator, dtype=torch.float64)
    log_p = logits.log_softmax(-1).gather(-1, target.unsqueeze(1).expand(-1, 4, -1))
    distance = bag_of_ngrams_distance(log_p, target, torch.ones(1, 4, dtype=torch.bool), 2)
    draws = torch.distributions.Categorical(logits=logits[0]).sample((200000,))
    unigram = (draws.unsqueeze(-1) == target[0]).any(-2).float()  # no repeats in the target
    bigram_hits = sum(((draws[:, t] == target[0, s]) & (draws[:, t + 1] == target[0, s + 1]))
                      .double() for t in range(3) for s in range(3))
    assert float(distance[0, 1]) == pytest.approx(1 - float(bigram_hits.mean()) / 3, abs=5e-3)
    hits = sum((draws[:, t] == target[0, s]).double() for t in range(4) for s in range(4))
    assert float(distance[0, 0]) == pytest.approx(1 - float(hits.mean()) / 4, abs=5e-3)
    assert float(unigram.mean()) > 0  # the draw reached the reference tokens


def test_ngram_value_is_cross_entropy_plus_weighted_distances():
    surrogate = SequenceSurrogate(ngrams=3, ngram_weight=0.7).double()
    logits, target, weight = sequence_batch()
    logits, weight = logits.double(), weight.double()
    present = weight > 0
    log_p = logits.log_softmax(-1)
    nll = -log_p.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    length = target.shape[1]
    clean = target.masked_fill(~present, 0)
    distance = bag_of_ngrams_distance(
        log_p.gather(-1, clean.unsqueeze(1).expand(-1, length, -1)), clean, present, 3)
    tokens = weight.sum(-1)
    per_sentence = (nll * weight).sum(-1) / tokens.clamp_min(1) + 0.7 * distance.sum(-1)
    values = surrogate(logits, target, weight, reduction="none")
    torch.testing.assert_close(values, per_sentence)
    # 'mean' is a mean over tokens, as token cross-entropy's.
    torch.testing.assert_close(surrogate(logits, target, weight),
                               (per_sentence * tokens).sum() / tokens.sum())


def test_ngram_gradcheck_with_label_smoothing_and_padding():
    torch.manual_seed(0)
    surrogate = SequenceSurrogate(ngrams=4).double()
    logits, target, weight = sequence_batch(length=5, vocab=9)
    logits = logits.double().requires_grad_()
    weight = weight.double()
    assert gradcheck(lambda x: surrogate.training_terms(x, target, weight, 0.1)[0], (logits,))
    assert gradcheck(lambda x: surrogate(x, target, weight, reduction="none"), (logits,))
    loss = surrogate(logits, target, weight)
    (grad,) = torch.autograd.grad(loss, logits)
    assert float(grad[weight == 0].abs().max()) == 0.0
    assert float(grad[weight > 0].abs().max()) > 0.0


def test_ngram_sure_and_right_predictions_cost_nothing():
    surrogate = SequenceSurrogate(ngrams=4)
    _, target, weight = sequence_batch()
    logits = torch.full((*target.shape, 30), -30.0).scatter_(-1, target.unsqueeze(-1), 30.0)
    assert float(surrogate(logits, target, weight).detach()) == pytest.approx(0.0, abs=1e-6)
    wrong = logits.roll(1, dims=-1)
    assert float(surrogate(wrong, target, weight).detach()) > 10.0


def test_ngram_checkpoint_round_trip(tmp_path):
    surrogate = SequenceSurrogate(ngrams=2, ngram_weight=1.5)
    with torch.no_grad():
        surrogate.theta.copy_(torch.tensor([0.2, -0.3]))
    path = tmp_path / "ngram.pt"
    save_surrogate(surrogate, path, "nat", "reloss.tasks.nat:sequence_metric")
    loaded = reloss.load_surrogate(str(path))
    assert loaded.config() == surrogate.config() and loaded.ngrams == 2
    torch.testing.assert_close(loaded.ngram_weights, surrogate.ngram_weights)
    logits, target, weight = sequence_batch()
    torch.testing.assert_close(loaded(logits, target, weight), surrogate(logits, target, weight))


@pytest.mark.parametrize("kwargs, message", [
    (dict(ngrams=0), r"'ngrams' should be an int in \[1, 8\] but got 0"),
    (dict(ngrams=-1), r"'ngrams' should be an int in \[1, 8\] but got -1"),
    (dict(ngrams=2.0), r"'ngrams' should be an int in \[1, 8\] but got 2.0"),
    (dict(ngrams=True), r"'ngrams' should be an int in \[1, 8\] but got True"),
    (dict(ngrams=2, ngram_weight=0), r"'ngram_weight' should be a number in \(0, 1000\) but "
                                     r"got 0"),
])
def test_ngram_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SequenceSurrogate(**kwargs)


def _frozen_losses():
    """(name, loss(pred), pred) for each frozen evaluation whose gradient is written out."""
    generator = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(16, 10, generator=generator), torch.randint(10, (16,))
    soft = torch.softmax(torch.randn(16, 10, generator=generator), -1)
    plain, aware = reloss.load_surrogate("cls"), reloss.load_surrogate("cls-balanced")
    priors = reloss.class_priors([100 ** (-c / 9) for c in range(10)])
    pose = reloss.load_surrogate("pose")
    heatmaps, target = torch.rand(2, 3, 8, 6, generator=generator), gaussian_heatmaps(
        torch.tensor([[[3.0, 4.0], [1.0, 2.0], [4.0, 6.0]]] * 2), (8, 6), 1.5)
    multi = ClassificationSurrogate(temperatures=(1.0, 0.5)).requires_grad_(False)
    nat = reloss.load_surrogate("nat")
    tokens = torch.randint(4, 12, (2, 5), generator=generator)
    sentences = torch.randn(2, 5, 12, generator=generator)
    return [("cls", lambda z: plain(z, labels), logits),
            ("cls, 3 classes", lambda z: plain(z, labels % 3), logits[:, :3]),
            ("cls, soft labels", lambda z: plain(z, soft), logits),
            ("cls, two temperatures", lambda z: multi(z, labels), logits),
            ("cls-balanced", lambda z: aware(z, labels, priors=priors), logits),
            ("pose", lambda h: pose(h, target, torch.ones(2, 3)), heatmaps),
            ("nat", lambda z: nat(z, tokens), sentences)]


@pytest.mark.parametrize("case", range(7))
def test_second_derivatives_are_refused_not_dropped(case):
    """The written-out gradients are computed without a graph: a second derivative through them
    (a gradient penalty, a Hessian-vector product) would silently miss the surrogate's part.
    It is refused instead, even mixed with a loss that has one."""
    name, loss, pred = _frozen_losses()[case]
    pred = pred.clone().requires_grad_()
    value = loss(pred) + pred.square().sum()
    with pytest.raises(RuntimeError, match="cannot be differentiated twice"):
        torch.autograd.grad(value, pred, create_graph=True)
    (first,) = torch.autograd.grad(loss(pred), pred)  # without create_graph: as before
    assert first.abs().sum() > 0


def test_second_derivative_on_the_autograd_path_the_error_names():
    """The remedy the error gives works: a trainable cls surrogate differentiates twice, and its
    Hessian-vector product equals a finite difference of its gradient."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 10, generator=generator, dtype=torch.float64)
    labels = torch.randint(10, (8,), generator=generator)
    surrogate = reloss.load_surrogate("cls", trainable=True).double()
    direction = torch.randn(8, 10, generator=generator, dtype=torch.float64)

    def gradient(z, create_graph=False):
        z = z.detach().requires_grad_()
        return torch.autograd.grad(surrogate(z, labels), z, create_graph=create_graph)[0], z

    grad, leaf = gradient(logits, create_graph=True)
    (hvp,) = torch.autograd.grad((grad * direction).sum(), leaf)
    step = 1e-6
    numeric = (gradient(logits + step * direction)[0] - gradient(logits - step * direction)[0]
               ) / (2 * step)
    torch.testing.assert_close(hvp, numeric, rtol=1e-4, atol=1e-8)
    assert hvp.abs().sum() > 0
