"""Write a small generated person-keypoint set in COCO format (images and annotations).

    python -m tools.benchmarks.generate_coco_keypoints OUT [--train 64] [--val 32] [--size 96]
        [--seed 0]

Each image shows one stick figure with COCO's 17 keypoints, drawn as blobs that look alike on the
left and the right (told apart only by where the figure faces), with a random scale, rotation and
pose jitter, 1-3 distractor blobs and some occluded joints (covered by noise, visibility 1; outside
the image, visibility 0). OUT gets ``train/`` and ``val/`` images and
``annotations/person_keypoints_{train,val}.json``, the layout of mmpose's ``CocoDataset``, so that
the real pipeline, the top-down heatmap models and ``CocoMetric`` run on it unchanged.
"""
import argparse
import json
import math
import os

import numpy as np

NAMES = ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
         "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip",
         "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle"]
SKELETON = [[16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7], [6, 8],
            [7, 9], [8, 10], [9, 11], [2, 3], [1, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7]]
# A standing figure, x to the figure's left, y down, in units of its height.
TEMPLATE = np.array([[0, -0.45], [0.03, -0.47], [-0.03, -0.47], [0.06, -0.45], [-0.06, -0.45],
                     [0.12, -0.32], [-0.12, -0.32], [0.18, -0.15], [-0.18, -0.15], [0.2, 0.0],
                     [-0.2, 0.0], [0.08, 0.02], [-0.08, 0.02], [0.09, 0.24], [-0.09, 0.24],
                     [0.1, 0.46], [-0.1, 0.46]])


def _blob(image, x, y, radius, value):
    height, width = image.shape
    yy, xx = np.mgrid[0:height, 0:width]
    image += value * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * radius ** 2))


def figure(rng, size):
    """(grey image (size, size), keypoints (17, 3) as x, y, visibility)."""
    height = rng.uniform(0.5, 0.8) * size
    angle = rng.uniform(-0.5, 0.5)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    points = (TEMPLATE + rng.normal(0, 0.02, TEMPLATE.shape)) * height
    points[:, 0] *= rng.choice([-1, 1])  # facing the camera or away
    points = points @ rotation.T + rng.uniform(0.4, 0.6, 2) * size
    image = rng.uniform(0, 0.2) + np.zeros((size, size))
    for x, y in points:
        _blob(image, x, y, height * 0.03, 0.8)
    _blob(image, *points[0], height * 0.06, 0.5)  # the head tells the figure's orientation
    for _ in range(rng.integers(1, 4)):
        _blob(image, *rng.uniform(0, size, 2), height * 0.03, 0.8)
    visibility = np.full(17, 2)
    for k in np.flatnonzero(rng.random(17) < 0.1):
        x, y = points[k].round().astype(int)
        image[max(y - 3, 0):y + 4, max(x - 3, 0):x + 4] = rng.uniform(0, 1, (1, 1))
        visibility[k] = 1
    inside = (points >= 0).all(1) & (points <= size - 1).all(1)
    visibility[~inside] = 0
    image = np.clip(image + rng.normal(0, 0.05, image.shape), 0, 1)
    return image, np.concatenate([points, visibility[:, None]], 1)


def write(out, train=64, val=32, size=96, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(out, "annotations"), exist_ok=True)
    category = dict(id=1, name="person", supercategory="person", keypoints=NAMES,
                    skeleton=SKELETON)
    next_id = 1
    for split, count in (("train", train), ("val", val)):
        os.makedirs(os.path.join(out, split), exist_ok=True)
        images, annotations = [], []
        for _ in range(count):
            image, keypoints = figure(rng, size)
            name = f"{next_id:06d}.png"
            Image.fromarray((image * 255).astype(np.uint8)).convert("RGB").save(
                os.path.join(out, split, name))
            seen = keypoints[keypoints[:, 2] > 0, :2]
            x0, y0 = np.clip(seen.min(0) - 4, 0, size - 1)
            x1, y1 = np.clip(seen.max(0) + 4, 0, size - 1)
            flat = [round(float(v), 2) if i % 3 < 2 else int(v)
                    for i, v in enumerate(keypoints.reshape(-1))]
            flat = [0 if keypoints[i // 3, 2] == 0 else v for i, v in enumerate(flat)]
            images.append(dict(id=next_id, file_name=name, width=size, height=size))
            annotations.append(dict(id=next_id, image_id=next_id, category_id=1, iscrowd=0,
                                    keypoints=flat, num_keypoints=int((keypoints[:, 2] > 0).sum()),
                                    bbox=[float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                                    area=float((x1 - x0) * (y1 - y0))))
            next_id += 1
        with open(os.path.join(out, "annotations", f"person_keypoints_{split}.json"), "w",
                  encoding="utf-8") as f:
            json.dump(dict(images=images, annotations=annotations, categories=[category]), f)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out")
    parser.add_argument("--train", type=int, default=64)
    parser.add_argument("--val", type=int, default=32)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if os.path.exists(os.path.join(args.out, "annotations")):
        parser.error(f"{args.out} already holds annotations; choose another folder")
    write(args.out, args.train, args.val, args.size, args.seed)
    print(f"wrote {args.train} training and {args.val} validation images to {args.out}")


if __name__ == "__main__":
    main()
