"""Query an index: ``d2r query --index INDEX`` (``python -m d2r.query``).

One image::

    d2r query --index INDEX --image photo.jpg [--box x1,y1,x2,y2] [--rerank 100]
        [--top 20] [--format table|json|csv] [--json FILE] [--out DIR [--report]]

prints the best ``--top N`` database images (default 20; 0: every image in the index)
under a header ``rank  score  inliers  -log10NFA  verified  name``: the search goes
``max(N, search.top_k)`` deep, so ``--top`` above ``search.top_k`` is honoured (the
HTTP API follows the same rule); after spatial re-ranking a line says how many of the
re-ranked head were verified, by which rule (``verification.decision``), and how the
list is ordered (verified images first).  ``--format json`` prints the same rows as a
JSON list of ``{"rank", "name", "score", "verified", "inliers"?,
"verification_score"?}`` (the last two for the re-ranked head only; the score is
``-log10 NFA``), ``--format csv`` as CSV; ``--json FILE`` writes every result searched
in that JSON shape.  ``--out DIR`` writes every result to
``DIR/results.json``; with ``--report`` also ``DIR/report/index.html``, the query
and its top results as thumbnails (database images are looked up in the folder
the index was built from, or ``--images DIR``).

A whole benchmark (every query cropped to its box, if it has one)::

    d2r query --index INDEX --dataset-dir DIR --out RESULTS [--rerank 100] [--report]
        [--benchmark auto|revisited|oxford-paris|holidays|ukbench] [--rotations FILE]

writes ``RESULTS/ranks.npy`` ((Q, N) database indices of the dataset, best
first), ``RESULTS/scores.npy``, ``RESULTS/metrics.json``, ``RESULTS/timing.json``
and prints the metrics: for ROxf/RPar (revisitop layout) Easy / Medium / Hard
mAP and mP@1/5/10 in percent; for Oxford5k/Paris6k and Holidays mAP and
mP@1/5/10 in percent; for UKBench the N-S score (0..4). The benchmark is
detected from the directory (:mod:`d2r.datasets.benchmarks`); ``--rotations``
turns the listed Holidays queries upright (build the index with the same list).

The index's recorded configuration is the base; query-time settings can change
with ``--config-file FILE.yaml`` and ``--set`` (``search.*``, ``verification.*``,
``aggregation.alpha|tau|num_assignments_query|pooling|database_normalization``);
any other key is refused because the index was built with it.

An index built with ``--ray-shards N`` (or split by ``d2r shards``) is searched
shard by shard on Ray actors and merged exactly; ``--shards DIR`` picks another
sharded directory, ``--ray-address`` the cluster.  Re-ranking reads the database
features from ``INDEX/features``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from d2r.cli import arguments as cli
from d2r.checks import parse_box
from d2r.config import Config
from d2r.distributed.options import DEFAULT_CPUS_PER_SHARD
from d2r.errors import InputError
from d2r.api import DEFAULT_TOP, Hit, Index, evaluate, open_index
from d2r.io.atomic import atomic_write_json
from d2r.spatial.decision import error_rate, rest_order, rule, verified_order
from d2r.report.query_page import write_result_page
from d2r.pipeline.sources import locate as locate_in

__all__ = ["main"]

def _parse_box(text: str) -> tuple[float, float, float, float]:
    try:
        return parse_box(text, "--box")
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser() -> argparse.ArgumentParser:
    parser = cli.Parser("d2r query", __doc__)
    parser.add_index()
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--image", metavar="FILE", help="one query image")
    mode.add_argument("--dataset-dir", metavar="DIR", help="run every query of this benchmark")
    cli.add_benchmark_args(parser)
    cli.add_distractor_args(parser)
    parser.add_argument("--box", type=_parse_box, metavar="X1,Y1,X2,Y2",
                        help="query box in pixels of the image (negative values allowed)")
    parser.add_argument("--out", metavar="DIR",
                        help="results directory: ranks, metrics (dataset mode) or results.json "
                             "(one image)")
    parser.add_argument("--top", type=int, default=DEFAULT_TOP, metavar="N",
                        help=f"results to print (default {DEFAULT_TOP}; 0: every image in the "
                             f"index); the search goes max(N, search.top_k) deep")
    parser.add_argument("--format", choices=("table", "json", "csv"), default="table",
                        help="how to print the results (default: table)")
    parser.add_argument("--json", metavar="FILE",
                        help="also write every result searched here as JSON")
    parser.add_argument("--report", action="store_true",
                        help="also write an HTML page to OUT/report/index.html: the benchmark "
                             "report, or one image's results with thumbnails")
    parser.add_argument("--images", metavar="DIR",
                        help="with --report for one image: the folder of the database images "
                             "(default: the --images / --image-list folder the index was "
                             "built from)")
    parser.add_argument("--rerank", type=int, metavar="N",
                        help="spatially verify the top N (sets verification.rerank; 0: off)")
    group = parser.add_argument_group("query-time configuration (on top of the index's record)")
    group.add_argument("--config-file", action="append", default=[], metavar="FILE",
                       help="YAML file of query-time settings (repeatable)")
    group.add_argument("--set", dest="overrides", action="append", default=[],
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
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    return cli.run(_parser(), argv, _query, value_options=("--box",))


def _query(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Answer one image or a benchmark; print the ranking or the metrics."""
    if args.rotations and not args.dataset_dir:
        parser.error("--rotations needs --dataset-dir (a Holidays benchmark)")
    if args.dataset_dir and not args.out:
        parser.error("--dataset-dir needs --out")
    if args.box is not None and not args.image:
        parser.error("--box applies to --image (benchmark queries use their own boxes)")
    if args.top < 0:
        parser.error(f"--top must be >= 0, got {args.top}")
    if args.report and not args.out:
        parser.error("--report needs --out DIR (the page is written to DIR/report/index.html)")
    if args.images and not (args.image and args.report):
        parser.error("--images applies to --image with --report")
    if args.out:
        cli.check_output_dir(args.out, "--out")
    if args.json:
        cli.check_output_file(args.json, "--json")
    if args.image:
        return _query_image(args)
    with open_index(args.index, rerank=args.rerank, settings=args.overrides,
                    config_files=args.config_file, shards=args.shards,
                    shard_options=_shard_options(args)) as index:
        table = evaluate(args.dataset_dir, index=index, benchmark=args.benchmark,
                         rotations=args.rotations, out=args.out, report=args.report,
                         distractors=args.distractors, distractor_dir=args.distractor_dir)
    print(table)
    return 0


