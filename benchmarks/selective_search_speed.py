"""Speed and recall of selective search (single / fast / quality) on the synthetic benchmark.

Every database image of the synthetic benchmark that shows a landmark has its
ground-truth box in ``boxes.csv`` (``id,box``, box ``"ymin xmin ymax xmax"``
normalized).  For each :func:`d2r.regions.selective_search.selective_search` mode the
script times the proposals of every such image and measures, over the
ground-truth boxes, the recall at IoU >= 0.5 within the top 100 and top 500
proposals and the mean best IoU (MABO) of the top 500.  The reference in the
same run is the R-MAC grid (:func:`d2r.regions.selection.rmac_grid`, the
``regions.source: grid`` alternative, a fixed handful of boxes) with the whole
image.  Seconds are wall-clock per image on this machine (one process, no
warm-up outside the first image); proposals per image are the deduplicated
proposals before any ``max_boxes`` cut.

    python benchmarks/selective_search_speed.py --data /tmp/ss-bench            # small benchmark
    python benchmarks/selective_search_speed.py --data /tmp/gb_synth_small --images 24
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np

from d2r.datasets.synthetic import SIZES, generate
from d2r.regions.selection import rmac_grid, whole_image
from d2r.regions.selective_search import selective_search

ALL_BOXES = 1_000_000
TOPS = (100, 500)


def read_ground_truth(data: Path) -> list[tuple[Path, np.ndarray]]:
    """(image path, (1, 4) pixel box) of every row of ``boxes.csv`` whose image exists, in file order."""
    import cv2

    out = []
    with open(data / "boxes.csv", newline="") as f:
        for row in csv.DictReader(f):
            path = data / "jpg" / f"{row['id']}.jpg"
            if not path.exists():
                continue
            ymin, xmin, ymax, xmax = (float(v) for v in row["box"].split())
            height, width = cv2.imread(str(path), cv2.IMREAD_UNCHANGED).shape[:2]
            out.append((path, np.array([[xmin * width, ymin * height, xmax * width, ymax * height]])))
    return out


def iou(truth: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(T, B) intersection over union of two sets of xyxy boxes."""
    lo = np.maximum(truth[:, None, :2], boxes[None, :, :2])
    hi = np.minimum(truth[:, None, 2:], boxes[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=2)
    area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area(truth)[:, None] + area(boxes)[None, :] - inter)


def evaluate(name: str, propose, images, truths) -> dict:
    seconds, counts, best = [], [], {k: [] for k in TOPS}
    for image, truth in zip(images, truths):
        t0 = time.perf_counter()
        boxes = propose(image)
        seconds.append(time.perf_counter() - t0)
        counts.append(len(boxes))
        overlap = iou(truth, boxes.astype(np.float64))
        for k in TOPS:
            best[k].append(overlap[:, :k].max(axis=1))
    row = {"method": name, "s/image": float(np.mean(seconds)), "proposals/image": float(np.mean(counts))}
    for k in TOPS:
        values = np.concatenate(best[k])
        row[f"recall@{k}"] = float(np.mean(values >= 0.5))
    row["MABO@500"] = float(np.mean(np.concatenate(best[TOPS[-1]])))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True,
                        help="synthetic benchmark directory (generated there when it has no boxes.csv)")
    parser.add_argument("--size", default="small", choices=sorted(SIZES), help="size to generate")
    parser.add_argument("--images", type=int, default=0, help="use the first N images with a box (0: all)")
    parser.add_argument("--modes", nargs="+", default=["single", "fast", "quality"])
    parser.add_argument("--max-side", type=int, default=256, help="selective_search max_side")
    parser.add_argument("--grid-levels", type=int, default=3)
    args = parser.parse_args()

    import cv2

    if not (args.data / "boxes.csv").exists():
        generate(args.data, overwrite=True, **SIZES[args.size])
    samples = read_ground_truth(args.data)
    if args.images:
        samples = samples[: args.images]
    if not samples:
        raise SystemExit(f"no images with ground-truth boxes under {args.data}")
    images = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p, _ in samples]
    truths = [t for _, t in samples]
    sides = [max(im.shape[:2]) for im in images]
    print(f"{len(images)} images from {args.data} (long side {min(sides)}-{max(sides)} px), "
          f"max_side {args.max_side}")

    rows = []
    for mode in args.modes:
        rows.append(evaluate(
            f"selective search {mode}",
            lambda im, mode=mode: selective_search(im, mode=mode, max_boxes=ALL_BOXES, max_side=args.max_side).xyxy,
            images, truths,
        ))
    rows.append(evaluate(
        f"R-MAC grid L={args.grid_levels} + whole image",
        lambda im: np.concatenate([
            whole_image(im.shape[1::-1]).xyxy, rmac_grid(im.shape[1::-1], levels=args.grid_levels).xyxy,
        ]),
        images, truths,
    ))

    headers = list(rows[0])
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join("---" if h == "method" else "---:" for h in headers) + "|")
    for row in rows:
        cells = [row["method"], f"{row['s/image']:.3f}", f"{row['proposals/image']:.0f}"]
        cells += [f"{row[h]:.3f}" for h in headers[3:]]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
