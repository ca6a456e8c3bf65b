"""Query an index: ``python -m d2r.query --index INDEX``.

One image::

    python -m d2r.query --index INDEX --image photo.jpg [--box x1,y1,x2,y2] [--rerank 100]

prints the ranked database images (and writes them as JSON with ``--json``).

A whole benchmark (every query cropped to its box, if it has one)::

    python -m d2r.query --index INDEX --dataset-dir DIR --out RESULTS [--rerank 100]
        [--benchmark auto|revisited|oxford-paris|holidays|ukbench] [--rotations FILE]

writes ``RESULTS/ranks.npy`` ((Q, N) database indices of the dataset, best
first), ``RESULTS/scores.npy``, ``RESULTS/metrics.json``, ``RESULTS/timing.json``
and prints the metrics: for ROxf/RPar (revisitop layout) Easy / Medium / Hard
mAP and mP@1/5/10 in percent; for Oxford5k/Paris6k and Holidays mAP and
mP@1/5/10 in percent; for UKBench the N-S score (0..4). The benchmark is
detected from the directory (:mod:`d2r.datasets.benchmarks`); ``--rotations``
turns the listed Holidays queries upright (build the index with the same list).
Query-time settings can change with ``--set`` (``search.*``,
``verification.*``, ``aggregation.alpha|tau|num_assignments_query|pooling``).

An index built with ``--ray-shards N`` (or split by ``python -m
d2r.distributed.shards``) is searched shard by shard on Ray actors and merged
exactly; ``--shards DIR`` picks another sharded directory, ``--ray-address``
the cluster.  Re-ranking reads the database features from ``INDEX/features``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional, Sequence

from d2r import cli
from d2r.distributed.options import DEFAULT_CPUS_PER_SHARD
from d2r.pipeline.run import FeaturelessQueryError, run_dataset, run_image
from d2r.pipeline.searcher import Searcher
from d2r.results import format_table

__all__ = ["main"]


def _parse_box(text: str) -> tuple[float, float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"--box must be x1,y1,x2,y2 in pixels, got {text!r}")
    return values  # type: ignore[return-value]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m d2r.query", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", required=True, metavar="INDEX", help="index directory")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--image", metavar="FILE", help="one query image")
    mode.add_argument("--dataset-dir", metavar="DIR", help="run every query of this benchmark")
    cli.add_benchmark_args(parser)
    cli.add_distractor_args(parser)
    parser.add_argument("--box", type=_parse_box, help="query box x1,y1,x2,y2 (pixels)")
    parser.add_argument("--out", metavar="DIR", help="results directory (dataset mode)")
    parser.add_argument("--json", metavar="FILE", help="also write the ranked list here")
    parser.add_argument("--report", action="store_true",
                        help="dataset mode: write the HTML report to OUT/report/index.html")
    parser.add_argument("--top", type=int, help="results to show (default search.top_k)")
    parser.add_argument("--rerank", type=int, metavar="N",
                        help="spatially verify the top N (sets verification.rerank)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="query-time override, e.g. aggregation.tau=0.2")
    sharded = parser.add_argument_group("sharded index (Ray; pip install 'd2r[ray]')")
    sharded.add_argument("--shards", metavar="DIR",
                         help="search this sharded directory (default: INDEX/shards when the "
                              "index was built with --ray-shards)")
    sharded.add_argument("--ray-address", metavar="ADDR",
                         help="Ray cluster serving the shards ('auto', ray://HOST:10001; "
                              "default: a local instance)")
    sharded.add_argument("--ray-cpus-per-shard", type=float, default=DEFAULT_CPUS_PER_SHARD,
                         metavar="C",
                         help="CPUs reserved by each shard actor (default %(default)g; every shard "
                              "needs its actor running, so shards x C must fit the cluster)")
    cli.add_common_args(parser)
    args = cli.parse(parser, argv)
    with cli.user_errors(parser, args.verbose):
        return _query(parser, args)


def _query(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Answer one image or a benchmark; print the ranking or the metrics."""
    if args.rotations and not args.dataset_dir:
        parser.error("--rotations needs --dataset-dir (a Holidays benchmark)")
    overrides = list(args.overrides)
    if args.rerank is not None:
        overrides.append(f"verification.rerank={args.rerank}")
    if args.top is not None:
        overrides.append(f"search.top_k={args.top}")
    with Searcher(args.index, overrides=overrides, shards=args.shards,
                  shard_options={"address": args.ray_address,
                                 "num_cpus_per_shard": args.ray_cpus_per_shard}) as searcher:
        if args.dataset_dir:
            if not args.out:
                parser.error("--dataset-dir needs --out")
            metrics = run_dataset(searcher, args.dataset_dir, args.out,
                                  benchmark=args.benchmark, rotations=args.rotations,
                                  report=args.report, distractor_list=args.distractors,
                                  distractor_root=args.distractor_dir)
            print(format_table(metrics))
            return 0
        try:
            rows = run_image(searcher, args.image, box=args.box)
        except FeaturelessQueryError as exc:
            parser.exit(1, f"{parser.prog}: error: {exc}\n")
    for row in rows:
        extra = f"  inliers={row['inliers']}" if "inliers" in row else ""
        print(f"{row['rank']:4d}  {row['score']:.4f}  {row['name']}{extra}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
