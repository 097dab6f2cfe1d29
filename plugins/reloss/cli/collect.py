"""Run a trained mmpretrain model over a dataset split and store its predictions for
``reloss pretrain --data`` (the stored-predictions schema of reloss/predictions.py).

    reloss collect-predictions CONFIG CHECKPOINT --out preds.pt
                               [--split val|test|train] [--group N] [--force]

The paper learns its surrogate from a model's own predictions: train with cross-entropy, collect
the predictions of its checkpoints with this command, pretrain a surrogate on them
(``reloss pretrain --data``), then train with the new surrogate.
``--group`` tags every prediction (e.g. with the epoch of CHECKPOINT) so that chunks never mix
snapshots when several files are combined. Needs mmpretrain: ``pip install reloss[mmpretrain]``.
"""
import argparse
import os

import torch


def parse_args(argv=None, prog="reloss collect-predictions"):
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n", 2)[2])
    parser.add_argument("config")
    parser.add_argument("checkpoint")
    parser.add_argument("--out", required=True, help="file to write (.pt)")
    parser.add_argument("--split", choices=["train", "val", "test"], default="val")
    parser.add_argument("--group", type=int, help="tag every prediction with this group")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--force", action="store_true", help="replace an existing --out")
    args = parser.parse_args(argv)
    for name in ("config", "checkpoint"):
        if not os.path.isfile(getattr(args, name)):
            parser.error(f"{name} {getattr(args, name)!r}: no such file")
    if os.path.exists(args.out) and not args.force:
        parser.error(f"--out {args.out} already exists; pass --force to replace it")
    return parser, args


@torch.no_grad()
def collect(cfg, checkpoint, split, device):
    """Logits (M, C) and labels (M,) of the model over the split's dataloader."""
    from mmengine.registry import init_default_scope
    from mmengine.runner import Runner, load_checkpoint
    from mmpretrain.registry import MODELS

    init_default_scope(cfg.get("default_scope", "mmpretrain"))
    model_cfg = dict(cfg.model)
    if cfg.get("data_preprocessor") is not None:  # as the Runner does
        model_cfg.setdefault("data_preprocessor", cfg.data_preprocessor)
    model = MODELS.build(model_cfg)
    load_checkpoint(model, checkpoint, map_location="cpu")
    model.to(device).eval()
    loader_cfg = cfg.get(f"{split}_dataloader")
    if loader_cfg is None:
        raise ValueError(f"the config has no '{split}_dataloader'")
    loader_cfg = dict(loader_cfg, sampler=dict(type="DefaultSampler", shuffle=False))
    logits, labels = [], []
    for data in Runner.build_dataloader(loader_cfg):
        data = model.data_preprocessor(data, False)
        logits.append(model(data["inputs"], data["data_samples"], mode="tensor").float().cpu())
        labels.append(torch.cat([s.gt_label for s in data["data_samples"]]).cpu())
    return torch.cat(logits), torch.cat(labels).long()


def main(argv=None, prog="reloss collect-predictions"):
    parser, args = parse_args(argv, prog)
    try:
        import mmpretrain  # noqa: F401
        from mmengine.config import Config
    except ImportError as error:
        parser.error(f"needs mmpretrain and mmengine ({error}); install them with "
                     f"pip install reloss[mmpretrain]")
    cfg = Config.fromfile(args.config)
    logits, labels = collect(cfg, args.checkpoint, args.split, args.device)
    data = dict(task="cls", logits=logits, labels=labels)
    if args.group is not None:
        data["group"] = torch.full_like(labels, args.group)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    torch.save(data, args.out)
    accuracy = float((logits.argmax(-1) == labels).float().mean())
    print(f"wrote {labels.numel()} predictions of {logits.shape[1]} classes (accuracy "
          f"{100 * accuracy:.2f}%) to {args.out}")
    return data
