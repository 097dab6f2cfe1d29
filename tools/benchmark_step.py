"""Training-step time of an mmpretrain classifier with ReLossCls against cross-entropy.

    python tools/benchmark_step.py [--depth 56] [--batch 128] [--steps 20] [--device cpu|cuda]
                                   [--amp bf16|fp16]

Builds the ReLoss paper's CIFAR ResNet (``ResNetCIFARPaper``, 32x32 inputs) as an mmpretrain
``ImageClassifier`` twice, identical but for the head's loss, and times whole training steps
(forward in 'loss' mode, backward, SGD step) of both, interleaved so that drifts in machine speed
hit both alike. Prints the median step time of each and the ratio ReLossCls / cross-entropy.
"""
import argparse
import statistics
import time

import torch

import reloss.mmpretrain  # noqa: F401  (registers ReLossCls and ResNetCIFARPaper)


def classifier(depth, loss, classes):
    from mmpretrain.registry import MODELS

    return MODELS.build(dict(
        type="ImageClassifier",
        backbone=dict(type="ResNetCIFARPaper", depth=depth),
        neck=dict(type="GlobalAveragePooling"),
        head=dict(type="LinearClsHead", num_classes=classes, in_channels=64, loss=loss)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--depth", type=int, default=56)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per loss")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", choices=["bf16", "fp16"], help="autocast dtype (GPU)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.batch < 1:
        parser.error(f"--steps and --batch should be positive but got {args.steps} and "
                     f"{args.batch}")
    from mmpretrain.structures import DataSample

    device = torch.device(args.device)
    torch.manual_seed(0)
    losses = {"cross-entropy": dict(type="CrossEntropyLoss"), "ReLossCls": dict(type="ReLossCls")}
    models = {}
    for name, loss in losses.items():
        torch.manual_seed(0)
        model = classifier(args.depth, loss, args.classes).to(device).train()
        models[name] = (model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    images = torch.randn(args.batch, 3, 32, 32, device=device)
    labels = torch.randint(args.classes, (args.batch,), device=device)
    samples = [DataSample().set_gt_label(label).to(device) for label in labels]
    dtype = dict(bf16=torch.bfloat16, fp16=torch.float16).get(args.amp)

    def step(model, optimizer):
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = model(images, samples, mode="loss")["loss"]
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
    print(f"ResNet-{args.depth}, batch {args.batch} of 3x32x32, {args.classes} classes, "
          f"{args.steps} steps each, {where}{', autocast ' + args.amp if args.amp else ''}:")
    for name, value in medians.items():
        print(f"  {name:14s} median step {value:9.2f} ms")
    ratio = medians["ReLossCls"] / medians["cross-entropy"]
    print(f"  ratio ReLossCls / cross-entropy: {ratio:.3f}")
    return dict(medians=medians, ratio=ratio)


if __name__ == "__main__":
    main()
