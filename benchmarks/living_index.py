"""Cost of a living index: ``add`` throughput, search over many segments vs one, compaction.

On the demo's synthetic benchmark (``d2r demo --out DEMO`` first, or ``--demo DEMO``): an
index of the first ``--base`` database photos (with the demo index's codebook), then the
remaining photos added in ``--segments`` equal batches (``d2r add``'s library call, no
process start-up).  Reported: add throughput (images/s, median over the batches), search
seconds per query (queries' features extracted once; median of ``--repeats`` passes over
every query) with all segments and after ``compact``, the rebuild's, and compaction time.
Answers are checked equal to a rebuild's at each step.

Usage::

    python benchmarks/living_index.py --out /tmp/d2r-living
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from d2r.config import from_dict, upgrade_record
from d2r.pipeline.build import build_index
from d2r.pipeline.searcher import Searcher
from d2r.pipeline.update import add_images, compact_index
from d2r.pipeline.sources import ImageSource


def search_seconds(index: Path, queries: list[Path], repeats: int):
    """(median seconds per query of search only, the answers as (name, score) lists)."""
    with Searcher(index) as searcher:
        features = [searcher.image_features(q) for q in queries]
        passes = []
        for _ in range(repeats):
            start = time.perf_counter()
            for f in features:
                searcher.search([f])
            passes.append((time.perf_counter() - start) / len(features))
        result = searcher.search(features, k=len(searcher.names))
        answers = [[(searcher.names[i], float(s)) for i, s in zip(ids, scores) if i >= 0]
                   for ids, scores in zip(result.ids, result.scores)]
    return statistics.median(passes), answers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("/tmp/d2r-living"))
    parser.add_argument("--demo", type=Path, help="an existing `d2r demo --out` directory")
    parser.add_argument("--base", type=int, default=100)
    parser.add_argument("--segments", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    demo = args.demo or args.out / "demo"
    if not (demo / "index" / "index.json").exists():
        subprocess.run([sys.executable, "-m", "d2r", "demo", "--out", str(demo)], check=True,
                       capture_output=True)
    manifest = json.loads((demo / "index" / "index.json").read_text())
    codebook = (demo / "index" / manifest["codebook"]["path"]).resolve()
    values = upgrade_record(manifest["config"])
    values["codebook"]["path"] = str(codebook)
    config = from_dict(values)
    photos = sorted((demo / "data" / "jpg").glob("*_db_*.jpg"))
    queries = sorted((demo / "data" / "jpg").glob("*_q_*.jpg"))
    work = args.out / "work"
    shutil.rmtree(work, ignore_errors=True)
    folders = {"all": photos, "base": photos[:args.base]}
    rest = photos[args.base:]
    size = -(-len(rest) // args.segments)
    for s in range(args.segments):
        folders[f"add{s:03d}"] = rest[s * size:(s + 1) * size]
    for name, files in folders.items():
        (work / name).mkdir(parents=True)
        for file in files:
            os.link(file, work / name / file.name)
    full = build_index(config, ImageSource.from_directory(work / "all"), work / "full",
                       show_progress=False)
    index = build_index(config, ImageSource.from_directory(work / "base"), work / "living",
                        show_progress=False)
    rates = []
    for s in range(args.segments):
        source = ImageSource.from_directory(work / f"add{s:03d}")
        start = time.perf_counter()
        add_images(index, source, show_progress=False)
        rates.append(len(source) / (time.perf_counter() - start))
    rebuild_s, expected = search_seconds(full, queries, args.repeats)
    segmented_s, answers = search_seconds(index, queries, args.repeats)
    assert answers == expected, "segments answer differently from the rebuild"
    start = time.perf_counter()
    compact_index(index, show_progress=False)
    compact_s = time.perf_counter() - start
    compacted_s, answers = search_seconds(index, queries, args.repeats)
    assert answers == expected, "the compacted index answers differently from the rebuild"
    result = {
        "images": len(photos), "base": args.base, "segments": args.segments,
        "images_per_add": size, "add_images_per_s_median": statistics.median(rates),
        "search_s_per_query": {"rebuild": rebuild_s, f"{args.segments + 1}_segments":
                               segmented_s, "compacted": compacted_s},
        "segments_over_compacted": segmented_s / compacted_s,
        "compact_s": compact_s, "answers_equal_rebuild": True,
        "load_average": os.getloadavg()[0],
    }
    (args.out / "living_index.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"add: {result['add_images_per_s_median']:.1f} images/s ({size} per add); search per "
          f"query: {args.segments + 1} segments {segmented_s * 1e3:.2f} ms, compacted "
          f"{compacted_s * 1e3:.2f} ms (x{result['segments_over_compacted']:.2f}), rebuild "
          f"{rebuild_s * 1e3:.2f} ms; compact {compact_s:.1f} s; answers equal the rebuild's")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
