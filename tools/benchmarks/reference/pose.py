"""Pose reference task: a small fully-convolutional network finds the keypoints of generated
figures.

Two generated tasks: ``figure5`` (the reference, described below) and ``body17``, 17 COCO-style
keypoints (nose, eyes, ears, shoulders, elbows, wrists, hips, knees, ankles; the left and right
joints look alike) on 64x48 images, 32x24 heatmaps, figures rotated by up to 45 degrees, 1-3
distractor blobs, occlusion with probability 0.15, 2,000 training images. The regime matrix crosses
them with Adam and SGD (momentum 0.9), short and long schedules.

``figure5``:

Each 32x32 grey image shows one figure: a head (a bright disc) and two look-alike pairs, the
shoulders and the hands (identical blobs, joined by faint limbs). The figure is rotated by up to
135 degrees either way, so "left" and "right" are told apart only by where the head is, not by
how a joint looks. Joints sit at sub-pixel positions; 1-3 distractor blobs that look like joints
lie around the figure; each joint is occluded (covered by a noise patch) with probability 0.15
and then has weight 0 and an empty target. The data come from a fixed seed, the same for every
arm and training seed.

The network outputs (N, 5, 16, 16) heatmaps (stride 2); targets are mmpose-style Gaussians
(sigma 1 heatmap pixel). The metric is PCK@0.05 of heatmap argmax locations (mmpose's
``acc_pose``, a fraction in [0, 1]) on 500 held-out images; at 16x16 a keypoint counts only
when the argmax is the target's own pixel. Adam with a cosine schedule, 3 epochs of batch 32.

Run as a script, it stores predictions of nets along their training (on images the benchmark
never uses) for ``reloss pretrain --data``:

    python -m tools.benchmarks.reference.pose --out work_dirs/pose/predictions_mse.pt
    python -m tools.benchmarks.reference.pose --checkpoint DIR/surrogate.pt --out FILE.pt
"""
import math
from dataclasses import dataclass

import torch
from torch import nn

from reloss.metrics import pck_accuracy
from reloss.tasks.pose import gaussian_heatmaps, keypoint_mse_per_chunk
from tools.benchmarks.reference import (
    Regime,
    checkpoint_loss,
    prediction_parser,
    regime,
    write_predictions,
)

METRIC = "PCK@0.05 (fraction)"
CHANCE = 1.0 / 256  # a random argmax over 16 x 16 heatmap pixels
TOLERANCE = 0.005  # PCK: a regime's paired mean below -0.005 misses the goal
DATA_SEED = 0
IMAGE, STRIDE, SIGMA = 32, 2, 1.0
HEATMAP = IMAGE // STRIDE
KEYPOINTS = ("head", "left shoulder", "right shoulder", "left hand", "right hand")
TRAIN_IMAGES, TEST_IMAGES = 4000, 500
QUICK_EPOCHS = 7


