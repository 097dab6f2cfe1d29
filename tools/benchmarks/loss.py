"""The learned losses alone against the losses they replace: forward + backward time, in one run.

    python -m tools.benchmarks.loss [--task cls pose nat] [--repeats 200] [--threads 1]
                                   [--device cpu|cuda] [--compile]

'cls': ``F.cross_entropy`` against mmpretrain's ``CrossEntropyLoss`` and ``ReLossCls``
(reloss.mmpretrain; both as a head calls them, with ``avg_factor``), the bare frozen surrogate
(``reloss.load_surrogate('cls')``) and the class-aware ``ReLossCls(checkpoint='cls-balanced',
class_counts=...)``, 128 samples of 10 and of 1000 classes, hard labels. 'pose': mmpose's
``KeypointMSELoss(use_target_weight=True)`` against ``ReLossPose(use_target_weight=True)`` and
the bare surrogate, 64 instances of 17 keypoints, 64x48 heatmaps (generated figures, 15%
invisible). 'nat' (not run unless asked): token cross-entropy against the bare nat surrogate,
32 sentences of 32 tokens, 32000-word vocabulary.

A repeat times each loss once, forward and backward from the same leaf predictions, in an order
that rotates from repeat to repeat, so that drifts in machine speed hit every loss alike. Prints
the median of each, its ratio to the original loss of the same run and to the loss that a
toolkit config names where it would name the adapter (mmpretrain's ``CrossEntropyLoss``, mmpose's
``KeypointMSELoss``), and the memory each loss holds from its forward to its backward pass: the
tensors autograd saves for the backward pass, counted once each, the predictions themselves left
out (they are held in any case).

``--compile`` times every loss, the original included, through ``torch.compile`` (default
backend, shapes static), as a model compiled with its loss (mmengine's ``compile=True``) runs
it; the warm-up repeats (at least 3) take the compilation.
"""
from __future__ import annotations

import platform
import statistics
import time

import torch
import torch.nn.functional as F

from tools.benchmarks import experiment

SIZES = dict(cls=((128, 10), (128, 1000)), pose=((64, 17, 64, 48),), nat=((32, 32, 32000),))
DEFAULT_REPEATS = dict(cls=400, pose=60, nat=10)


