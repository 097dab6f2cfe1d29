"""Copy a surrogate that tools/pretrain_surrogate.py wrote into the package, under a name.

    python tools/ship_surrogate.py work_dirs/surrogate_cls cls [--force]

Copies DIR/surrogate.pt to plugins/reloss/checkpoints/NAME.pt and DIR/model_card.json to NAME.json,
after checking the checkpoint against the card's sha256, and records the sha256 in manifest.json,
which ``reloss.load_surrogate(NAME)`` checks on every load.
"""
import argparse
import json
import os
import shutil

from reloss import checkpoint


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", help="an --out folder of tools/pretrain_surrogate.py")
    parser.add_argument("name", help="the name to load it by, e.g. cls")
    parser.add_argument("--force", action="store_true", help="replace a shipped surrogate")
    args = parser.parse_args()
    source = os.path.join(args.folder, "surrogate.pt")
    with open(os.path.join(args.folder, "model_card.json"), encoding="utf-8") as f:
        card = json.load(f)
    if checkpoint.sha256_file(source) != card["sha256"]:
        parser.error(f"{source} does not match the sha256 in its model card")
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


if __name__ == "__main__":
    main()