@dataclass(frozen=True)
class Figures:
    """A generated keypoint task: the figure's joints in its own frame (y down, the head up, in
    units of its scale), the limbs drawn between joints, which joint is the head (a wider disc),
    the image size (H, W), the largest rotation (radians), the scale range and image counts."""

    keypoints: tuple
    skeleton: tuple
    limbs: tuple
    image: tuple
    rotation: float
    scale: tuple
    train: int
    test: int
    head: int = 0

    @property
    def heatmap(self):
        return (self.image[0] // STRIDE, self.image[1] // STRIDE)


_SIDES = ("left", "right")
FIGURES = {
    "figure5": Figures(
        KEYPOINTS, ((0.0, -1.0), (-0.6, -0.25), (0.6, -0.25), (-0.85, 0.75), (0.85, 0.75)),
        ((0, 1), (0, 2), (1, 2), (1, 3), (2, 4)), (IMAGE, IMAGE), 0.75 * math.pi, (7.0, 10.0),
        TRAIN_IMAGES, TEST_IMAGES),
    "body17": Figures(
        ("nose", *(f"{side} {part}" for part in ("eye", "ear", "shoulder", "elbow", "wrist", "hip",
                                                 "knee", "ankle") for side in _SIDES)),
        ((0.0, -1.0), (-0.12, -1.12), (0.12, -1.12), (-0.26, -1.04), (0.26, -1.04),
         (-0.45, -0.6), (0.45, -0.6), (-0.62, -0.1), (0.62, -0.1), (-0.72, 0.35), (0.72, 0.35),
         (-0.3, 0.3), (0.3, 0.3), (-0.33, 0.9), (0.33, 0.9), (-0.35, 1.45), (0.35, 1.45)),
        ((0, 1), (0, 2), (1, 3), (2, 4), (5, 6), (5, 7), (7, 9), (6, 8), (8, 10), (5, 11),
         (6, 12), (11, 12), (11, 13), (13, 15), (12, 14), (14, 16)),
        (64, 48), 0.25 * math.pi, (10.0, 13.0), 2000, 400),
}


def _regime(split, figures, optimizer, epochs, lr, he_init=True):
    return Regime(split, f"{figures}, {optimizer}, {epochs} ep",
                  dict(figures=figures, optimizer=optimizer, epochs=epochs, lr=lr,
                       he_init=he_init))


REGIMES = {
    # design split
    "default": _regime("design", "figure5", "adam", 3, 2e-3, he_init=False),
    "figure5-sgd-8": _regime("design", "figure5", "sgd", 8, 0.2),
    "body17-adam-3": _regime("design", "body17", "adam", 3, 2e-3),
    # held-out split
    "figure5-adam-8": _regime("held-out", "figure5", "adam", 8, 2e-3),
    "figure5-sgd-3": _regime("held-out", "figure5", "sgd", 3, 0.2),
    "body17-adam-8": _regime("held-out", "body17", "adam", 8, 2e-3),
    "body17-sgd-8": _regime("held-out", "body17", "sgd", 8, 0.2),
}
REFERENCE = ("default",)


def original_loss(pred, target, weight=None):
    """mmpose's KeypointMSELoss with use_target_weight=True and loss_weight 1: the mean over
    N, K, H, W of ((pred - target) * weight)^2."""
    if weight is None:
        weight = pred.new_ones(pred.shape[:2])
    return keypoint_mse_per_chunk(pred.unsqueeze(0), target.unsqueeze(0),
                                  weight.unsqueeze(0)).squeeze(0)


def timing_inputs(generator):
    """64 x 17 x 64 x 48 heatmaps (a COCO SimpleBaseline batch), targets and weights."""
    centers = torch.rand(64, 17, 2, generator=generator) * torch.tensor([47.0, 63.0])
    target = gaussian_heatmaps(centers, (64, 48), 2.0)
    pred = target + 0.1 * torch.randn(target.shape, generator=generator)
    weight = (torch.rand(64, 17, generator=generator) < 0.85).float()
    return pred, target * weight[..., None, None], weight


def _blobs(centers, sigma, amplitude, size):
    """Sum over the second dim of Gaussian blobs on the image: (M, B, 2) -> (M, H, W)."""
    return gaussian_heatmaps(centers, size, sigma, amplitude).sum(1)


def generate(count, generator, figures="figure5"):
    """Images (M, 1, H, W), target heatmaps (M, K, H / 2, W / 2), weights (M, K) of ``figures``
    (a name in FIGURES)."""
    spec = FIGURES[figures]
    height, width = spec.image
    size = (height, width)
    keypoints = len(spec.keypoints)
    angle = (torch.rand(count, generator=generator) * 2 - 1) * spec.rotation
    low, high = spec.scale
    scale = low + (high - low) * torch.rand(count, generator=generator)
    # The figure's centre: the middle half of the image (12 to 20 on the 32x32 reference).
    extent = torch.tensor([width, height], dtype=torch.float32)
    center = 0.375 * extent + 0.25 * extent * torch.rand(count, 2, generator=generator)
    cos, sin = angle.cos(), angle.sin()
    rotation = torch.stack((torch.stack((cos, -sin), -1), torch.stack((sin, cos), -1)), -2)
    joints = torch.einsum("mij,kj->mki", rotation, torch.tensor(spec.skeleton)
                          ) * scale[:, None, None]
    joints = joints + center[:, None] + 0.6 * torch.randn(count, keypoints, 2,
                                                         generator=generator)
    inside = ((joints >= 1) & (joints <= extent - 2)).all(-1)

    image = 0.15 * torch.rand(count, 1, 1, generator=generator)  # background level
    # Limbs: faint strokes of small blobs between the joints.
    steps = torch.linspace(0.15, 0.85, 6)
    strokes = torch.cat([joints[:, a, None]
                         + steps[:, None] * (joints[:, b] - joints[:, a])[:, None]
                         for a, b in spec.limbs], 1)
    image = image + _blobs(strokes, 0.7, 0.12, size)
    head = spec.head
    image = image + _blobs(joints[:, head:head + 1], 1.6, 0.9, size)  # the head: a wider disc
    others = [k for k in range(keypoints) if k != head]
    image = image + _blobs(joints[:, others], 1.0, 0.7, size)  # the other joints look alike
    # Distractors: 1-3 joint-like blobs, at 5/16 to 14/16 of the half-width from the centre.
    distractors = torch.randint(1, 4, (count,), generator=generator)
    placed = torch.arange(3) < distractors[:, None]
    reach = width / 32
    away = (5.0 + 9.0 * torch.rand(count, 3, generator=generator)) * reach
    turn = 2 * math.pi * torch.rand(count, 3, generator=generator)
    spots = center[:, None] + away[..., None] * torch.stack((turn.cos(), turn.sin()), -1)
    image = image + _blobs(spots, 1.0, 0.7 * placed, size)
    # Occlusion: a 6x6 noise patch over the joint; the joint gets weight 0.
    occluded = torch.rand(count, keypoints, generator=generator) < 0.15
    rows = torch.arange(height, dtype=torch.float32)
    columns = torch.arange(width, dtype=torch.float32)
    cover = torch.zeros(count, height, width, dtype=torch.bool)
    for k in range(keypoints):
        x, y = joints[:, k, 0, None], joints[:, k, 1, None]
        box = (((columns - x).abs() <= 3)[:, None, :] & ((rows - y).abs() <= 3)[:, :, None])
        cover |= box & occluded[:, k, None, None]
    patch = 0.4 + 0.3 * torch.rand(count, height, width, generator=generator)
    image = torch.where(cover, patch, image)
    image = image + 0.08 * torch.randn(count, height, width, generator=generator)

    visible = inside & ~occluded
    # Heatmap pixel i covers image pixels 2i, 2i + 1: its centre is at image coordinate 2i + 0.5.
    on_heatmap = (joints - 0.5 * (STRIDE - 1)) / STRIDE
    target = gaussian_heatmaps(on_heatmap, spec.heatmap, SIGMA) * visible[..., None, None]
    return image.unsqueeze(1), target, visible.float()


_DATA = {}


def data(figures="figure5"):
    """(train images, targets, weights, test images, targets, weights), generated once."""
    if figures not in FIGURES:
        raise ValueError(f"'figures' should be one of {sorted(FIGURES)} but got {figures!r}")
    if figures not in _DATA:
        generator = torch.Generator().manual_seed(DATA_SEED)
        spec = FIGURES[figures]
        train = generate(spec.train, generator, figures)
        test = generate(spec.test, generator, figures)
        _DATA[figures] = (*train, *test)
    return _DATA[figures]


def model(he_init=False, keypoints=5):
    """Stride-2 fully-convolutional net; dilated layers give it the figure as context.

    ``he_init`` replaces PyTorch's default initialisation of the hidden layers by He's: MSE then
    leaves the early plateau of heatmap regression sooner (which short runs need) but ends
    lower at the full budget (PCK 0.602 +- 0.052 against 0.637 +- 0.013 over 5 seeds).
    """
    def block(fan_in, fan_out, **kwargs):
        return [nn.Conv2d(fan_in, fan_out, 3, padding=kwargs.get("dilation", 1), **kwargs),
                nn.ReLU()]

    net = nn.Sequential(*block(1, 16), *block(16, 32, stride=2), *block(32, 32, dilation=2),
                        *block(32, 32, dilation=4), *block(32, 32),
                        nn.Conv2d(32, keypoints, 1))
    if he_init:
        for layer in net[:-1]:
            if isinstance(layer, nn.Conv2d):
                nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
                nn.init.zeros_(layer.bias)
    return net


@torch.no_grad()
def pck(net, images, targets, weights, batch=500):
    """PCK@0.05 (fraction) of the net's heatmap argmax locations over the images."""
    net.eval()
    heatmaps = torch.cat([net(images[i:i + batch]) for i in range(0, len(images), batch)])
    net.train()
    return float(pck_accuracy(heatmaps[None], targets[None], weights[None] > 0)[0])


def run(name, loss_fn, seed, quick=False, progress=None, epochs=None, lr=None, batch=32,
        record=None):
    """Train a fresh net in regime ``name`` with ``loss_fn(heatmaps, targets, weights)``; PCK
    along training. ``epochs`` and ``lr`` override the regime's.

    ``record(fraction, net)``, if given, is called at every tenth of training (e.g. to store the
    net's predictions).
    """
    options = regime(REGIMES, name).options
    figures = options["figures"]
    x_train, y_train, w_train, x_test, y_test, w_test = data(figures)
    epochs = epochs or options["epochs"]
    lr = lr or options["lr"]
    if quick:  # a quarter of the training images for more epochs, half the test images
        train, test = len(x_train) // 4, len(x_test) // 2
        x_train, y_train, w_train = x_train[:train], y_train[:train], w_train[:train]
        x_test, y_test, w_test = x_test[:test], y_test[:test], w_test[:test]
        epochs = QUICK_EPOCHS if name == "default" else 2 * epochs
    torch.manual_seed(seed)
    net = model(he_init=quick or options["he_init"], keypoints=len(FIGURES[figures].keypoints))
    if options["optimizer"] == "adam":
        optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    else:
        optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    generator = torch.Generator().manual_seed(seed)
    batches = [index for _ in range(epochs)
               for index in torch.randperm(len(x_train), generator=generator).split(batch)]
    checkpoints = {math.ceil(len(batches) * k / 10): k / 10 for k in range(1, 11)}
    curve = []
    for step, index in enumerate(batches, 1):
        for group in optimizer.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * (step - 1) / len(batches)))
        loss = loss_fn(net(x_train[index]), y_train[index], w_train[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step in checkpoints:
            curve.append([checkpoints[step], pck(net, x_test, y_test, w_test)])
            if record is not None:
                record(checkpoints[step], net)
            if progress is not None:
                progress(checkpoints[step])
    return dict(curve=curve, final=curve[-1][1])


def store_predictions(path, loss_fn, seeds, count=256, data_seed=1):
    """Train a net per seed with ``loss_fn`` and store its heatmaps on ``count`` images generated
    from ``data_seed`` (not the benchmark's data) at every tenth of training, as a prediction file
    of reloss/predictions.py (one group per snapshot) for ``reloss pretrain --data``."""
    images, targets, weights = generate(count, torch.Generator().manual_seed(data_seed))
    snapshots = []

    def record(fraction, net):
        with torch.no_grad():
            net.eval()
            snapshots.append(net(images))
            net.train()

    finals = [run("default", loss_fn, seed, record=record)["final"] for seed in seeds]
    groups = len(snapshots)
    torch.save(dict(task="pose", heatmaps=torch.cat(snapshots),
                    target_heatmaps=targets.repeat(groups, 1, 1, 1),
                    target_weights=weights.repeat(groups, 1),
                    group=torch.arange(groups).repeat_interleave(count)), path)
    return finals


def main(argv=None):
    parser = prediction_parser("reference nets", "the original loss (MSE)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    loss_fn = checkpoint_loss(parser, args.checkpoint, "pose", original_loss)
    write_predictions(parser, args.out, lambda: store_predictions(args.out, loss_fn, args.seeds),
                      METRIC, digits=3)


if __name__ == "__main__":
    main()