def cpu_name():
    """The CPU model as /proc/cpuinfo names it, else what platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cls_cases(size, device):
    """(description, inputs, {name: loss(logits)}) at (N, C); the first loss is the original."""
    from mmpretrain.models.losses import CrossEntropyLoss

    import reloss
    from reloss.mmpretrain import ReLossCls

    count, classes = size
    generator = torch.Generator().manual_seed(0)
    logits = (2 * torch.randn(count, classes, generator=generator)).to(device)
    labels = torch.randint(classes, (count,), generator=generator).to(device)
    adapter, surrogate = ReLossCls(), reloss.load_surrogate("cls").to(device)
    # The class-aware form, told a long-tailed training set's counts (imbalance 100).
    counts = [100 ** (-c / (classes - 1)) for c in range(classes)]
    aware, host = ReLossCls(checkpoint="cls-balanced", class_counts=counts), CrossEntropyLoss()
    return (f"cls, {count} x {classes} logits", (logits,), {
        "cross-entropy": lambda z: F.cross_entropy(z, labels),
        HOST["cls"]: lambda z: host(z, labels, avg_factor=count),
        "ReLossCls": lambda z: adapter(z, labels, avg_factor=count),  # as mmpretrain's heads
        "surrogate": lambda z: surrogate(z, labels),
        "ReLossCls('cls-balanced', class_counts)": lambda z: aware(z, labels, avg_factor=count)})


def pose_cases(size, device):
    """(description, inputs, {name: loss(heatmaps)}) at (N, K, H, W)."""
    from mmpose.models.losses import KeypointMSELoss

    import reloss
    from reloss.mmpose import ReLossPose
    from reloss.tasks.pose import sample_pose

    count, keypoints, height, width = size
    generator = torch.Generator().manual_seed(0)
    heatmaps, targets, visible = (t[0].to(device) for t in sample_pose(
        1, count, keypoints, (height, width), generator=generator))
    mse, adapter = KeypointMSELoss(use_target_weight=True), ReLossPose(use_target_weight=True)
    surrogate = reloss.load_surrogate("pose").to(device)
    return (f"pose, {count} x {keypoints} heatmaps of {height} x {width}", (heatmaps,), {
        "KeypointMSELoss": lambda h: mse(h, targets, visible),
        "ReLossPose": lambda h: adapter(h, targets, visible),
        "surrogate": lambda h: surrogate(h, targets, visible)})


def nat_cases(size, device):
    """(description, inputs, {name: loss(logits)}) at (N, T, V)."""
    import reloss

    count, length, vocabulary = size
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(count, length, vocabulary, generator=generator).to(device)
    tokens = torch.randint(4, vocabulary, (count, length), generator=generator).to(device)
    surrogate = reloss.load_surrogate("nat").to(device)
    return (f"nat, {count} x {length} tokens of {vocabulary} words", (logits,), {
        "token cross-entropy": lambda z: F.cross_entropy(z.flatten(0, 1), tokens.flatten()),
        "surrogate": lambda z: surrogate(z, tokens)})


CASES = dict(cls=cls_cases, pose=pose_cases, nat=nat_cases)
#: The loss that a toolkit config names where it would name the adapter: the last column's
#: baseline (mmpretrain's adds its own reduction and checks to F.cross_entropy).
HOST = dict(cls="CrossEntropyLoss (mmpretrain)", pose="KeypointMSELoss")


def time_losses(losses, inputs, repeats, warmup, device):
    """{name: [ms, ...]}: forward + backward of each loss, interleaved, ``repeats`` times each."""
    leaves = [x.detach().clone().requires_grad_() for x in inputs]

    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    names = list(losses)
    times = {name: [] for name in names}
    for i in range(warmup + repeats):
        for j in range(len(names)):
            name = names[(i + j) % len(names)]
            for leaf in leaves:
                leaf.grad = None
            synchronize()
            start = time.perf_counter()
            losses[name](*leaves).backward()
            synchronize()
            if i >= warmup:
                times[name].append(1000 * (time.perf_counter() - start))
    return times


def saved_bytes(loss, inputs):
    """Bytes of the distinct tensors autograd saves for ``loss(*inputs)``'s backward pass,
    without ``inputs`` (whose storage the caller holds anyway)."""
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    held = {leaf.untyped_storage().data_ptr() for leaf in leaves}
    saved = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in held:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = loss(*leaves)
    out.backward()
    return sum(saved.values())


def main(argv=None):
    parser = experiment.doc_parser(__doc__, "tools.benchmarks.loss")
    parser.add_argument("--task", nargs="+", choices=sorted(CASES), default=["cls", "pose"])
    parser.add_argument("--repeats", type=int,
                        help=f"timed repeats of each loss (default {DEFAULT_REPEATS})")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--compile", action="store_true",
                        help="every loss through torch.compile")
    args = parser.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats should be positive but got {args.repeats}")
    if args.threads < 1 or args.warmup < 0:
        parser.error(f"--threads should be positive and --warmup >= 0 but got {args.threads} and "
                     f"{args.warmup}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    torch.set_num_threads(args.threads)
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"cpu ({cpu_name()})")
    print(f"{where}, {torch.get_num_threads()} threads, torch {torch.__version__}; median ms of "
          f"forward + backward, losses interleaved" + (", each through torch.compile"
                                                       if args.compile else ""))
    print("| size | loss | median ms | / original | held for backward, MB | / original | "
          "/ the toolkit's loss |")
    print("|---|---|---|---|---|---|---|")
    record = []
    for task in args.task:
        for size in SIZES[task]:
            title, inputs, losses = CASES[task](size, device)
            if args.compile:
                losses = {name: torch.compile(loss, dynamic=False)
                          for name, loss in losses.items()}
            repeats = args.repeats or DEFAULT_REPEATS[task]
            warmup = max(args.warmup, 3) if args.compile else args.warmup
            times = time_losses(losses, inputs, repeats, warmup, device)
            medians = {name: statistics.median(values) for name, values in times.items()}
            held = {name: saved_bytes(loss, inputs) for name, loss in losses.items()}
            original = next(iter(medians.values()))
            original_held = max(next(iter(held.values())), 1)
            host = medians.get(HOST.get(task))
            for name, value in medians.items():
                ratio = value / original
                host_ratio = None if host is None else value / host
                print(f"| {title} | {name} | {value:.3f} | {ratio:.2f} | {held[name] / 2**20:.2f} "
                      f"| {held[name] / original_held:.2f} | "
                      f"{'-' if host_ratio is None else f'{host_ratio:.2f}'} |", flush=True)
                record.append(dict(task=task, size=list(size), loss=name, ms=value,
                                   ratio=ratio, host_ratio=host_ratio, repeats=repeats,
                                   saved_bytes=held[name],
                                   saved_ratio=held[name] / original_held,
                                   compiled=args.compile))
    return record


if __name__ == "__main__":
    main()
