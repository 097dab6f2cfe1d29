"""A pose experiment that runs on a CPU: MSE against ReLossPose through mmpose's real pipeline.

    python -m tools.benchmarks.pose_proxy [--out DIR] [--seeds 3] [--first-seed 0] [--epochs 24]
                               [--train 480] [--val 120] [--force]

Writes a generated COCO-format keypoint set (``tools/benchmarks/generate_coco_keypoints.py``:
17-keypoint stick figures, look-alike left and right joints, distractors, occlusions), then, per
loss and seed, trains a small top-down heatmap model with mmengine's Runner and ``tools/train.py``
from mmpose's own SimpleBaseline config (``td-hm_res50_8xb64-210e_coco-256x192.py``: its pipeline,
optimizer and schedule shape), with a ResNet-18 of half width (last stage not strided), 64x48 inputs
and 16x12 heatmaps in place of ResNet-50 at 256x192, and the loss swapped. Validation uses the real
``CocoMetric`` (OKS AP, with ground-truth boxes) and mmpose's ``PCKAccuracy`` (threshold 0.05 of the
box). ReLossPose is compared with MSE seed by seed (the paired difference, its mean and standard
error). Prints a progress bar per run and the table; writes the table (results.md), the figures and
provenance (results.json), the validation curves (curves.png) and each run's config, checkpoint and
logs (console.log) to DIR.
"""
import os
import statistics
import time

from tools.benchmarks import experiment, generate_coco_keypoints

LOSSES = {"MSE": "dict(type='KeypointMSELoss', use_target_weight=True)",
          "ReLossPose": "dict(type='ReLossPose', use_target_weight=True)"}
BASELINE = "MSE"

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
    return [(r["step"], r["coco/AP"], r["PCK"])
            for r in experiment.mmengine_scalars(work_dir, "coco/AP")]


def build_parser():
    parser = experiment.parser(__doc__, "pose_proxy", seeds=3, module="tools.benchmarks.pose_proxy")
    parser.add_argument("--epochs", type=int, default=24, help="epochs per run (default 24)")
    parser.add_argument("--train", type=int, default=480, help="training images (default 480)")
    parser.add_argument("--val", type=int, default=120, help="validation images (default 120)")
    return parser


def table(curves):
    """A row per loss: final COCO AP and PCK, each against MSE's seed by seed."""
    header = ["loss", "COCO AP, mean +- std", "worst seed", "AP minus MSE's, paired: mean +- SE",
              "PCK@0.05, mean +- std", "PCK minus MSE's, paired: mean +- SE",
              "AP after the first validation"]
    finals = {name: {run["seed"]: run["curve"][-1] for run in runs}
              for name, runs in curves.items()}
    rows, paired = [], {}
    for name, runs in curves.items():
        aps = {seed: point[1] for seed, point in finals[name].items()}
        pcks = {seed: point[2] for seed, point in finals[name].items()}
        if name != BASELINE:
            base = finals[BASELINE]
            paired[name] = dict(
                ap=experiment.paired({seed: p[1] for seed, p in base.items()}, aps),
                pck=experiment.paired({seed: p[2] for seed, p in base.items()}, pcks))
        rows.append([name, experiment.mean_std(aps.values(), 3), f"{min(aps.values()):.3f}",
                     paired[name]["ap"].format(3) if name in paired else "-",
                     experiment.mean_std(pcks.values(), 3),
                     paired[name]["pck"].format(3) if name in paired else "-",
                     f"{statistics.fmean(run['curve'][0][1] for run in runs):.3f}"])
    return experiment.markdown_table(header, rows), paired


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("epochs", "train", "val"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} should be positive but got {getattr(args, name)}")
    all_runs = experiment.seed_runs(parser, args, LOSSES, ["data"], configs=True)
    started = time.time()
    print(f"[reloss] a small top-down heatmap model through mmpose's pipeline and mmengine's "
          f"Runner, {' against '.join(LOSSES)}: {args.seeds} seed(s) each, {args.epochs} epoch(s) "
          f"a run", flush=True)
    root = os.path.abspath(os.path.join(args.out, "data"))
    generate_coco_keypoints.write(root, args.train, args.val)
    print(f"[reloss] wrote {args.train} training and {args.val} validation images to {root}",
          flush=True)
    interval = max(1, args.epochs // 4)

    def train(run, bar):
        config = os.path.join(args.out, f"{run.tag}.py")
        with open(config, "w", encoding="utf-8") as f:
            f.write(config_text(root, run.arm, args.epochs, interval, run.seed))
        work_dir = os.path.join(args.out, run.tag)
        experiment.train_mmengine(config, work_dir, bar, metric="coco/AP")
        return dict(seed=run.seed, curve=validation_curve(work_dir))

    curves = experiment.run_all(
        all_runs, train, lambda r: f"AP {r['curve'][-1][1]:.3f}, PCK {r['curve'][-1][2]:.3f}")
    text, paired = table(curves)
    experiment.plot_seeds(os.path.join(args.out, "curves.png"), [
        experiment.Panel("epoch", label, {
            name: ([point[0] for point in runs[0]["curve"]],
                   [[point[column] for point in run["curve"]] for run in runs])
            for name, runs in curves.items()})
        for column, label in ((1, "COCO AP"), (2, "PCK@0.05"))], "generated COCO keypoints")
    heading = (f"Small top-down model on generated COCO keypoints, {args.epochs} epoch(s), "
               f"{args.seeds} seed(s) per loss (the same seeds for both):")
    record = dict(curves=curves, paired=experiment.paired_dicts(paired),
                  seeds=list(experiment.seeds(args)), epochs=args.epochs, train=args.train,
                  val=args.val,
                  provenance=experiment.provenance("pose_proxy", argv, surrogates=["pose"],
                                                   packages=("mmengine", "mmpose", "mmcv-lite")))
    folders = (f"each run's config is {args.out}/<run>.py, its checkpoints and full log "
               f"(console.log) are in {args.out}/<run>/, e.g. {all_runs[0].tag}/")
    experiment.report(args.out, heading, text, record, started, folders)
    return experiment.seed_curves(curves)


if __name__ == "__main__":
    main()
