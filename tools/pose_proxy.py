"""A pose experiment that runs on a CPU: MSE against ReLossPose through mmpose's real pipeline.

    python tools/pose_proxy.py [--out DIR] [--seeds 3] [--epochs 24] [--train 480] [--val 120]

Writes a generated COCO-format keypoint set (``tools/generate_coco_keypoints.py``: 17-keypoint
stick figures, look-alike left and right joints, distractors, occlusions), then, per loss and seed,
trains a small top-down heatmap model with mmengine's Runner and ``tools/train.py`` from mmpose's
own SimpleBaseline config (``td-hm_res50_8xb64-210e_coco-256x192.py``: its pipeline, optimizer
and schedule shape), with a ResNet-18 of half width (last stage not strided), 64x48 inputs and
16x12 heatmaps in place of ResNet-50 at 256x192, and the loss swapped. Validation uses the real
``CocoMetric`` (OKS AP, with ground-truth boxes) and mmpose's ``PCKAccuracy`` (threshold 0.05 of
the box). Prints the table and writes it, with the validation curves (curves.png), to DIR.
"""
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import curves as curves_plot  # noqa: E402
import generate_coco_keypoints  # noqa: E402
import train  # noqa: E402

LOSSES = {"MSE": "dict(type='KeypointMSELoss', use_target_weight=True)",
          "ReLossPose": "dict(type='ReLossPose', use_target_weight=True)"}

CONFIG = """
_base_ = 'mmpose::body_2d_keypoint/topdown_heatmap/coco/td-hm_res50_8xb64-210e_coco-256x192.py'
custom_imports = dict(imports=['reloss.mmpose'{extra_import}], allow_failed_imports=False)
data_root = '{root}/'
codec = dict(type='MSRAHeatmap', input_size=(48, 64), heatmap_size=(12, 16), sigma=2)
model = dict(
    backbone=dict(depth=18, base_channels=32, strides=(1, 2, 2, 1), init_cfg=None),
    head=dict(in_channels=256, deconv_out_channels=(64, 64), deconv_kernel_sizes=(4, 4),
              loss=dict(_delete_=True, **{loss}), decoder=codec),
    test_cfg=dict(flip_test=False))
train_pipeline = [
    dict(type='LoadImage'), dict(type='GetBBoxCenterScale'),
    dict(type='RandomFlip', direction='horizontal'), dict(type='RandomHalfBody'),
    dict(type='RandomBBoxTransform'), dict(type='TopdownAffine', input_size=codec['input_size']),
    dict(type='GenerateTarget', encoder=codec), dict(type='PackPoseInputs')]
val_pipeline = [
    dict(type='LoadImage'), dict(type='GetBBoxCenterScale'),
    dict(type='TopdownAffine', input_size=codec['input_size']), dict(type='PackPoseInputs')]
train_dataloader = dict(batch_size=32, num_workers=0, persistent_workers=False, dataset=dict(
    data_root=data_root, ann_file='annotations/person_keypoints_train.json',
    data_prefix=dict(img='train/'), pipeline=train_pipeline))
val_dataloader = dict(batch_size=32, num_workers=0, persistent_workers=False, dataset=dict(
    data_root=data_root, ann_file='annotations/person_keypoints_val.json', bbox_file=None,
    data_prefix=dict(img='val/'), pipeline=val_pipeline))
test_dataloader = val_dataloader
val_evaluator = [
    dict(type='CocoMetric', ann_file=data_root + 'annotations/person_keypoints_val.json'),
    dict(type='PCKAccuracy', thr=0.05)]
test_evaluator = val_evaluator
optim_wrapper = dict(optimizer=dict(lr=2e-3))
train_cfg = dict(max_epochs={epochs}, val_interval={val_interval})
param_scheduler = [
    dict(type='LinearLR', begin=0, end=20, start_factor=0.01, by_epoch=False),
    dict(type='CosineAnnealingLR', T_max={epochs}, by_epoch=True)]
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval={epochs}, save_best=None))
# mmpose names its visualizer 'visualizer': several runs in one process need their own.
visualizer = dict(name='{visualizer}')
randomness = dict(seed={seed})
{extra}
"""


