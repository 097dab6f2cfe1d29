"""Classification reference task: a small CNN on scikit-learn's digits (1,797 real 8x8 images of
10 handwritten digits; they ship with scikit-learn, no download).

A fixed two-thirds / one-third split (the same for every arm and seed); "noisy" replaces 40% of
the training labels by another class drawn at random (symmetric noise, fixed draw), the test labels
stay clean. SGD with momentum and a cosine schedule, batch 32; test accuracy after every tenth of
training.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

METRIC = "test accuracy (%)"
CHANCE = 10.0
VARIANTS = ("clean", "noisy")
NOISE = 0.4
DATA_SEED = 0


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


def data(variant):
    """(train images, train labels, test images, test labels): images (M, 1, 8, 8) in [0, 1]."""
    if variant not in VARIANTS:
        raise ValueError(f"'variant' should be one of {VARIANTS} but got {variant!r}")
    if variant not in _DATA:
        from sklearn.datasets import load_digits

        images, labels = load_digits(return_X_y=True)
        images = torch.tensor(images, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
        labels = torch.tensor(labels, dtype=torch.long)
        generator = torch.Generator().manual_seed(DATA_SEED)
        order = torch.randperm(labels.numel(), generator=generator)
        cut = labels.numel() * 2 // 3
        train, test = order[:cut], order[cut:]
        train_labels = labels[train].clone()
        if variant == "noisy":
            flip = torch.rand(train.numel(), generator=generator) < NOISE
            shift = torch.randint(1, 10, (train.numel(),), generator=generator)
            train_labels = torch.where(flip, (train_labels + shift) % 10, train_labels)
        _DATA[variant] = (images[train], train_labels, images[test], labels[test])
    return _DATA[variant]


def model():
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10))


@torch.no_grad()
def accuracy(net, images, labels):
    net.eval()
    correct = (net(images).argmax(-1) == labels).float().mean()
    net.train()
    return 100.0 * float(correct)


def run(variant, loss_fn, seed, quick=False, progress=None, epochs=None, lr=0.05):
    """Train a fresh CNN with ``loss_fn(logits, labels, None)``; test accuracy along training."""
    x_train, y_train, x_test, y_test = data(variant)
    epochs = epochs or (4 if quick else 30)
    torch.manual_seed(seed)
    net = model()
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    generator = torch.Generator().manual_seed(seed)
    batches = [index for _ in range(epochs)
               for index in torch.randperm(y_train.numel(), generator=generator).split(32)]
    checkpoints = {math.ceil(len(batches) * k / 10): k / 10 for k in range(1, 11)}
    curve = []
    for step, index in enumerate(batches, 1):
        for group in optimizer.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * (step - 1) / len(batches)))
        loss = loss_fn(net(x_train[index]), y_train[index], None)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step in checkpoints:
            curve.append([checkpoints[step], accuracy(net, x_test, y_test)])
            if progress is not None:
                progress(checkpoints[step])
    return dict(curve=curve, final=curve[-1][1])
