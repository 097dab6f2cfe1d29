"""Learn a cls surrogate that ranks by clean-label accuracy while it sees noisy labels.

A model trained on noisy labels is tested on clean ones, but ``reloss pretrain`` ranks each
synthetic chunk by the accuracy on the labels the loss sees. Here the two differ: in half of the
chunks a share of the labels (uniform in [0, 0.4] per chunk) is flipped to another class; the
model of the chunk has memorised a share of those flips (uniform in [0, 1] per chunk: it favours
the flipped label there) and otherwise favours the true class, at the chunk's planned accuracy
(the ``cls`` task's sampler, 10, 100 and 1000 classes). The surrogate (the shipped form,
``temperatures=[1.0]``) gets the flipped labels; the metric it is learned to rank by is the
accuracy on the true ones. Everything else is ``reloss pretrain --task cls``'s defaults.

    python -m tools.benchmarks.cls_noisy_pretrain --out work_dirs/cls_noisy

Writes OUT/surrogate.pt (use it as ``--checkpoint`` of ``tools.benchmarks.training``) and prints
the held-out Spearman of the surrogate and of cross-entropy with the clean-label accuracy.
"""
from __future__ import annotations

import os
import time

import torch

from reloss import pretrain
from reloss.checkpoint import save_surrogate
from reloss.tasks import get_task
from reloss.tasks.base import quality, uniform
from reloss.tasks.cls import _logits_of_quality
from tools.benchmarks import experiment

NOISE = (0.0, 0.4)  # the share of flipped labels in a noisy chunk
NOISY_CHUNKS = 0.5  # the share of chunks with flipped labels
BATCH = 64


def noisy_chunks(count, size, classes, generator, band):
    """(logits (S, N, C), the labels the loss sees (S, N), the true labels (S, N))."""
    accuracy = quality(count, 0.5, band, generator)
    clean = torch.randint(classes, (count, size), generator=generator)
    noisy_chunk = torch.rand(count, generator=generator) < NOISY_CHUNKS
    share = torch.where(noisy_chunk, uniform((count,), *NOISE, generator), torch.zeros(count))
    flipped = torch.rand(count, size, generator=generator) < share[:, None]
    shift = torch.randint(1, classes, (count, size), generator=generator)
    seen = torch.where(flipped, (clean + shift) % classes, clean)
    memorised = flipped & (torch.rand(count, size, generator=generator)
                           < torch.rand(count, generator=generator)[:, None])
    logits, _ = _logits_of_quality(torch.where(memorised, seen, clean), accuracy, classes,
                                   generator)
    return logits, seen, clean


def prepared(surrogate, task, chunks, generator):
    """``pretrain.prepare``d noisy chunks, shared out over the task's numbers of classes."""
    parts = []
    for kind in task.sample_kinds:
        for _ in range(max(1, chunks // len(task.sample_kinds) // BATCH)):
            logits, seen, clean = noisy_chunks(BATCH, task.chunk_size, kind["num_classes"],
                                               generator, task.band)

            def clean_accuracy(pred, target, clean=clean):
                return (pred.argmax(-1) == clean).float().mean(-1)

            parts.append(pretrain.prepare(surrogate, task, logits, seen, None, clean_accuracy))
    return pretrain.concatenate(parts)


def main(argv=None):
    parser = experiment.doc_parser(__doc__, "tools.benchmarks.cls_noisy_pretrain")
    parser.add_argument("--out", required=True, help="folder to write surrogate.pt to")
    parser.add_argument("--force", action="store_true", help="replace OUT/surrogate.pt")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-chunks", type=int, default=3000)
    parser.add_argument("--steps", type=int, help="default: the cls task's pretrain_steps")
    args = parser.parse_args(argv)
    if args.train_chunks < BATCH * 3:
        parser.error(f"--train-chunks should be at least {BATCH * 3} but got {args.train_chunks}")
    path = os.path.join(args.out, "surrogate.pt")
    if os.path.exists(path) and not args.force:
        parser.error(f"--out {args.out} already holds surrogate.pt; pass --force to replace it")
    task = get_task("cls")
    started = time.time()
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    surrogate = task.surrogate_class(None)(temperatures=[1.0])
    train, val, test = (prepared(surrogate, task, n, generator)
                        for n in (args.train_chunks, args.train_chunks // 4,
                                  args.train_chunks // 4))
    pretrain.pretrain(surrogate, train, val, task.band, steps=args.steps or task.pretrain_steps,
                      tolerance=task.pretrain_tolerance, eval_every=25, seed=args.seed)
    figures = pretrain.evaluate(surrogate, test, task.band)
    os.makedirs(args.out, exist_ok=True)
    sha256 = save_surrogate(surrogate, path, "cls", "accuracy on the true labels", force=True)
    ours, ce = figures["surrogate"], figures["baseline"]
    print(f"Spearman(-loss, clean-label accuracy) over {ours['chunks']} held-out noisy chunks: "
          f"surrogate {ours['full']:.3f}, cross-entropy {ce['full']:.3f} (late band "
          f"{ours['band']:.3f} against {ce['band']:.3f}); gradient norm / cross-entropy's: "
          f"median {ours['gradient_ratio']:.3g}")
    print(f"[reloss] wrote {path} (sha256 {sha256[:12]}...) in {time.time() - started:.0f} s")
    return figures


if __name__ == "__main__":
    main()
