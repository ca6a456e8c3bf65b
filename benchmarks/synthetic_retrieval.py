"""mAP and query time of the D2R configurations on the synthetic benchmark.

    python benchmarks/synthetic_retrieval.py --out /tmp/synth-bench [--size default] \
        [--detector SAVEDMODEL]

For each configuration: build the index (RootSIFT), run every query without
and with spatial re-ranking of the top 100, and print Medium / Hard mAP and
per-query search / re-ranking time.  The reference in the same run is plain
ASMK* (the first row).  Figures go to ``OUT/summary.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from d2r.build_index import build_index
from d2r.cli import ImageSource
from d2r.config import load_config
from d2r.datasets.synthetic import SIZES, generate
from d2r.query import run_dataset
from d2r.searcher import Searcher

CONFIGS = [
    ("ASMK*", "rootsift-asmk-star", []),
    ("R-ASMK* (grid regions)", "rootsift-d2r-r-asmk-star", ["regions.source=grid"]),
    ("ASMK* regional search (grid)", "rootsift-asmk-star",
     ["regions.source=grid", "aggregation.regional_search=true"]),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--size", default="default", choices=sorted(SIZES))
    parser.add_argument("--detector", help="landmark detector SavedModel: adds D2R rows")
    parser.add_argument("--rerank", type=int, default=100)
    args = parser.parse_args()
    data = args.out / "data"
    if not (data / "synthetic.json").exists():
        generate(data, overwrite=True, **SIZES[args.size])
    configs = list(CONFIGS)
    if args.detector:
        configs += [
            ("D2R-R-ASMK* (detector)", "rootsift-d2r-r-asmk-star",
             [f"regions.detector_path={args.detector}"]),
            ("D2R-ASMK* regional search (detector)", "rootsift-asmk-star",
             ["regions.source=detector", f"regions.detector_path={args.detector}",
              "aggregation.regional_search=true"]),
        ]
    rows = []
    for label, preset, overrides in configs:
        index = args.out / label.replace(" ", "_").replace("*", "s").replace("(", "").replace(")", "")
        t0 = time.perf_counter()
        build_index(load_config(preset, overrides=overrides), ImageSource.from_dataset(data), index)
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
        rows.append(row)
        print(json.dumps(row))
    (args.out / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
    print("\n| config | Medium | Hard | Medium +SV | Hard +SV | search ms/query | re-rank ms/query "
          "| items/image | build s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['medium']} | {r['hard']} | {r['medium + SV']} | "
              f"{r['hard + SV']} | {r['search_ms']} | {r['rerank_ms']} | {r['items_per_image']} "
              f"| {r['build_s']} |")


if __name__ == "__main__":
    main()
