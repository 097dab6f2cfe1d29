"""The main demo: train a classifier through mmengine's Runner with cross-entropy and with
ReLossCls, on real images that ship with scikit-learn (no download), and compare.

    python -m tools.benchmarks.demo_digits [--out DIR] [--seeds 3] [--first-seed 0] [--epochs 15]
        [--force]

scikit-learn's digits (1,797 8x8 images of handwritten digits) are written as PNG files in
mmpretrain's CustomDataset layout (two thirds for training, one third for validation). For each
loss and seed, ``tools/train.py`` trains the ReLoss paper's ResNet-20 for CIFAR from the same
initialisation and data order, validating and saving a checkpoint every epoch. Then the
predictions of every saved checkpoint on the validation images are cut into chunks of 128 and each
loss is scored by how well it ranks them: Spearman(-loss, accuracy) over chunks, the quantity the
surrogate was learned to maximise. ReLossCls is compared with cross-entropy seed by seed (the
paired difference, its mean and standard error). Prints a progress bar per run and the table;
writes the table (results.md), the figures and provenance (results.json), the validation curves
(curves.png) and each run's config, checkpoints and logs (console.log) to DIR.
"""
import os
import time

import numpy as np
import torch

from reloss.cli import collect
from tools.benchmarks import experiment

ARMS = {"cross-entropy": "dict(type='CrossEntropyLoss')", "ReLossCls": "dict(type='ReLossCls')"}
BASELINE = "cross-entropy"

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
    records = experiment.mmengine_scalars(work_dir, "accuracy/top1")
    return [(record["step"], record["accuracy/top1"]) for record in records]


def ranking(config, work_dir, epochs, surrogate):
    """Spearman(-loss, accuracy) over chunks of 128 of the model's own validation predictions,
    all epochs, for cross-entropy and the surrogate."""
    from mmengine.config import Config

    from reloss import get_task, pretrain
    from reloss.predictions import load_predictions

    cfg = Config.fromfile(config)
    logits, labels, groups = [], [], []
    for epoch in range(1, epochs + 1):
        x, y = collect.collect(cfg, os.path.join(work_dir, f"epoch_{epoch}.pth"), "val", "cpu")
        logits.append(x), labels.append(y), groups.append(torch.full_like(y, epoch))
    path = os.path.join(work_dir, "val_predictions.pt")
    torch.save(dict(task="cls", logits=torch.cat(logits), labels=torch.cat(labels),
                    group=torch.cat(groups)), path)
    chunks = load_predictions(path, "cls", 128, torch.Generator().manual_seed(0))
    data = pretrain.prepare_batches(surrogate, "cls", chunks)
    figures = pretrain.evaluate(surrogate, data, get_task("cls").band)
    return {"cross-entropy": figures["baseline"]["full"],
            "ReLossCls": figures["surrogate"]["full"], "chunks": figures["baseline"]["chunks"]}


def build_parser():
    parser = experiment.parser(__doc__, "demo", seeds=3, module="tools.benchmarks.demo_digits")
    parser.add_argument("--epochs", type=int, default=15, help="epochs per run (default 15)")
    return parser


def table(curves, rankings):
    """The results table: a row per loss, final accuracy against cross-entropy's seed by seed."""
    header = ["loss", "final val accuracy (%), mean +- std", "worst seed", "after epoch 1",
              f"minus {BASELINE}'s, paired by seed: mean +- SE",
              "Spearman(-loss, accuracy) on its models' chunks: cross-entropy / ReLossCls"]
    finals = {name: {run["seed"]: run["curve"][-1][1] for run in runs}
              for name, runs in curves.items()}
    rows, paired = [], {}
    for name, runs in curves.items():
        if name != BASELINE:
            paired[name] = experiment.paired(finals[BASELINE], finals[name])
        ce = np.mean([r["cross-entropy"] for r in rankings[name]])
        ours = np.mean([r["ReLossCls"] for r in rankings[name]])
        rows.append([name, experiment.mean_std(finals[name].values()),
                     f"{min(finals[name].values()):.2f}",
                     f"{np.mean([run['curve'][0][1] for run in runs]):.2f}",
                     paired[name].format() if name in paired else "-",
                     f"{ce:.3f} / {ours:.3f}"])
    return experiment.markdown_table(header, rows), paired


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs should be positive but got {args.epochs}")
    all_runs = experiment.seed_runs(parser, args, ARMS, ["data"], configs=True)
    import reloss

    started = time.time()
    print(f"[reloss] ResNet-20 on scikit-learn's digits through mmengine's Runner, "
          f"{' against '.join(ARMS)}: {args.seeds} seed(s) each, {args.epochs} epoch(s) a run",
          flush=True)
    data = os.path.abspath(os.path.join(args.out, "data"))
    counts = write_digits(data)
    print(f"[reloss] wrote {counts[0]} training and {counts[1]} validation images to {data}",
          flush=True)
    surrogate = reloss.load_surrogate("cls")

    def train(run, bar):
        config = os.path.join(args.out, f"{run.tag}.py")
        with open(config, "w", encoding="utf-8") as f:
            f.write(CONFIG.format(loss=ARMS[run.arm], data=data, epochs=args.epochs,
                                  seed=run.seed))
        work_dir = os.path.join(args.out, run.tag)
        experiment.train_mmengine(config, work_dir, bar, metric="accuracy/top1")
        bar.set_postfix_str("ranking the checkpoints' predictions")
        with experiment.quiet(os.path.join(work_dir, "console.log")):
            return dict(seed=run.seed, curve=validation_curve(work_dir),
                        ranking=ranking(config, work_dir, args.epochs, surrogate))

    results = experiment.run_all(
        all_runs, train, lambda r: f"final accuracy {r['curve'][-1][1]:.2f}%")
    curves = {name: [dict(seed=r["seed"], curve=r["curve"]) for r in runs]
              for name, runs in results.items()}
    rankings = {name: [r["ranking"] for r in runs] for name, runs in results.items()}
    text, paired = table(curves, rankings)
    experiment.plot_seeds(os.path.join(args.out, "curves.png"), [experiment.Panel(
        "epoch", "validation top-1 accuracy (%)",
        {name: ([epoch for epoch, _ in runs[0]["curve"]],
                [[accuracy for _, accuracy in run["curve"]] for run in runs])
         for name, runs in curves.items()})], "ResNet-20 on scikit-learn digits")
    heading = (f"ResNet-20 trained on scikit-learn's digits for {args.epochs} epoch(s), "
               f"{args.seeds} seed(s) per loss (the same seeds for both):")
    record = dict(curves=curves, rankings=rankings,
                  paired={name: p.as_dict() for name, p in paired.items()},
                  seeds=list(experiment.seeds(args)), epochs=args.epochs,
                  provenance=experiment.provenance("demo_digits", argv, surrogates=["cls"],
                                                   packages=("mmengine", "mmpretrain")))
    experiment.report(args.out, heading, text, record, started,
                      f"each run's config is {args.out}/<run>.py, its checkpoints and full log "
                      f"(console.log) are in {args.out}/<run>/, e.g. {all_runs[0].tag}/")
    return dict(curves=experiment.seed_curves(curves),
                rankings=rankings, paired=paired)


if __name__ == "__main__":
    main()
