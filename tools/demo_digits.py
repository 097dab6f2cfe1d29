"""The main demo: train a classifier through mmengine's Runner with cross-entropy and with
ReLossCls, on real images that ship with scikit-learn (no download), and compare.

    python tools/demo_digits.py [--out DIR] [--seeds 3] [--epochs 12]

scikit-learn's digits (1,797 8x8 images of handwritten digits) are written as PNG files in
mmpretrain's CustomDataset layout (two thirds for training, one third for validation). For each
loss and seed, ``tools/train.py`` trains the ReLoss paper's ResNet-20 for CIFAR from the same
initialisation and data order, validating and saving a checkpoint every epoch. Then the
predictions of every saved checkpoint on the validation images are cut into chunks of 128 and each
loss is scored by how well it ranks them: Spearman(-loss, accuracy) over chunks, the quantity the
surrogate was learned to maximise. Prints the table and writes it, with the validation curves
(curves.png), to DIR.
"""
import json
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import collect_predictions  # noqa: E402
import curves as curves_plot  # noqa: E402
import train  # noqa: E402

LOSSES = {"cross-entropy": "dict(type='CrossEntropyLoss')", "ReLossCls": "dict(type='ReLossCls')"}

CONFIG = """
_base_ = 'mmpretrain::resnet/resnet18_8xb16_cifar10.py'
custom_imports = dict(imports=['reloss.mmpretrain'], allow_failed_imports=False)
data_preprocessor = dict(num_classes=10, mean=[0.0] * 3, std=[255.0] * 3, to_rgb=False)
model = dict(backbone=dict(_delete_=True, type='ResNetCIFARPaper', depth=20),
             head=dict(in_channels=64, loss={loss}))
pipeline = [dict(type='LoadImageFromFile'), dict(type='PackInputs')]
train_dataloader = dict(batch_size=32, num_workers=0, persistent_workers=False, dataset=dict(
    _delete_=True, type='CustomDataset', data_root='{data}', data_prefix='train',
    pipeline=pipeline))
val_dataloader = dict(batch_size=256, num_workers=0, persistent_workers=False, dataset=dict(
    _delete_=True, type='CustomDataset', data_root='{data}', data_prefix='val',
    pipeline=pipeline))
test_dataloader = val_dataloader
optim_wrapper = dict(optimizer=dict(lr=0.05, weight_decay=5e-4))
param_scheduler = dict(_delete_=True, type='CosineAnnealingLR', T_max={epochs}, by_epoch=True)
train_cfg = dict(max_epochs={epochs}, val_interval=1)
default_hooks = dict(logger=dict(interval=20), checkpoint=dict(interval=1, max_keep_ckpts={epochs}))
randomness = dict(seed={seed}, deterministic=False)
"""


def write_digits(root):
    """scikit-learn's digits as 8x8 grey PNGs in class folders; returns (train, val) counts."""
    from PIL import Image
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(labels))
    cut = len(labels) * 2 // 3
    for split, members in (("train", order[:cut]), ("val", order[cut:])):
        for i in members:
            folder = os.path.join(root, split, str(labels[i]))
            os.makedirs(folder, exist_ok=True)
            pixels = (images[i].reshape(8, 8) * 255 / 16).astype(np.uint8)
            Image.fromarray(pixels).convert("RGB").save(os.path.join(folder, f"{i}.png"))
    return cut, len(labels) - cut


def validation_curve(work_dir):
    """[(epoch, top-1 accuracy %)] from the Runner's scalar log."""
    records = train.logged_scalars(work_dir, "accuracy/top1")
    return [(record["step"], record["accuracy/top1"]) for record in records]


def ranking(config, work_dir, epochs, surrogate):
    """Spearman(-loss, accuracy) over chunks of 128 of the model's own validation predictions,
    all epochs, for cross-entropy and the surrogate."""
    from mmengine.config import Config

    from reloss import pretrain, samplers

    cfg = Config.fromfile(config)
    logits, labels, groups = [], [], []
    for epoch in range(1, epochs + 1):
        x, y = collect_predictions.collect(cfg, os.path.join(work_dir, f"epoch_{epoch}.pth"),
                                           "val", "cpu")
        logits.append(x), labels.append(y), groups.append(torch.full_like(y, epoch))
    path = os.path.join(work_dir, "val_predictions.pt")
    torch.save(dict(task="cls", logits=torch.cat(logits), labels=torch.cat(labels),
                    group=torch.cat(groups)), path)
    chunks = samplers.load_predictions(path, "cls", 128, torch.Generator().manual_seed(0))
    data = pretrain.prepare_batches(surrogate, "cls", chunks)
    figures = pretrain.evaluate(surrogate, data, pretrain.TASKS["cls"].band)
    return {"cross-entropy": figures["baseline"]["full"],
            "ReLossCls": figures["surrogate"]["full"], "chunks": figures["baseline"]["chunks"]}


