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
import logging
import os
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from tqdm import tqdm

from d2r import cli
from d2r.evaluate import format_table, write_metrics
from d2r.extract import read_regions
from d2r.report import report_matches, write_report
from d2r.searcher import Query, Searcher
from d2r.types import SearchResult
from d2r.verification import stack_results

__all__ = ["run_dataset", "run_image", "main"]

logger = logging.getLogger(__name__)


def _parse_box(text: str) -> tuple[float, float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"--box must be x1,y1,x2,y2 in pixels, got {text!r}")
    return values  # type: ignore[return-value]


def _rerank(searcher: Searcher, queries: Sequence[Query],
            initial: SearchResult) -> tuple[SearchResult, list | None]:
    """The initial result with its head re-ranked (and the spatial-verification details).

    CNN descriptors re-rank by AML localization (``search.aml_rerank``), local
    features by spatial verification of the top ``verification.rerank``.  Only the
    verified head is handed to verification; the tail is appended unchanged, so a
    full ranking of a million images costs no per-entry bookkeeping.
    """
    if searcher.config.features.backend == "cnn":
        return searcher.localize_rerank(queries, initial, workers=os.cpu_count() or 1), None
    top_n = searcher.config.verification.rerank
    if top_n <= 0:
        return initial, None
    head = SearchResult(initial.scores[:, :top_n], initial.ids[:, :top_n], initial.names)
    reranked = searcher.rerank([q.features for q in queries], head, workers=os.cpu_count() or 1)
    top = stack_results(reranked, searcher.names)
    return SearchResult(np.concatenate([top.scores, initial.scores[:, top_n:]], axis=1),
                        np.concatenate([top.ids, initial.ids[:, top_n:]], axis=1),
                        searcher.names), reranked


def run_image(searcher: Searcher, image: str | os.PathLike,
              box: Optional[Sequence[float]] = None) -> list[dict]:
    """Ranked database images for one query image: ``[{"rank", "name", "score", "inliers"}]``."""
    query = searcher.query(image, box=box)
    result, reranked = _rerank(searcher, [query], searcher.search([query.features]))
    rows = []
    for rank, (image_id, score) in enumerate(zip(result.ids[0], result.scores[0]), 1):
        if image_id < 0:
            break
        row = {"rank": rank, "name": searcher.names[image_id], "score": float(score)}
        if reranked is not None and rank <= len(reranked[0].inliers):
            row["inliers"] = int(reranked[0].inliers[rank - 1])
        rows.append(row)
    return rows


def run_dataset(searcher: Searcher, dataset_dir: str | os.PathLike, out: str | os.PathLike,
                *, benchmark: str = "auto", rotations: str | os.PathLike | None = None,
                report: bool = False, distractor_list: str | os.PathLike | None = None,
                distractor_root: str | os.PathLike | None = None,
                show_progress: bool | None = None) -> dict:
    """Run every query of a benchmark; write rankings and metrics to ``out``.

    ``benchmark`` and ``rotations`` select and read it as
    :func:`d2r.datasets.benchmarks.load_benchmark` does (``"auto"``: from the
    directory's files); queries are turned upright and cropped to their box.
    With ``report`` also write the visual report to ``out/report/index.html``;
    with the distractor list and folder the database is the dataset + R1M.

    Returns:
        The metrics of :meth:`~d2r.datasets.benchmarks.Benchmark.evaluate`.
    """
    dataset = cli.load_dataset(dataset_dir, benchmark=benchmark, rotations=rotations,
                               distractor_list=distractor_list, distractor_root=distractor_root)
    position = {name: i for i, name in enumerate(dataset.db_names)}
    missing = [n for n in searcher.names if n not in position]
    if missing:
        raise ValueError(f"index {searcher.path} holds {len(missing)} images that are not in the "
                         f"database of {dataset_dir} (e.g. {missing[0]!r})")
    to_dataset = np.array([position[n] for n in searcher.names] + [-1], np.int64)
    t0 = time.perf_counter()
    queries = [searcher.query(dataset.query_path(i), box=dataset.query_box(i),
                              rotation=dataset.query_rotation(i))
               for i in tqdm(range(dataset.num_queries), desc="query features", unit="img",
                             disable=None if show_progress is None else not show_progress)]
    t1 = time.perf_counter()
    features = [q.features for q in queries]
    initial = searcher.search(features, k=len(searcher.names))
    t2 = time.perf_counter()
    result, reranked = _rerank(searcher, queries, initial)
    t3 = time.perf_counter()
    ranks = to_dataset[result.ids]
    metrics = dataset.evaluate(ranks)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "ranks.npy", ranks)
    np.save(out / "scores.npy", result.scores)
    write_metrics(metrics, out)
    timing = {
        "queries": dataset.num_queries,
        "extract_s_per_query": (t1 - t0) / max(1, dataset.num_queries),
        "search_s_per_query": (t2 - t1) / max(1, dataset.num_queries),
        "rerank_s_per_query": (t3 - t2) / max(1, dataset.num_queries),
    }
    (out / "timing.json").write_text(json.dumps(timing, indent=2) + "\n")
    if report:
        _write_report(searcher, dataset, ranks, metrics, features, reranked, to_dataset, out)
    return metrics


def _write_report(searcher, dataset, ranks, metrics, queries, reranked, to_dataset, out) -> None:
    """The visual report of a dataset run (inlier matches of re-ranked pairs, regions if any)."""
    verification = None
    if reranked is not None:
        matches = report_matches(reranked, queries, searcher.database_features)
        verification = {(q, int(to_dataset[i])): pair for (q, i), pair in matches.items()}
    regions = None
    if searcher.config.regions.source != "none":
        regions = {int(to_dataset[i]): read_regions(
            searcher.path / "boxes", name, searcher.database_features(i).image_size)
            for i, name in enumerate(searcher.names)}
    page = write_report(out / "report", dataset=dataset, ranks=ranks, metrics=metrics,
                        regions=regions, verification=verification)
    logger.info("report written to %s", page)


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
    sharded.add_argument("--ray-cpus-per-shard", type=float, default=1.0, metavar="C",
                         help="CPUs reserved by each shard actor (default 1; every shard needs "
                              "its actor running, so shards x C must fit the cluster)")
    cli.add_common_args(parser)
    args = cli.parse(parser, argv)
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
        rows = run_image(searcher, args.image, box=args.box)
    for row in rows:
        extra = f"  inliers={row['inliers']}" if "inliers" in row else ""
        print(f"{row['rank']:4d}  {row['score']:.4f}  {row['name']}{extra}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
