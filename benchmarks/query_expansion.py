"""Verified query expansion on the synthetic benchmark, averaged over generator seeds.

    python benchmarks/query_expansion.py --out /tmp/d2r-qe [--seeds 0 1 2] [--size default]

For each seed: generate the benchmark, build one RootSIFT + ASMK* index (the default
preset), then run every query with each row's query-time settings: ASMK*, + spatial
verification of the top 100 (affine RANSAC; USAC MAGSAC++; a relative threshold; a
homography), + verified query expansion (average, alpha-weighted by inliers, inlier
features only).  Prints Easy / Medium / Hard mAP as mean +- std over the
seeds (the same seeds for every row) and the seconds per query of search and of
re-ranking (verification, plus expansion and the second search for the QE rows).
Figures go to ``OUT/summary.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from d2r.config import load_config
from d2r.datasets.synthetic import SIZES, generate
from d2r.pipeline.build import build_index
from d2r.pipeline.run import run_dataset
from d2r.pipeline.searcher import Searcher
from d2r.pipeline.sources import ImageSource

SV = ["verification.rerank=100"]
ROWS = {
    "ASMK*": ["verification.rerank=0"],
    "+ SV": SV,
    "+ SV + QE (avg, 5)": SV + ["search.query_expansion=5"],
    "+ SV + QE (avg, 10)": SV + ["search.query_expansion=10"],
    "+ SV + QE (alpha 3, 10)": SV + ["search.query_expansion=10", "search.qe_alpha=3"],
    "+ SV + QE (inlier features, 10)": SV + ["search.query_expansion=10",
                                             "search.qe_features=inliers"],
    "+ SV + QE (inlier region, 10)": SV + ["search.query_expansion=10",
                                           "search.qe_features=region"],
    "+ SV + QE (inlier region, 50)": SV + ["search.query_expansion=50",
                                           "search.qe_features=region"],
    "+ SV + QE (inlier region, 50, alpha 1)": SV + ["search.query_expansion=50",
                                                    "search.qe_features=region",
                                                    "search.qe_alpha=1"],
    "+ SV + QE (inlier region, 3)": SV + ["search.query_expansion=3",
                                          "search.qe_features=region"],
    "+ SV + QE (inlier features, 3)": SV + ["search.query_expansion=3",
                                            "search.qe_features=inliers"],
    "+ SV (USAC)": SV + ["verification.method=usac"],
    "+ SV (USAC, 3% of the diagonal)": SV + ["verification.method=usac",
                                             "verification.relative_threshold=0.03"],
    "+ SV (RANSAC homography)": SV + ["verification.model=homography"],
    "+ SV (USAC) + QE (avg, 10)": SV + ["verification.method=usac", "search.query_expansion=10"],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("/tmp/d2r-qe"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--size", choices=sorted(SIZES), default="default")
    parser.add_argument("--config", default="rootsift-asmk-star")
    parser.add_argument("--rows", nargs="+", choices=sorted(ROWS), default=list(ROWS),
                        help="rows to run (default: all)")
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {row: [] for row in args.rows}
    for seed in args.seeds:
        data = args.out / f"seed{seed}" / "data"
        if not (data / "synthetic.json").exists():
            generate(data, seed=seed, overwrite=True, **SIZES[args.size])
        index = args.out / f"seed{seed}" / "index"
        if not (index / "index.json").exists():
            build_index(load_config(args.config), ImageSource.from_dataset(data), index,
                        show_progress=False)
        for row in args.rows:
            overrides = ROWS[row]
            out = args.out / f"seed{seed}" / row.replace(" ", "_").replace("*", "star")
            with Searcher(index, overrides=overrides) as searcher:
                metrics = run_dataset(searcher, data, out, show_progress=False)
            timing = json.loads((out / "timing.json").read_text())
            runs[row].append({**{p: metrics[p]["mAP"] for p in ("easy", "medium", "hard")},
                              "search_s": timing["search_s_per_query"],
                              "rerank_s": timing["rerank_s_per_query"]})
    summary = {}
    print(f"{'row':34} {'Easy':>13} {'Medium':>13} {'Hard':>13} {'search':>9} {'re-rank':>9}")
    for row, values in runs.items():
        stats = {key: (float(np.mean([v[key] for v in values])),
                       float(np.std([v[key] for v in values])))
                 for key in values[0]}
        summary[row] = {"overrides": ROWS[row], "mean_std": stats, "runs": values}
        cells = " ".join(f"{stats[p][0]:6.2f} ± {stats[p][1]:4.2f}"
                         for p in ("easy", "medium", "hard"))
        print(f"{row:34} {cells} {stats['search_s'][0] * 1e3:7.1f}ms "
              f"{stats['rerank_s'][0] * 1e3:7.1f}ms")
    (args.out / "summary.json").write_text(json.dumps(
        {"seeds": args.seeds, "size": args.size, "rows": summary}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
