r"""Copy a surrogate that `reloss pretrain` wrote into this package's checkpoints, under a name.

    reloss ship work_dirs/surrogate_cls cls [--force]
    reloss ship work_dirs/surrogate_cls cls --force \
        --benchmark work_dirs/benchmark_training/cls/results.json
    reloss ship work_dirs/nat/ng4r2 nat --force \
        --benchmark work_dirs/bt/design/results.json --proxy work_dirs/nat_proxy/8/results.json

For publishing a surrogate inside this package (maintainers): it writes into the installed
package's reloss/checkpoints/ folder. To train with a surrogate of your own, ship nothing: pass
the path of its surrogate.pt as the loss's checkpoint= (fairseq: --reloss-checkpoint).

Copies DIR/surrogate.pt to reloss/checkpoints/NAME.pt and DIR/model_card.json to NAME.json,
after checking the checkpoint against the card's sha256, and records the sha256 in manifest.json,
which ``reloss.load_surrogate(NAME)`` checks on every load. ``--benchmark`` adds the figures of
``tools/benchmarks/training.py`` runs on this very checkpoint (same sha256) to the model card, next
to its ranking figures; ``--proxy`` those of ``tools/benchmarks/nat_proxy.py`` or
``tools/benchmarks/qa_proxy.py`` runs that trained with it (benchmarks of the repository, not
of the wheel).
"""
import argparse
import json
import os
import shutil

from reloss import checkpoint


def read_record(parser, option, path):
    """The JSON in ``path``, or a parser error naming ``option`` and why it cannot be read."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as error:
        parser.error(f"{option} {path}: cannot read it ({error})")


def benchmark_summary(parser, path, card):
    """The figures of a benchmark_training results.json, checked to be of this checkpoint."""
    record = read_record(parser, "--benchmark", path)
    if record.get("sha256") != card["sha256"] or record.get("task") != card["task"]:
        parser.error(f"--benchmark {path}: it benchmarks a '{record.get('task')}' surrogate with "
                     f"sha256 {str(record.get('sha256'))[:12]}..., not this checkpoint "
                     f"('{card['task']}', {card['sha256'][:12]}...)")
    keep = ("provenance", "command", "metric", "chance", "tolerance", "seeds", "first_seed",
            "quick", "original_weight", "mixed_arms", "default_arm", "regimes", "matrix",
            "loss_ms", "seconds", "machine")
    summary = {key: record[key] for key in keep if key in record}
    summary["results"] = {}
    for regime, arms in record["results"].items():
        summary["results"][regime] = {}
        for arm, result in arms.items():
            entry = dict(result["summary"])
            for key in ("gradient_share", "paired"):
                if result.get(key) is not None:
                    entry[key] = result[key]
            summary["results"][regime][arm] = entry
    return summary


def proxy_summary(parser, path, card):
    """The figures of a proxy's results.json (``tools/benchmarks/nat_proxy.py``,
    ``tools/benchmarks/qa_proxy.py``), checked to have trained with this checkpoint: per criterion
    and seed the final metric (the nat proxy), and the paired differences."""
    record = read_record(parser, "--proxy", path)
    used = record.get("provenance", {}).get("surrogates", {}) if isinstance(record, dict) else {}
    if card["sha256"] not in used.values() or not isinstance(
            record.get("runs", record.get("paired")), dict):
        parser.error(f"--proxy {path}: not a proxy run that trained with this checkpoint "
                     f"(sha256 {card['sha256'][:12]}...); it used "
                     f"{', '.join(v[:12] + '...' for v in used.values()) or 'none'}")
    summary = {key: record[key] for key in ("provenance", "seeds", "updates", "fairseq_args",
                                            "epochs", "train", "dev", "seconds", "paired")
               if key in record}
    if "runs" in record:
        summary["runs"] = {name: [{key: run[key] for key in run if key != "log"}
                                  for run in runs] for name, runs in record["runs"].items()}
    return summary


def main(argv=None, prog="reloss ship"):
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n", 2)[2])
    parser.add_argument("folder", help="an --out folder of reloss pretrain")
    parser.add_argument("name", help="the name to load it by, e.g. cls")
    parser.add_argument("--force", action="store_true", help="replace a shipped surrogate")
    parser.add_argument("--benchmark", nargs="+", default=[], metavar="RESULTS_JSON",
                        help="results.json of tools/benchmarks/training.py runs to record")
    parser.add_argument("--proxy", nargs="+", default=[], metavar="RESULTS_JSON",
                        help="results.json of tools/benchmarks/nat_proxy.py or "
                        "tools/benchmarks/qa_proxy.py runs to record")
    args = parser.parse_args(argv)
    source = os.path.join(args.folder, "surrogate.pt")
    with open(os.path.join(args.folder, "model_card.json"), encoding="utf-8") as f:
        card = json.load(f)
    if checkpoint.sha256_file(source) != card["sha256"]:
        parser.error(f"{source} does not match the sha256 in its model card")
    for path in args.benchmark:
        card.setdefault("training_benchmark", []).append(benchmark_summary(parser, path, card))
    for path in args.proxy:
        card.setdefault("proxy", []).append(proxy_summary(parser, path, card))
    manifest = checkpoint.shipped()
    if args.name in manifest and not args.force:
        parser.error(f"'{args.name}' is already shipped; pass --force to replace it")
    os.makedirs(checkpoint.CHECKPOINT_DIR, exist_ok=True)
    target = os.path.join(checkpoint.CHECKPOINT_DIR, f"{args.name}.pt")
    shutil.copyfile(source, target)
    card["checkpoint"] = f"{args.name}.pt"
    with open(os.path.join(checkpoint.CHECKPOINT_DIR, f"{args.name}.json"), "w",
              encoding="utf-8") as f:
        json.dump(card, f, indent=2)
        f.write("\n")
    manifest[args.name] = dict(file=f"{args.name}.pt", sha256=card["sha256"], task=card["task"],
                               metric=card["metric"])
    with open(checkpoint.MANIFEST, "w", encoding="utf-8") as f:
        json.dump(dict(sorted(manifest.items())), f, indent=2)
        f.write("\n")
    print(f"shipped {target} as '{args.name}' (sha256 {card['sha256']})")

