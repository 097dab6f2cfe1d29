"""Synthetic (prediction, label) chunks for pretraining surrogates, and stored real predictions.

Every sampler draws a quality level per chunk: with probability ``late_fraction`` from the late-
training band (most predictions right, the errors that remain are the ones that decide the metric
at the end of training), otherwise from the whole range, so the metric covers [0, 1] and is dense
where training spends most of its time. Each yields raw batches; :mod:`reloss.pretrain` turns them
into features, since the raw tensors (logits over 1000 classes, full heatmaps) are large.
"""
import math

import torch

#: Index used for padding in sampled token sequences (fairseq's dictionary: bos 0, pad 1, eos 2,
#: unk 3; real tokens from 4).
PAD = 1
FIRST_TOKEN = 4


def _uniform(shape, low, high, generator):
    return low + (high - low) * torch.rand(shape, generator=generator)


def _quality(count, late_fraction, late_band, generator):
    """Per-chunk target quality in [0, 1]: a mix of the whole range and the late band."""
    late = torch.rand(count, generator=generator) < late_fraction
    whole = torch.rand(count, generator=generator)
    band = _uniform(count, late_band[0], late_band[1], generator)
    return torch.where(late, band, whole)


def sample_classification(num_chunks, chunk_size=128, num_classes=10, generator=None,
                          late_fraction=0.5, late_band=(0.85, 0.99)):
    """Logits (S, N, C) and labels (S, N) whose chunk accuracies spread over [0, 1].

    Per chunk: a target accuracy, a logit noise level and a confidence scale; per sample, the
    class the model favours is the label with that probability, another class otherwise, and a
    wrong prediction often keeps the label as runner-up. Confidence varies from near-uniform to
    saturated, so the probability of the true class covers (0, 1) for right and wrong samples.
    """
    shape = (num_chunks, chunk_size)
    accuracy = _quality(num_chunks, late_fraction, late_band, generator).unsqueeze(-1)
    labels = torch.randint(num_classes, shape, generator=generator)
    right = torch.rand(shape, generator=generator) < accuracy
    other = (labels + torch.randint(1, num_classes, shape, generator=generator)) % num_classes
    favoured = torch.where(right, labels, other)
    noise = _uniform((num_chunks, 1, 1), 0.3, 2.0, generator)
    logits = noise * torch.randn(num_chunks, chunk_size, num_classes, generator=generator)
    # The largest of C noisy logits grows like noise * sqrt(2 ln C): scale the favoured class's
    # lead with it, so that the planned accuracy holds at any C.
    lead = noise[..., 0] * math.sqrt(2 * math.log(num_classes))
    confidence = torch.exp(_uniform((num_chunks, 1), math.log(0.5), math.log(6.0), generator))
    gap = lead * confidence * (0.5 + torch.rand(shape, generator=generator))
    logits.scatter_add_(-1, favoured.unsqueeze(-1), gap.unsqueeze(-1))
    runner_up = (~right) & (torch.rand(shape, generator=generator) < 0.6)
    boost = gap * torch.rand(shape, generator=generator) * runner_up
    logits.scatter_add_(-1, labels.unsqueeze(-1), boost.unsqueeze(-1))
    return logits, labels


def gaussian_heatmaps(centers, size, sigma, amplitude=1.0):
    """(..., 2) (x, y) centres -> (..., H, W) Gaussians of peak ``amplitude`` (unnormalised).

    ``sigma`` and ``amplitude`` are numbers or tensors of the centres' leading shape.
    """
    height, width = size
    sigma = torch.as_tensor(sigma, dtype=torch.float32).expand(centers.shape[:-1]).unsqueeze(-1)
    amplitude = torch.as_tensor(amplitude, dtype=torch.float32).expand(centers.shape[:-1])
    # Separable: exp(-(dx^2 + dy^2) / 2s^2) = exp(-dx^2 / 2s^2) * exp(-dy^2 / 2s^2).
    along_x = torch.exp(-(torch.arange(width) - centers[..., :1]).square() / (2 * sigma.square()))
    along_y = torch.exp(-(torch.arange(height) - centers[..., 1:]).square() / (2 * sigma.square()))
    return (amplitude.unsqueeze(-1) * along_y).unsqueeze(-1) * along_x.unsqueeze(-2)


