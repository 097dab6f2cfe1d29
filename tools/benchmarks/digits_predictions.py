"""Predictions of a real model for checking surrogates: an MLP trained on scikit-learn's digits.

scikit-learn ships the digits data (1,797 8x8 images, 10 classes; no download). A 64-32-10 MLP is
trained with cross-entropy and plain SGD on one half; its logits on the other half are stored
after several epochs, from chance level to a trained model's, in the stored-predictions schema
of ``reloss.predictions`` (task 'cls', group = epoch), ready for
``reloss evaluate cls --data FILE`` or ``reloss pretrain --data FILE``.

    python -m tools.benchmarks.digits_predictions --out work_dirs/digits_predictions.pt
"""
import argparse
import os

import torch
from torch import nn

SNAPSHOTS = (0, 1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 60)


def digits_split(seed):
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    images = torch.tensor(images, dtype=torch.float32) / 16.0
    labels = torch.tensor(labels, dtype=torch.long)
    order = torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(seed))
    half = labels.numel() // 2
    train, held_out = order[:half], order[half:]
    return images[train], labels[train], images[held_out], labels[held_out]


def collect(seed=0, snapshots=SNAPSHOTS, lr=0.05, batch_size=32):
    """Train and return the stored-predictions dict, and the held-out accuracy per snapshot."""
    torch.manual_seed(seed)
    x_train, y_train, x_test, y_test = digits_split(seed)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    logits, groups, accuracy = [], [], {}
    for epoch in range(max(snapshots) + 1):
        if epoch in snapshots:
            with torch.no_grad():
                out = model(x_test)
            logits.append(out)
            groups.append(torch.full((out.shape[0],), epoch))
            accuracy[epoch] = float((out.argmax(-1) == y_test).float().mean())
        for index in torch.randperm(y_train.numel(), generator=generator).split(batch_size):
            loss = nn.functional.cross_entropy(model(x_train[index]), y_train[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    data = dict(task="cls", logits=torch.cat(logits), labels=y_test.repeat(len(logits)),
                group=torch.cat(groups))
    return data, accuracy


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="file to write (.pt)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="replace an existing --out")
    args = parser.parse_args()
    if os.path.exists(args.out) and not args.force:
        parser.error(f"--out {args.out} already exists; pass --force to replace it")
    data, accuracy = collect(args.seed)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    torch.save(data, args.out)
    print("held-out accuracy by epoch: "
          + ", ".join(f"{epoch}: {acc:.3f}" for epoch, acc in accuracy.items()))
    print(f"wrote {data['labels'].numel()} predictions ({len(accuracy)} snapshots) to {args.out}")


if __name__ == "__main__":
    main()