def _shard_options(args: argparse.Namespace) -> dict:
    return {"address": args.ray_address, "num_cpus_per_shard": args.ray_cpus_per_shard}


def _query_image(args: argparse.Namespace) -> int:
    """Search ``--image`` with :meth:`d2r.Index.search`; print (and write) its hits."""
    with open_index(args.index, rerank=args.rerank, settings=args.overrides,
                    config_files=args.config_file, shards=args.shards,
                    shard_options=_shard_options(args)) as index:
        config = index.settings
        depth = max(args.top, config.search.top_k) if args.top else 0  # every hit searched
        hits = index.search(args.image, box=args.box, top=depth)
        if args.out:
            _write_image_results(Path(args.out), args, hits, index, config)
    rows = [hit.row() for hit in hits]
    if args.json:
        atomic_write_json(args.json, rows)
    shown = rows[:args.top] if args.top else rows
    if args.format == "json":
        print(json.dumps(shown, indent=2))
    elif args.format == "csv":
        _print_csv(shown)
    else:
        _print_table(hits[:len(shown)], hits, config)
    return 0


def _write_image_results(out: Path, args: argparse.Namespace, hits: list[Hit], index: Index,
                         config: Config) -> None:
    """``OUT/results.json`` (every hit) and, with ``--report``, ``OUT/report/index.html``
    with the top ``--top`` hits."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "results.json", [hit.row() for hit in hits])
    if not args.report:
        return
    locate = (lambda name: locate_in(args.images, name)) if args.images else index.image_file
    write_result_page(
        out / "report", query=args.image, box=args.box, rows=[hit.row() for hit in hits],
        shown=args.top or len(hits), locate=locate, verification=config.verification,
        index=str(args.index), hint=None if args.images else "--images DIR",
        expansion=config.search.query_expansion if any(hit.verified for hit in hits) else 0)


def _print_table(shown: list[Hit], hits: list[Hit], config: Config) -> None:
    """The ``rank  score  inliers  -log10NFA  verified  name`` table, with how the list was
    ordered ("-": not re-ranked)."""
    verified = sum(hit.verified for hit in hits)
    checked = sum(hit.inliers is not None for hit in hits)
    if checked:
        expansion = config.search.query_expansion if verified else 0
        print(f"# re-ranked: the top {checked} were spatially verified; {verified} verified "
              f"({rule(config.verification)}: {error_rate(config.verification)}) come first "
              f"({verified_order(config.verification)}), "
              f"{rest_order(config.verification, expansion=expansion)}")
    print(f"{'rank':>4}  {'score':>7}  {'inliers':>7}  {'-log10NFA':>9}  {'verified':>8}  name")
    for hit in shown:
        head = hit.inliers is not None
        print(f"{hit.rank:4d}  {hit.score:7.4f}  {hit.inliers if head else '-':>7}  "
              f"{_number(hit.verification_score):>9}  "
              f"{str(hit.verified).lower() if head else '-':>8}  {hit.name}")
    if len(shown) < len(hits):
        print(f"# {len(hits) - len(shown)} more (--top 0 shows all)")


def _number(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.1f}"


def _print_csv(rows: list[dict]) -> None:
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(["rank", "score", "inliers", "verification_score", "verified", "name"])
    for row in rows:
        score = row.get("verification_score")
        writer.writerow([row["rank"], f"{row['score']:.6g}", row.get("inliers", ""),
                         "" if score is None else f"{score:.6g}", str(row["verified"]).lower(),
                         row["name"]])


if __name__ == "__main__":
    raise SystemExit(main())