def plot(path, curves):
    plt = curves_plot.pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, runs in curves.items():
        curves_plot.plot_seeds(ax, [epoch for epoch, _ in runs[0]],
                               [[acc for _, acc in run] for run in runs], name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation top-1 accuracy (%)")
    ax.set_title("ResNet-20 on scikit-learn digits (mean of seeds, band: min to max)",
                 fontsize=10)
    ax.legend()
    curves_plot.save(plt, fig, path)


def main(argv=None):
    parser = curves_plot.experiment_parser(__doc__, "demo")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.epochs < 1:
        parser.error(f"--seeds and --epochs should be positive but got {args.seeds} and "
                     f"{args.epochs}")
    curves_plot.refuse_existing(parser, args.out)
    import reloss

    started = time.time()
    data = os.path.abspath(os.path.join(args.out, "data"))
    counts = write_digits(data)
    print(f"[reloss] wrote scikit-learn's digits to {data}: {counts[0]} training and {counts[1]} "
          f"validation images", flush=True)
    curves = {name: [] for name in LOSSES}
    rankings = {name: [] for name in LOSSES}
    surrogate = reloss.load_surrogate("cls")
    for seed in range(args.seeds):
        for name, loss in LOSSES.items():
            tag = f"{'ce' if name == 'cross-entropy' else 'reloss'}_seed{seed}"
            config = os.path.join(args.out, f"{tag}.py")
            with open(config, "w", encoding="utf-8") as f:
                f.write(CONFIG.format(loss=loss, data=data, epochs=args.epochs, seed=seed))
            work_dir = os.path.join(args.out, tag)
            t0 = time.time()
            train.main([config, "--work-dir", work_dir])
            curves[name].append(validation_curve(work_dir))
            rankings[name].append(ranking(config, work_dir, args.epochs, surrogate))
            print(f"[reloss] {name}, seed {seed}: final accuracy {curves[name][-1][-1][1]:.2f}% "
                  f"({time.time() - t0:.0f} s)", flush=True)

    lines = ["| loss | final val accuracy (%), mean +- std | worst seed | after epoch 1 | "
             "Spearman(-loss, accuracy) on its models' chunks: cross-entropy / ReLossCls |",
             "|---|---|---|---|---|"]
    for name in LOSSES:
        finals = [run[-1][1] for run in curves[name]]
        firsts = [run[0][1] for run in curves[name]]
        spread = curves_plot.std(finals)
        ce = statistics.fmean(r["cross-entropy"] for r in rankings[name])
        ours = statistics.fmean(r["ReLossCls"] for r in rankings[name])
        lines.append(f"| {name} | {statistics.fmean(finals):.2f} +- {spread:.2f} | "
                     f"{min(finals):.2f} | {statistics.fmean(firsts):.2f} | "
                     f"{ce:.3f} / {ours:.3f} |")
    table = "\n".join(lines) + "\n"
    plot(os.path.join(args.out, "curves.png"), curves)
    with open(os.path.join(args.out, "results.md"), "w", encoding="utf-8") as f:
        f.write(table)
    with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(dict(curves=curves, rankings=rankings, seeds=args.seeds, epochs=args.epochs),
                  f, indent=1)
    print()
    print(f"ResNet-20 trained on scikit-learn's digits for {args.epochs} epochs, {args.seeds} "
          f"seed(s) per loss (same seeds for both):")
    print(table)
    print(f"[reloss] {time.time() - started:.0f} s in all. Wrote results.md, results.json, "
          f"curves.png and the runs' work dirs to {args.out}/")
    return dict(curves=curves, rankings=rankings)


if __name__ == "__main__":
    main()
