"""RootSIFT against the learned local features (XFeat, DISK) on the synthetic benchmark.

For each feature, through the real commands: ``d2r build-index`` with its ASMK* preset,
``d2r query`` over every benchmark query without and with re-ranking of the top 100, and
the benchmark's Easy / Medium / Hard mAP.  Also measured: extraction images/s on the
benchmark's database images (one process, after a warm-up image; the extractor as the
index builds it), features per image, index bytes per image (the search structure) and
query latency (extraction + search, and the re-ranking).  Run it alone: the timings
share the machine with nothing else.

    python data/download.py xfeat disk          # the published weights, into parameters/
    python benchmarks/feature_compare.py --out /tmp/d2r-features
    python benchmarks/feature_compare.py --size large --features rootsift xfeat
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from d2r.config import load_config
from d2r.datasets.synthetic import SIZES, generate
from d2r.features.registry import make_extractor
from d2r.io.images import load_image

PRESETS = {"rootsift": "rootsift-asmk-star", "xfeat": "xfeat-asmk-star",
           "disk": "disk-asmk-star"}
WEIGHTS = {"xfeat": "parameters/xfeat/xfeat.pt", "disk": "parameters/disk/disk-depth-save.pth"}


def d2r(*args) -> None:
    """``python -m d2r ARGS``; stop on an error."""
    proc = subprocess.run([sys.executable, "-m", "d2r", *map(str, args)], capture_output=True,
                          text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"d2r {args[0]} failed:\n{proc.stderr[-2000:]}")


def extraction_rate(preset: str, sets: list[str], images: list[Path]) -> tuple[float, float]:
    """(images/s, features per image) of the preset's extractor over ``images``."""
    config = load_config(preset, overrides=sets)
    extractor = make_extractor(config)
    side = config.images.max_side
    extractor.extract(load_image(images[0], max_side=side))  # warm-up: model build
    counts, start = [], time.perf_counter()
    for path in images:
        counts.append(len(extractor.extract(load_image(path, max_side=side))))
    return len(images) / (time.perf_counter() - start), float(np.mean(counts))


def measure(feature: str, data: Path, out: Path, rate_images: int) -> dict:
    preset = PRESETS[feature]
    sets = [f"features.{feature}.weights_path={WEIGHTS[feature]}"] if feature in WEIGHTS else []
    set_args = [arg for s in sets for arg in ("--set", s)]
    index = out / feature / "index"
    d2r("build-index", "--dataset-dir", data, "--out", index, "--config", preset, *set_args)
    row = {"feature": feature, "preset": preset}
    for name, rerank in (("plain", 0), ("reranked", 100)):
        results = out / feature / name
        d2r("query", "--index", index, "--dataset-dir", data, "--out", results,
            "--rerank", rerank)
        metrics = json.loads((results / "metrics.json").read_text())
        timing = json.loads((results / "timing.json").read_text())
        row[name] = {p: round(metrics[p]["mAP"], 2) for p in ("easy", "medium", "hard")}
        row[name]["query_ms"] = round(1000 * (timing["extract_s_per_query"]
                                              + timing["search_s_per_query"]), 1)
        row[name]["rerank_ms"] = round(1000 * timing["rerank_s_per_query"], 1)
    manifest = json.loads((index / "index.json").read_text())
    search = index / manifest["search"]
    row["index_bytes_per_image"] = round(sum(f.stat().st_size for f in search.iterdir())
                                         / manifest["num_images"])
    images = sorted((data / "jpg").glob("*_db_*.jpg"))[:rate_images]
    row["images_per_s"], row["features_per_image"] = (
        round(v, 2) for v in extraction_rate(preset, sets, images))
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/d2r-features"))
    parser.add_argument("--size", choices=sorted(SIZES), default="default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--features", nargs="+", choices=sorted(PRESETS),
                        default=["rootsift", "xfeat", "disk"])
    parser.add_argument("--rate-images", type=int, default=40,
                        help="database images timed for the extraction rate")
    args = parser.parse_args()
    data = args.out / f"synthetic-{args.size}-{args.seed}"
    if not (data / "jpg").is_dir():
        generate(data, seed=args.seed, **SIZES[args.size])
    rows = [measure(feature, data, args.out, args.rate_images) for feature in args.features]
    print(f"synthetic benchmark {args.size}, seed {args.seed}; load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}\n")
    print("| feature | E / M / H mAP | + re-ranking top 100 | images/s | features/image | "
          "index bytes/image | query ms (extract + search) | re-rank ms |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        plain, reranked = r["plain"], r["reranked"]
        print(f"| {r['feature']} | {plain['easy']} / {plain['medium']} / {plain['hard']} | "
              f"{reranked['easy']} / {reranked['medium']} / {reranked['hard']} | "
              f"{r['images_per_s']} | {r['features_per_image']:.0f} | "
              f"{r['index_bytes_per_image']} | {plain['query_ms']} | {reranked['rerank_ms']} |")
    (args.out / "feature_compare.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
