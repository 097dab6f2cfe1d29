"""Classification reference task: small classifiers on scikit-learn's digits (1,797 real 8x8
images of 10 handwritten digits; they ship with scikit-learn, no download).

A fixed two-thirds / one-third split (the same for every arm and seed). Label noise replaces a
fraction of the training labels by another class drawn at random (symmetric noise, a fixed draw
per noise level); the test labels stay clean. Batch 32, a cosine schedule, test accuracy after
every tenth of training.

The regime matrix crosses three models (``cnn``: two convolutions and two linear layers;
``resnet20``: the ReLoss paper's ResNet-20 for CIFAR with batch norm, as in ``make demo``;
``mlp``: two hidden layers of 256), clean labels and 20% / 40% noise, short and long schedules
(10 and 60 epochs; the reference regimes 'clean' and 'noisy' train 30), SGD with momentum and
AdamW, and label smoothing 0.1 in some cells (then every arm gets the smoothed labels as soft
labels, as mmpretrain's ``LabelSmoothLoss`` and ``ReLossCls(label_smooth_val=0.1)`` build them).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from tools.benchmarks.reference import Regime, regime

METRIC = "test accuracy (%)"
CHANCE = 10.0
TOLERANCE = 0.3  # points: a regime's paired mean below -0.3 misses the goal
DATA_SEED = 0
CLASSES = 10


def _regime(split, model, noise, optimizer, epochs, smoothing=0.0, note=""):
    description = (f"{model}, {'clean' if not noise else f'{noise:.0%} noise'}, {optimizer}, "
                   f"{epochs} ep" + (f", smoothing {smoothing:g}" if smoothing else "") + note)
    return Regime(split, description, dict(model=model, noise=noise, optimizer=optimizer,
                                           epochs=epochs, smoothing=smoothing))


REGIMES = {
    # design split: where designs, pretraining data and defaults are chosen
    "clean": _regime("design", "cnn", 0.0, "sgd", 30),
    "noisy": _regime("design", "cnn", 0.4, "sgd", 30, note=" (CE memorises)"),
    "cnn-clean-adamw-10": _regime("design", "cnn", 0.0, "adamw", 10),
    "cnn-n20-sgd-10": _regime("design", "cnn", 0.2, "sgd", 10),
    "mlp-n20-sgd-60": _regime("design", "mlp", 0.2, "sgd", 60),
    "mlp-clean-adamw-60-ls": _regime("design", "mlp", 0.0, "adamw", 60, 0.1),
    "resnet20-clean-sgd-10": _regime("design", "resnet20", 0.0, "sgd", 10),
    "resnet20-n40-adamw-60": _regime("design", "resnet20", 0.4, "adamw", 60),
    # held-out split: measured at the end, never tuned on
    "cnn-clean-sgd-60": _regime("held-out", "cnn", 0.0, "sgd", 60),
    "cnn-n40-adamw-10": _regime("held-out", "cnn", 0.4, "adamw", 10),
    "cnn-n20-adamw-60-ls": _regime("held-out", "cnn", 0.2, "adamw", 60, 0.1),
    "mlp-clean-sgd-10": _regime("held-out", "mlp", 0.0, "sgd", 10),
    "mlp-n40-adamw-60": _regime("held-out", "mlp", 0.4, "adamw", 60),
    "resnet20-clean-adamw-60": _regime("held-out", "resnet20", 0.0, "adamw", 60),
    "resnet20-n20-sgd-10-ls": _regime("held-out", "resnet20", 0.2, "sgd", 10, 0.1),
    "resnet20-n40-sgd-60": _regime("held-out", "resnet20", 0.4, "sgd", 60),
}
REFERENCE = ("clean", "noisy")


def original_loss(pred, target, weight=None):
    """Cross-entropy, mean over the batch (mmpretrain's CrossEntropyLoss with loss_weight 1)."""
    if target.dim() == pred.dim():  # soft labels
        return -(target * pred.float().log_softmax(-1)).sum(-1).mean()
    return F.cross_entropy(pred.float(), target)


def timing_inputs(generator):
    """128 x 10 logits and labels: a CIFAR-10 batch's worth."""
    return torch.randn(128, 10, generator=generator), torch.randint(10, (128,),
                                                                    generator=generator), None


_DATA = {}


def data(noise=0.0):
    """(train images, train labels, test images, test labels): images (M, 1, 8, 8) in [0, 1];
    ``noise`` of the training labels flipped to another class (a fixed draw per level)."""
    if not 0 <= noise < 1:
        raise ValueError(f"'noise' should be in [0, 1) but got {noise}")
    if noise not in _DATA:
        from sklearn.datasets import load_digits

        images, labels = load_digits(return_X_y=True)
        images = torch.tensor(images, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
        labels = torch.tensor(labels, dtype=torch.long)
        generator = torch.Generator().manual_seed(DATA_SEED)
        order = torch.randperm(labels.numel(), generator=generator)
        cut = labels.numel() * 2 // 3
        train, test = order[:cut], order[cut:]
        train_labels = labels[train].clone()
        if noise:
            flip = torch.rand(train.numel(), generator=generator) < noise
            shift = torch.randint(1, CLASSES, (train.numel(),), generator=generator)
            train_labels = torch.where(flip, (train_labels + shift) % CLASSES, train_labels)
        _DATA[noise] = (images[train], train_labels, images[test], labels[test])
    return _DATA[noise]


class _Block(nn.Module):
    """A basic residual block with batch norm; a strided 1x1 convolution where the shape
    changes (the shortcut mmpretrain's ResNet_CIFAR uses)."""

    def __init__(self, fan_in, fan_out, stride):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(fan_in, fan_out, 3, stride, 1, bias=False), nn.BatchNorm2d(fan_out),
            nn.ReLU(), nn.Conv2d(fan_out, fan_out, 3, 1, 1, bias=False), nn.BatchNorm2d(fan_out))
        self.shortcut = nn.Identity() if stride == 1 and fan_in == fan_out else nn.Sequential(
            nn.Conv2d(fan_in, fan_out, 1, stride, bias=False), nn.BatchNorm2d(fan_out))

    def forward(self, x):
        return F.relu(self.body(x) + self.shortcut(x))


def model(name="cnn"):
    if name == "cnn":
        return nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, CLASSES))
    if name == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256),
                             nn.ReLU(), nn.Linear(256, CLASSES))
    if name == "resnet20":  # 3 stages of 3 blocks, 16 / 32 / 64 channels: 1 + 18 + 1 layers
        layers = [nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU()]
        fan_in = 16
        for stage, width in enumerate((16, 32, 64)):
            for block in range(3):
                layers.append(_Block(fan_in, width, 2 if stage and not block else 1))
                fan_in = width
        return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(64, CLASSES))
    raise ValueError(f"'model' should be 'cnn', 'mlp' or 'resnet20' but got {name!r}")


