"""Write long-tailed digits as an image folder for mmpretrain's CustomDataset.

    python projects/long_tailed_digits/prepare.py [--out data/lt_digits] [--imbalance 10]

scikit-learn's digits (real 8x8 images of handwritten digits; they ship with scikit-learn), split
as tools/benchmarks/imbalanced.py splits them: a long-tailed training set (class c keeps
round(113 * imbalance^(-c/9)) images), a class-balanced validation and test set. Each image is
written as a 32x32 RGB PNG to OUT/{train,val,test}/<class>/<index>.png, and the training set's
images per class to OUT/class_counts.json: the ``class_counts`` a class-aware ReLossCls takes (the
configs here hold those of imbalance 10). Refuses an OUT that already holds files unless --force.
"""
import argparse
import json
import os
import shutil
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write(out, imbalance=10.0, force=False):
    """Write the folder; returns the training set's class counts."""
    sys.path.insert(0, ROOT)
    from PIL import Image

    from tools.benchmarks.imbalanced import dataset

    if os.path.isdir(out) and os.listdir(out):
        if not force:
            raise FileExistsError(f"--out {out} already holds files; pass --force to replace it")
        shutil.rmtree(out)
    data = dataset("digits", float(imbalance))
    for split, key in (("train", "train"), ("val", "val_balanced"), ("test", "test_balanced")):
        images, labels = data[key]
        for i, (image, label) in enumerate(zip(images, labels.tolist(), strict=True)):
            folder = os.path.join(out, split, str(label))
            os.makedirs(folder, exist_ok=True)
            pixels = (image.reshape(8, 8).numpy() * 255).round().astype(np.uint8)
            Image.fromarray(pixels).resize((32, 32)).convert("RGB").save(
                os.path.join(folder, f"{i}.png"))
    with open(os.path.join(out, "class_counts.json"), "w", encoding="utf-8") as f:
        json.dump(data["counts"], f)
        f.write("\n")
    return data["counts"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="data/lt_digits")
    parser.add_argument("--imbalance", type=float, default=10.0,
                        help="largest over smallest class in the training set (default 10)")
    parser.add_argument("--force", action="store_true", help="replace an --out that holds files")
    args = parser.parse_args(argv)
    if not args.imbalance >= 1:
        parser.error(f"--imbalance should be a number >= 1 but got {args.imbalance}")
    try:
        counts = write(args.out, args.imbalance, args.force)
    except FileExistsError as error:
        parser.error(str(error))
    print(f"wrote long-tailed digits to {args.out}/: training images per class {counts} "
          f"(class_counts.json), balanced val and test")
    return counts


if __name__ == "__main__":
    main()
