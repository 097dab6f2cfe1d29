"""Training-step time of a model with ReLoss against the loss it replaces, in one run.

    python tools/benchmark_step.py [--task cls|pose] [--batch N] [--steps 20] [--device cpu|cuda]
                                   [--amp bf16|fp16]

'cls': the ReLoss paper's CIFAR ResNet-56 (``ResNetCIFARPaper``, 32x32 inputs) as an mmpretrain
``ImageClassifier``, ReLossCls against cross-entropy (batch 128 by default). 'pose':
SimpleBaseline ResNet-50 at 256x192 as an mmpose ``TopdownPoseEstimator`` (64x48 heatmaps),
ReLossPose against ``KeypointMSELoss`` (batch 32 by default). Both models are built twice,
identical but for the loss, and whole training steps (forward in 'loss' mode, backward, optimizer
step) of the two are timed interleaved, so that drifts in machine speed hit both alike. Prints the
median step time of each and the ratio.
"""
import argparse
import statistics
import time

import torch


def classifier(depth, loss, classes):
    from mmengine.registry import init_default_scope
    from mmpretrain.registry import MODELS

    import reloss.mmpretrain  # noqa: F401  (registers ReLossCls and ResNetCIFARPaper)

    init_default_scope("mmpretrain")
    return MODELS.build(dict(
        type="ImageClassifier",
        backbone=dict(type="ResNetCIFARPaper", depth=depth),
        neck=dict(type="GlobalAveragePooling"),
        head=dict(type="LinearClsHead", num_classes=classes, in_channels=64, loss=loss)))


def pose_estimator(loss):
    from mmengine.registry import init_default_scope
    from mmpose.registry import MODELS

    import reloss.mmpose  # noqa: F401  (registers ReLossPose)

    init_default_scope("mmpose")
    codec = dict(type="MSRAHeatmap", input_size=(192, 256), heatmap_size=(48, 64), sigma=2)
    return MODELS.build(dict(
        type="TopdownPoseEstimator",
        backbone=dict(type="ResNet", depth=50),
        head=dict(type="HeatmapHead", in_channels=2048, out_channels=17, loss=loss,
                  decoder=codec)))


def cls_case(args, device):
    from mmpretrain.structures import DataSample

    losses = {"cross-entropy": dict(type="CrossEntropyLoss"), "ReLossCls": dict(type="ReLossCls")}
    models = {name: classifier(args.depth, loss, args.classes) for name, loss in losses.items()}
    images = torch.randn(args.batch, 3, 32, 32, device=device)
    labels = torch.randint(args.classes, (args.batch,), device=device)
    samples = [DataSample().set_gt_label(label).to(device) for label in labels]
    title = f"ResNet-{args.depth}, batch {args.batch} of 3x32x32, {args.classes} classes"
    return models, images, samples, title


def pose_case(args, device):
    from mmengine.structures import InstanceData, PixelData
    from mmpose.structures import PoseDataSample

    from reloss.samplers import gaussian_heatmaps

    losses = {"MSE": dict(type="KeypointMSELoss", use_target_weight=True),
              "ReLossPose": dict(type="ReLossPose", use_target_weight=True)}
    models = {name: pose_estimator(loss) for name, loss in losses.items()}
    images = torch.randn(args.batch, 3, 256, 192, device=device)
    generator = torch.Generator().manual_seed(0)
    centers = torch.rand(args.batch, 17, 2, generator=generator) * torch.tensor([47.0, 63.0])
    targets = gaussian_heatmaps(centers, (64, 48), 2.0).to(device)
    samples = []
    for target in targets:
        sample = PoseDataSample()
        sample.gt_fields = PixelData(heatmaps=target)
        sample.gt_instance_labels = InstanceData(
            keypoint_weights=torch.ones(1, 17, device=device))
        samples.append(sample)
    title = f"SimpleBaseline ResNet-50, batch {args.batch} of 3x256x192, 64x48 heatmaps"
    return models, images, samples, title


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", choices=["cls", "pose"], default="cls")
    parser.add_argument("--depth", type=int, default=56, help="cls: ResNet depth")
    parser.add_argument("--batch", type=int, help="default 128 (cls), 32 (pose)")
    parser.add_argument("--classes", type=int, default=10, help="cls: number of classes")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per loss")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", choices=["bf16", "fp16"], help="autocast dtype (GPU)")
    args = parser.parse_args(argv)
    args.batch = args.batch or dict(cls=128, pose=32)[args.task]
    if args.steps < 1 or args.batch < 1:
        parser.error(f"--steps and --batch should be positive but got {args.steps} and "
                     f"{args.batch}")
    device = torch.device(args.device)
    torch.manual_seed(0)
    built, images, samples, title = (cls_case if args.task == "cls" else pose_case)(args, device)
    models = {}
    for name, model in built.items():
        model = model.to(device).train()
        models[name] = (model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9))
    dtype = dict(bf16=torch.bfloat16, fp16=torch.float16).get(args.amp)

    def step(model, optimizer):
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = sum(value for key, value in model(images, samples, mode="loss").items()
                       if key.startswith("loss"))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize()

    times = {name: [] for name in models}
    for i in range(args.warmup + args.steps):
        for name, (model, optimizer) in models.items():
            synchronize()
            start = time.perf_counter()
            step(model, optimizer)
            synchronize()
            if i >= args.warmup:
                times[name].append(1000 * (time.perf_counter() - start))
    medians = {name: statistics.median(values) for name, values in times.items()}
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"cpu, {torch.get_num_threads()} threads")
    print(f"{title}, {args.steps} steps each, {where}"
          f"{', autocast ' + args.amp if args.amp else ''}:")
    for name, value in medians.items():
        print(f"  {name:14s} median step {value:9.2f} ms")
    ours, theirs = list(medians)[1], list(medians)[0]
    ratio = medians[ours] / medians[theirs]
    print(f"  ratio {ours} / {theirs}: {ratio:.3f}")
    return dict(medians=medians, ratio=ratio)


if __name__ == "__main__":
    main()