def sample_pose(num_chunks, chunk_size=8, num_keypoints=17, heatmap_size=(64, 48), sigma=None,
                generator=None, late_fraction=0.5, late_band=(0.85, 0.99), visible_rate=0.85):
    """Heatmaps, target heatmaps (S, N, K, H, W) and keypoint weights (S, N, K).

    Targets are mmpose-style Gaussians (sigma 2 at 64x48, scaled with the size), zero with weight 0
    for invisible joints. A prediction is right with the chunk's probability (a peak within about
    a pixel, varied height and width) and otherwise fails in one of four ways: a peak displaced by
    3-20 pixels, a missing peak (low flat response), two peaks (the wrong one higher), or a blurred
    displaced peak. Every map gets background noise.
    """
    height, width = heatmap_size
    sigma = 2.0 * height / 64 if sigma is None else sigma
    shape = (num_chunks, chunk_size, num_keypoints)
    margin = torch.tensor([width, height], dtype=torch.float32) * 0.1
    span = torch.tensor([width, height], dtype=torch.float32) - 2 * margin
    centers = margin + span * torch.rand(shape + (2,), generator=generator)
    visible = torch.rand(shape, generator=generator) < visible_rate
    target = gaussian_heatmaps(centers, heatmap_size, sigma) * visible[..., None, None]

    quality = _quality(num_chunks, late_fraction, late_band, generator).view(-1, 1, 1)
    right = torch.rand(shape, generator=generator) < quality
    failure = torch.randint(4, shape, generator=generator)
    scale = height / 64
    jitter = torch.randn(shape + (2,), generator=generator) * 0.6 * scale
    angle = 2 * math.pi * torch.rand(shape, generator=generator)
    distance = _uniform(shape, 3.0, 20.0, generator) * scale
    far = torch.stack((angle.cos(), angle.sin()), -1) * distance.unsqueeze(-1)
    displaced = (~right) & (failure != 1)
    peak_at = centers + torch.where(displaced.unsqueeze(-1), far, jitter)
    height_main = _uniform(shape, 0.3, 1.1, generator)
    height_main = torch.where((~right) & (failure == 1), 0.1 * height_main, height_main)
    width_main = sigma * _uniform(shape, 0.8, 1.4, generator)
    width_main = torch.where((~right) & (failure == 3), width_main * 2.5, width_main)
    pred = gaussian_heatmaps(peak_at, heatmap_size, width_main, height_main)
    # Two peaks: the displaced one above, a lower one at the right place.
    second = (~right) & (failure == 2)
    pred += gaussian_heatmaps(centers + jitter, heatmap_size, sigma,
                              height_main * _uniform(shape, 0.3, 0.9, generator) * second)
    noise = _uniform((num_chunks, 1, 1, 1, 1), 0.0, 0.06, generator)
    pred += noise * torch.randn(pred.shape, generator=generator)
    return pred, target, visible.float()


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

    accuracy = _quality(count, late_fraction, late_band, generator).unsqueeze(-1)
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

    noise = _uniform((count, 1, 1), 0.5, 2.0, generator)
    logits = noise * torch.randn(count, longest, vocab_size, generator=generator)
    lead = noise[..., 0] * math.sqrt(2 * math.log(vocab_size))  # see sample_classification
    confidence = torch.exp(_uniform((count, 1), math.log(0.5), math.log(4.0), generator))
    gap = lead * confidence * (0.5 + torch.rand(count, longest, generator=generator))
    logits.scatter_add_(-1, output.unsqueeze(-1), gap.unsqueeze(-1))
    runner_up = (output != target) & (torch.rand(count, longest, generator=generator) < 0.6)
    boost = gap * torch.rand(count, longest, generator=generator) * runner_up
    logits.scatter_add_(-1, target.unsqueeze(-1), boost.unsqueeze(-1))
    view = (num_chunks, chunk_size, longest)
    return logits.view(*view, vocab_size), target.view(view), valid.view(view).float()


# Stored predictions of a real model. The file is a dict saved with torch.save, read with
# torch.load(weights_only=True):
#   task: 'cls', 'pose' or 'nat'
#   cls:  logits (M, C) float, labels (M,) int in [0, C)
#   pose: heatmaps (M, K, H, W) float, target_heatmaps (M, K, H, W) float, target_weights (M, K)
#   nat:  logits (M, T, V) float, targets (M, T) int in [0, V), target_weights (M, T) (0 at pads)
#   group (optional): (M,) int; a chunk never mixes groups (e.g. the epoch of a snapshot)
PREDICTION_FIELDS = {
    "cls": ("logits", "labels"),
    "pose": ("heatmaps", "target_heatmaps", "target_weights"),
    "nat": ("logits", "targets", "target_weights"),
}


def _field_error(path, field, expected, got):
    return ValueError(f"{path}: field '{field}' should be {expected} but got {got}")