@torch.no_grad()
def accuracy(net, images, labels):
    net.eval()
    correct = (net(images).argmax(-1) == labels).float().mean()
    net.train()
    return 100.0 * float(correct)


def quick_epochs(epochs):
    return max(2, epochs // 5)


def run(name, loss_fn, seed, quick=False, progress=None, epochs=None, lr=None):
    """Train a fresh classifier in regime ``name`` with ``loss_fn(logits, labels, None)``; test
    accuracy along training. ``epochs`` and ``lr`` override the regime's."""
    options = regime(REGIMES, name).options
    x_train, y_train, x_test, y_test = data(options["noise"])
    epochs = epochs or (quick_epochs(options["epochs"]) if quick else options["epochs"])
    torch.manual_seed(seed)
    net = model(options["model"])
    if options["optimizer"] == "sgd":
        lr = lr or 0.05
        optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    else:
        lr = lr or 2e-3
        optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.05)
    targets = y_train
    if options["smoothing"]:
        eps = options["smoothing"]
        targets = F.one_hot(y_train, CLASSES).float() * (1 - eps) + eps / CLASSES
    generator = torch.Generator().manual_seed(seed)
    batches = [index for _ in range(epochs)
               for index in torch.randperm(y_train.numel(), generator=generator).split(32)]
    checkpoints = {math.ceil(len(batches) * k / 10): k / 10 for k in range(1, 11)}
    curve = []
    for step, index in enumerate(batches, 1):
        for group in optimizer.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * (step - 1) / len(batches)))
        loss = loss_fn(net(x_train[index]), targets[index], None)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step in checkpoints:
            curve.append([checkpoints[step], accuracy(net, x_test, y_test)])
            if progress is not None:
                progress(checkpoints[step])
    return dict(curve=curve, final=curve[-1][1])
