"""mAP and query time of the D2R configurations on the synthetic benchmark.

    python benchmarks/synthetic_retrieval.py --out /tmp/synth-bench [--size default] \
        [--seed 0 | --data DATASET] [--detector SAVEDMODEL]

For each configuration: build the index (RootSIFT), run every query without
and with spatial re-ranking of the top 100, and print Medium / Hard mAP and
per-query search / re-ranking time.  The reference in the same run is plain
ASMK* (the first row).  Figures go to ``OUT/summary.json``.

The data is ``--data`` (a synthetic set from ``d2r synthetic``)
or a set generated into ``OUT/data`` with ``--size`` / ``--seed``.  With
``--detector`` the paper's own regions are added: R-ASMK* over detector boxes
(per-crop features, as in the paper; and with ``regions.features=select``) and
ASMK* regional search over detector boxes (max-pooling).  A detector trained on
synthetic images must be evaluated on a set generated with another seed
(same landmark pool, new images).  For every regional row the script also
reports the mean number of regions per database image besides the whole image
(detector boxes kept at ``regions.score_threshold``, or grid cells), how many
images have none, how much of the image they cover, and how often one matches
the true landmark box (IoU >= 0.5).
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from d2r.pipeline.build import build_index
from d2r.pipeline.sources import ImageSource
from d2r.config import load_config
from d2r.datasets.synthetic import SIZES, generate
from d2r.pipeline.extraction import read_regions
from d2r.pipeline.run import run_dataset
from d2r.pipeline.searcher import Searcher

CONFIGS = [
    ("ASMK*", "rootsift-asmk-star", []),
    ("R-ASMK* (grid regions)", "rootsift-d2r-r-asmk-star", ["regions.source=grid"]),
    ("ASMK* regional search (grid)", "rootsift-asmk-star",
     ["regions.source=grid", "aggregation.regional_search=true"]),
]


def detector_configs(detector: str) -> list[tuple[str, str, list[str]]]:
    """The paper's configurations over landmark-detector boxes."""
    path = f"regions.detector_path={detector}"
    return [
        ("D2R-R-ASMK* (detector)", "rootsift-d2r-r-asmk-star", [path]),
        ("D2R-R-ASMK* (detector, select)", "rootsift-d2r-r-asmk-star",
         [path, "regions.features=select"]),
        ("D2R-ASMK* regional search (detector)", "rootsift-asmk-star",
         ["regions.source=detector", path, "aggregation.regional_search=true"]),
    ]


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes ``a`` (N, 4) with box ``b`` (4,), x1 y1 x2 y2."""
    w = np.clip(np.minimum(a[:, 2], b[2]) - np.maximum(a[:, 0], b[0]), 0, None)
    h = np.clip(np.minimum(a[:, 3], b[3]) - np.maximum(a[:, 1], b[1]), 0, None)
    inter = w * h
    area = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    return inter / (area + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def region_stats(index: Path, source: ImageSource, data: Path) -> dict:
    """Regions per database image besides the whole image (as written by the build).

    Also: images without a region, median region area (fraction of the image),
    regions covering >= 90 % of their image, mean regions on distractor images,
    and on landmark images how often a region (any / the first = best-scored)
    matches the true landmark box (``boxes.csv``) at IoU >= 0.5.
    """
    truth = {}
    with open(data / "boxes.csv", newline="") as f:
        for row in csv.DictReader(f):
            truth[row["id"]] = np.array([float(v) for v in row["box"].split()])  # y1 x1 y2 x2
    counts, areas, distractor_counts = [], [], []
    any_hit = top_hit = 0
    for name, path in zip(source.names, source.paths):
        with Image.open(path) as im:
            width, height = im.size
        regions = read_regions(index / "boxes", name, (width, height))
        xyxy = np.asarray(regions.xyxy[1:], np.float64)
        counts.append(len(xyxy))
        areas += list((xyxy[:, 2] - xyxy[:, 0]) * (xyxy[:, 3] - xyxy[:, 1]) / (width * height))
        if name not in truth:
            distractor_counts.append(len(xyxy))
        elif len(xyxy):
            y1, x1, y2, x2 = truth[name]
            iou = _iou(xyxy, np.array([x1 * width, y1 * height, x2 * width, y2 * height]))
            any_hit += bool((iou >= 0.5).any())
            top_hit += bool(iou[0] >= 0.5)
    counts, areas = np.asarray(counts), np.asarray(areas)
    return {
        "boxes_per_image": round(float(counts.mean()), 2),
        "images_without_boxes": int((counts == 0).sum()),
        "max_boxes_in_an_image": int(counts.max()),
        "median_box_area": round(float(np.median(areas)), 3) if len(areas) else None,
        "boxes_over_90pct_of_image": int((areas >= 0.9).sum()),
        "boxes_per_distractor_image": round(float(np.mean(distractor_counts)), 2)
        if distractor_counts else None,
        "landmark_images": len(counts) - len(distractor_counts),
        "landmark_images_box_iou50": int(any_hit),
        "landmark_images_first_box_iou50": int(top_hit),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--data", type=Path,
                        help="existing synthetic dataset (default: generate into OUT/data)")
    parser.add_argument("--size", default="default", choices=sorted(SIZES))
    parser.add_argument("--seed", type=int, default=0, help="seed of a generated dataset")
    parser.add_argument("--detector", help="landmark detector SavedModel: adds D2R rows")
    parser.add_argument("--rerank", type=int, default=100)
    args = parser.parse_args()
    data = args.data
    if data is None:
        data = args.out / "data"
        if not (data / "synthetic.json").exists():
            generate(data, seed=args.seed, overwrite=True, **SIZES[args.size])
    elif not (data / "synthetic.json").exists():
        parser.error(f"--data {data} is not a synthetic dataset (no synthetic.json)")
    print(f"data: {data} {json.loads((data / 'synthetic.json').read_text())['seed']=}")
    configs = list(CONFIGS)
    if args.detector:
        configs += detector_configs(args.detector)
    source = ImageSource.from_dataset(data)
    rows = []
    t_run = time.perf_counter()
    for label, preset, overrides in configs:
        index = args.out / label.replace(" ", "_").replace("*", "s").replace("(", "") \
            .replace(")", "").replace(",", "")
        config = load_config(preset, overrides=overrides)
        t0 = time.perf_counter()
        build_index(config, source, index)
        build_s = time.perf_counter() - t0
        row = {"config": label, "build_s": round(build_s, 1)}
        for suffix, rerank in (("", 0), (" + SV", args.rerank)):
            with Searcher(index, overrides=[f"verification.rerank={rerank}"]) as searcher:
                metrics = run_dataset(searcher, data, index / f"results{rerank}")
                items = getattr(searcher.index, "items_per_image", 1.0)
            timing = json.loads((index / f"results{rerank}" / "timing.json").read_text())
            row[f"medium{suffix}"] = round(metrics["medium"]["mAP"], 2)
            row[f"hard{suffix}"] = round(metrics["hard"]["mAP"], 2)
            row[f"search_ms{suffix}"] = round(1000 * timing["search_s_per_query"], 2)
            if rerank:
                row["rerank_ms"] = round(1000 * timing["rerank_s_per_query"], 1)
        row["items_per_image"] = round(float(items), 2)
        if config.regions.source != "none":
            row.update(region_stats(index, source, data))
        rows.append(row)
        print(json.dumps(row), flush=True)
    total_s = time.perf_counter() - t_run
    (args.out / "summary.json").write_text(json.dumps(
        {"data": str(data), "detector": args.detector, "total_s": round(total_s, 1),
         "rows": rows}, indent=2) + "\n")
    print(f"\ntotal {total_s / 60:.1f} min")
    print("\n| config | Medium | Hard | Medium +SV | Hard +SV | search ms/query | re-rank ms/query "
          "| items/image | boxes/image | build s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['medium']} | {r['hard']} | {r['medium + SV']} | "
              f"{r['hard + SV']} | {r['search_ms']} | {r['rerank_ms']} | {r['items_per_image']} "
              f"| {r.get('boxes_per_image', '–')} | {r['build_s']} |")

    regional = [r for r in rows if "boxes_per_image" in r]
    if regional:
        print("\n| config | boxes/image | on distractors | images without | median area "
              "| >= 90 % of image | landmark images with a box at IoU >= 0.5 (first box) |")
        print("|---|---|---|---|---|---|---|")
        for r in regional:
            print(f"| {r['config']} | {r['boxes_per_image']} | {r['boxes_per_distractor_image']} "
                  f"| {r['images_without_boxes']} | {r['median_box_area']} "
                  f"| {r['boxes_over_90pct_of_image']} | {r['landmark_images_box_iou50']} "
                  f"({r['landmark_images_first_box_iou50']}) / {r['landmark_images']} |")


if __name__ == "__main__":
    main()