def _check_predictions(path, data):
    if not isinstance(data, dict):
        raise ValueError(f"{path}: should hold a dict of tensors but holds {type(data).__name__}")
    task = data.get("task")
    if task not in PREDICTION_FIELDS:
        raise _field_error(path, "task", f"one of {', '.join(map(repr, PREDICTION_FIELDS))}",
                           repr(task))
    missing = [f for f in PREDICTION_FIELDS[task] if f not in data]
    if missing:
        raise ValueError(f"{path}: missing field(s) {', '.join(map(repr, missing))} for task "
                         f"'{task}' (needs {', '.join(PREDICTION_FIELDS[task])})")
    fields = {name: data[name] for name in PREDICTION_FIELDS[task]}
    for name, value in fields.items():
        if not isinstance(value, torch.Tensor):
            raise _field_error(path, name, "a tensor", type(value).__name__)
    first = PREDICTION_FIELDS[task][0]
    pred = fields[first]
    ndim = dict(cls=2, pose=4, nat=3)[task]
    if pred.dim() != ndim or not pred.is_floating_point():
        raise _field_error(path, first, f"a {ndim}-D floating-point tensor",
                           f"{pred.dtype} {tuple(pred.shape)}")
    count = pred.shape[0]
    expected_shapes = dict(cls={"labels": (count,)},
                           pose={"target_heatmaps": tuple(pred.shape),
                                 "target_weights": tuple(pred.shape[:2])},
                           nat={"targets": tuple(pred.shape[:2]),
                                "target_weights": tuple(pred.shape[:2])})[task]
    for name, shape in expected_shapes.items():
        if tuple(fields[name].shape) != shape:
            raise _field_error(path, name, f"shape {shape}", f"shape {tuple(fields[name].shape)}")
    for name, value in fields.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise _field_error(path, name, "finite values", "NaN or Inf")
    label_field = dict(cls="labels", nat="targets").get(task)
    if label_field is not None:
        labels, classes = fields[label_field], pred.shape[-1]
        if labels.is_floating_point():
            raise _field_error(path, label_field, "integer indices", labels.dtype)
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= classes):
            raise _field_error(path, label_field, f"indices in [0, {classes})",
                               f"values in [{int(labels.min())}, {int(labels.max())}]")
    group = data.get("group")
    if group is not None and (not isinstance(group, torch.Tensor) or tuple(group.shape) != (count,)
                              or group.is_floating_point()):
        raise _field_error(path, "group", f"an integer tensor of shape ({count},)",
                           getattr(group, "shape", type(group).__name__))
    return task, fields, group


def load_predictions(path, task, chunk_size, generator=None):
    """Stored predictions (schema above) cut into chunks: a list of (pred, target, weight).

    Within each group the samples are shuffled (seeded by ``generator``) and cut into chunks of
    ``chunk_size``; a group's remainder is dropped.
    """
    data = torch.load(path, map_location="cpu", weights_only=True)
    stored_task, fields, group = _check_predictions(path, data)
    if stored_task != task:
        raise _field_error(path, "task", repr(task), repr(stored_task))
    values = [fields[name] for name in PREDICTION_FIELDS[task]]
    count = values[0].shape[0]
    group = torch.zeros(count, dtype=torch.long) if group is None else group
    batches = []
    for g in torch.unique(group):
        members = torch.nonzero(group == g).squeeze(-1)
        members = members[torch.randperm(members.numel(), generator=generator)]
        usable = members.numel() // chunk_size * chunk_size
        if usable == 0:
            continue
        index = members[:usable].view(-1, chunk_size)
        chunk = [v[index].float() if v.is_floating_point() else v[index] for v in values]
        batches.append(tuple(chunk) if task != "cls" else (*chunk, None))
    if not batches:
        raise ValueError(f"{path}: no group holds a whole chunk of {chunk_size} samples "
                         f"({count} samples in all)")
    return batches


def relabel(logits, labels, generator=None):
    """The authors' augmentation of real classification chunks (S, N, C), (S, N): labels become
    the predicted classes, then a fraction u ~ U(0, 1) of each chunk is re-drawn at random, so that
    chunk accuracy covers [0, 1] instead of clustering where the model is."""
    predicted = logits.argmax(-1)
    fraction = torch.rand(labels.shape[0], 1, generator=generator)
    redraw = torch.rand(labels.shape, generator=generator) < fraction
    random = torch.randint(logits.shape[-1], labels.shape, generator=generator)
    return torch.where(redraw, random, predicted)