def config_text(root, loss="ReLossPose", epochs=1, val_interval=1, seed=0, extra="",
                extra_import=""):
    """The proxy's config for ``loss`` (a key of LOSSES), as text."""
    return CONFIG.format(root=root, loss=LOSSES[loss], epochs=epochs, val_interval=val_interval,
                         seed=seed, extra=extra, extra_import=extra_import,
                         visualizer=f"visualizer_{loss}_{seed}_{time.time_ns()}")


def validation_curve(work_dir):
    """[(epoch, coco/AP, PCK)] from the Runner's scalar log."""
    return [(r["step"], r["coco/AP"], r["PCK"]) for r in train.logged_scalars(work_dir, "coco/AP")]


def plot(path, curves):
    plt = curves_plot.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, column, label in zip(axes, (1, 2), ("COCO AP", "PCK@0.05"), strict=True):
        for name, runs in curves.items():
            curves_plot.plot_seeds(ax, [point[0] for point in runs[0]],
                                   [[point[column] for point in run] for run in runs], name)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.legend()
    fig.suptitle("generated COCO keypoints, mean of seeds (band: min to max)", fontsize=10)
    curves_plot.save(plt, fig, path)


def main(argv=None):
    parser = curves_plot.experiment_parser(__doc__, "pose_proxy")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=24)
    parser.add_argument("--train", type=int, default=480, help="training images")
    parser.add_argument("--val", type=int, default=120, help="validation images")
    args = parser.parse_args(argv)
    for name in ("seeds", "epochs", "train", "val"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} should be positive but got {getattr(args, name)}")
    curves_plot.refuse_existing(parser, args.out)
    started = time.time()
    root = os.path.abspath(os.path.join(args.out, "data"))
    generate_coco_keypoints.write(root, args.train, args.val)
    print(f"[reloss] wrote {args.train} training and {args.val} validation images to {root}",
          flush=True)
    curves = {name: [] for name in LOSSES}
    interval = max(1, args.epochs // 4)
    for seed in range(args.seeds):
        for name in LOSSES:
            tag = f"{name.lower()}_seed{seed}"
            config = os.path.join(args.out, f"{tag}.py")
            with open(config, "w", encoding="utf-8") as f:
                f.write(config_text(root, name, args.epochs, interval, seed))
            t0 = time.time()
            train.main([config, "--work-dir", os.path.join(args.out, tag)])
            curves[name].append(validation_curve(os.path.join(args.out, tag)))
            _, ap, pck = curves[name][-1][-1]
            print(f"[reloss] {name}, seed {seed}: AP {ap:.3f}, PCK {pck:.3f} "
                  f"({time.time() - t0:.0f} s)", flush=True)
    lines = ["| loss | COCO AP, mean +- std | worst seed | PCK@0.05, mean +- std | "
             "AP after the first validation |", "|---|---|---|---|---|"]
    for name, runs in curves.items():
        aps, pcks = [run[-1][1] for run in runs], [run[-1][2] for run in runs]
        lines.append(f"| {name} | {statistics.fmean(aps):.3f} +- {curves_plot.std(aps):.3f} | "
                     f"{min(aps):.3f} | {statistics.fmean(pcks):.3f} +- "
                     f"{curves_plot.std(pcks):.3f} | "
                     f"{statistics.fmean(run[0][1] for run in runs):.3f} |")
    table = "\n".join(lines) + "\n"
    plot(os.path.join(args.out, "curves.png"), curves)
    with open(os.path.join(args.out, "results.md"), "w", encoding="utf-8") as f:
        f.write(table)
    with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(dict(curves=curves, seeds=args.seeds, epochs=args.epochs, train=args.train,
                       val=args.val), f, indent=1)
    print()
    print(f"Small top-down model on generated COCO keypoints, {args.epochs} epochs, {args.seeds} "
          f"seed(s) per loss (same seeds for both):")
    print(table)
    print(f"[reloss] {time.time() - started:.0f} s in all. Wrote results.md, results.json, "
          f"curves.png and the runs' work dirs to {args.out}/")
    return curves


if __name__ == "__main__":
    main()
