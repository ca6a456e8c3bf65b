"""Run queries against an opened index: one image, or every query of a benchmark.

The library behind ``python -m d2r.query`` and :class:`d2r.Index`: :func:`run_image` ranks
the database for one image (with its re-ranked head and inlier counts; :func:`run_images`
for several in one search call), as deep as
:func:`search_depth` says for the results wanted; :func:`run_dataset`
runs a whole benchmark, evaluates it and writes ``ranks.npy`` ((Q, N) database
indices of the dataset, best first), ``scores.npy``, ``metrics.json``,
``timing.json`` and optionally the visual report.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from d2r.datasets.benchmarks import load_benchmark
from d2r.errors import InputError, disk_full
from d2r.pipeline.extraction import read_regions
from d2r.pipeline.searcher import Searcher
from d2r.progress import track
from d2r.report.benchmark import report_matches, write_report
from d2r.report.settings import run_settings
from d2r.evaluation.tables import write_metrics

__all__ = ["FeaturelessQueryError", "DamagedFeaturesError", "run_dataset", "run_image",
           "run_images", "search_depth"]

logger = logging.getLogger(__name__)


class FeaturelessQueryError(InputError):
    """A query image (or box) in which the extractor found no features: any ranking of it
    would be arbitrary."""


class DamagedFeaturesError(InputError):
    """A stored feature file of the index could not be read while re-ranking."""


def search_depth(searcher: Searcher, top: int) -> int:
    """How many results to search for ``top`` wanted (the rule of ``d2r query --top`` and
    the HTTP API): every image of the index for 0, else ``max(top, search.top_k)``."""
    if top == 0:
        return max(1, len(searcher.names))
    return max(top, searcher.config.search.top_k)


@contextlib.contextmanager
def _reading_features(searcher: Searcher):
    """Turn a stored feature file that cannot be read (re-ranking, matched points, the
    report) into a :class:`DamagedFeaturesError` that names it and the check to run."""
    try:
        yield
    except OSError as exc:
        if disk_full(exc):
            raise
        raise DamagedFeaturesError(f"index {searcher.path}: {exc}; `d2r check "
                                   f"{searcher.path}` checks every file of it") from exc


def run_image(searcher: Searcher, image: str | os.PathLike,
              box: Optional[Sequence[float]] = None, *, k: Optional[int] = None,
              timing: Optional[dict] = None, matches: bool = False,
              workers: Optional[int] = None, label: Optional[str] = None) -> list[dict]:
    """Ranked database images for one query image: ``[{"rank", "name", "score", "verified",
    "inliers"?, "verification_score"?}]``.

    ``verified`` is the decision of re-ranking (``RerankResult.verified``; False where not
    checked); the re-ranked head also carries its RANSAC ``inliers`` and
    ``verification_score`` (``-log10 NFA``; None when not computed).

    ``k``: results searched (default ``search.top_k``; see :func:`search_depth`).
    ``timing``, when given, receives the seconds of ``extract``, ``search`` and ``rerank``.
    ``matches`` adds to each re-ranked row ``"matches"``: its inlier pairs ``[xq, yq, xd,
    yd]`` (pixels of the original images) and the database image's ``"image_size"`` ``[W,
    H]`` (:meth:`d2r.Hit.row` picks a few for the server).  ``workers``: threads verifying the re-ranked head (default:
    the cores).  ``label`` names the image in messages (default: its path).
    Raises :class:`FeaturelessQueryError` when the image (or box) has no features, and
    :class:`DamagedFeaturesError` when a stored feature file needed cannot be read.
    """
    return run_images(searcher, [image], [box], k=k, timing=timing, matches=matches,
                      workers=workers, labels=None if label is None else [label])[0]


def run_images(searcher: Searcher, images: Sequence[str | os.PathLike],
               boxes: Sequence[Optional[Sequence[float]]], *, k: Optional[int] = None,
               timing: Optional[dict] = None, matches: bool = False,
               workers: Optional[int] = None,
               labels: Optional[Sequence[str]] = None) -> list[list[dict]]:
    """The rows of :func:`run_image` for each of ``images`` (each cropped to its entry of
    ``boxes``, None: whole), extracted one after another, then searched and re-ranked in
    one call each.  Refuses the first featureless image before any search."""
    clock = time.perf_counter()
    queries = []
    for i, (image, box) in enumerate(zip(images, boxes, strict=True)):
        query = searcher.query(image, box=box)
        if len(query.features) == 0:
            where = "the box" if box is not None else "the image"
            name = image if labels is None else labels[i]
            raise FeaturelessQueryError(f"{name}: no local features in {where} (a blank image, "
                                        f"or a box outside the content); nothing to search with")
        queries.append(query)
    stages = {"extract": time.perf_counter() - clock}
    clock = time.perf_counter()
    result = searcher.search([query.features for query in queries], k=k)
    stages["search"] = time.perf_counter() - clock
    clock = time.perf_counter()
    with _reading_features(searcher):
        result, reranked = searcher.rerank(queries, result,
                                             workers=workers or os.cpu_count() or 1)
        stages["rerank"] = time.perf_counter() - clock
        rows = [_rows(searcher, query, result.ids[q], result.scores[q],
                      None if reranked is None else reranked[q], matches)
                for q, query in enumerate(queries)]
    if timing is not None:
        timing.update(stages)
    return rows


def _rows(searcher: Searcher, query, ids: np.ndarray, scores: np.ndarray, reranked,
          matches: bool) -> list[dict]:
    """The result rows of one query (see :func:`run_image`): its (K,) ``ids`` and ``scores``
    and its re-ranking details (None without re-ranking)."""
    rows = []
    for rank, (image_id, score) in enumerate(zip(ids, scores), 1):
        if image_id < 0:
            break
        row = {"rank": rank, "name": searcher.names[image_id], "score": float(score)}
        checked = reranked is not None and rank <= len(reranked.inliers) \
            and reranked.inliers[rank - 1] >= 0
        row["verified"] = bool(checked and reranked.verified[rank - 1])
        if checked:
            strength = float(reranked.verification_scores[rank - 1])
            row["inliers"] = int(reranked.inliers[rank - 1])
            row["verification_score"] = None if np.isnan(strength) else strength
            if matches:
                row.update(_matched_points(searcher, query.features, int(image_id),
                                           reranked.matches[rank - 1]))
        rows.append(row)
    return rows


def _matched_points(searcher: Searcher, query, image_id: int, pairs: np.ndarray) -> dict:
    """``{"matches": [[xq, yq, xd, yd], ...] (every inlier pair), "image_size"}``."""
    database = searcher.database_features(image_id)
    points = np.concatenate([query.locations[pairs[:, 0]], database.locations[pairs[:, 1]]],
                            axis=1) if len(pairs) else np.zeros((0, 4))
    return {"matches": np.round(points, 1).tolist(),
            "image_size": [int(v) for v in database.image_size]}


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
    When a re-ranking changed the ranking, the metrics of the ranking before it
    are written to ``metrics_initial.json`` (same shape as ``metrics.json``) and
    shown next to the re-ranked ones in the report.

    Returns:
        The metrics of :meth:`~d2r.datasets.benchmarks.Benchmark.evaluate`.
    """
    dataset = load_benchmark(dataset_dir, kind=benchmark, rotations=rotations,
                             distractor_list=distractor_list, distractor_root=distractor_root)
    position = {name: i for i, name in enumerate(dataset.db_names)}
    missing = [n for n in searcher.names if n not in position]
    if missing:
        raise InputError(f"index {searcher.path} holds {len(missing)} images that are not in the "
                         f"database of benchmark {dataset_dir} (e.g. {missing[0]!r}): query the "
                         f"index with the benchmark it was built from")
    to_dataset = np.array([position[n] for n in searcher.names] + [-1], np.int64)
    t0 = time.perf_counter()
    queries = [searcher.query(dataset.query_path(i), box=dataset.query_box(i),
                              rotation=dataset.query_rotation(i))
               for i in track(range(dataset.num_queries), desc="query features",
                              show=show_progress)]
    t1 = time.perf_counter()
    features = [q.features for q in queries]
    blank = [i for i, f in enumerate(features) if len(f) == 0]
    if blank:
        logger.warning("%d queries have no features (e.g. query %d): their rankings are "
                       "arbitrary (every score 0)", len(blank), blank[0])
    initial = searcher.search(features, k=len(searcher.names))
    t2 = time.perf_counter()
    with _reading_features(searcher):
        result, reranked = searcher.rerank(queries, initial, workers=os.cpu_count() or 1)
    t3 = time.perf_counter()
    ranks = to_dataset[result.ids]
    metrics = dataset.evaluate(ranks)
    initial_metrics = None
    if reranked is not None or result is not initial:
        initial_metrics = dataset.evaluate(to_dataset[initial.ids])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "ranks.npy", ranks)
    np.save(out / "scores.npy", result.scores)
    write_metrics(metrics, out)
    if initial_metrics is not None:  # NaN (no query with positives) becomes null
        plain = json.loads(json.dumps(initial_metrics), parse_constant=lambda _: None)
        (out / "metrics_initial.json").write_text(json.dumps(plain, indent=2) + "\n")
    else:
        (out / "metrics_initial.json").unlink(missing_ok=True)  # not a stale one of another run
    timing = {
        "queries": dataset.num_queries,
        "extract_s_per_query": (t1 - t0) / max(1, dataset.num_queries),
        "search_s_per_query": (t2 - t1) / max(1, dataset.num_queries),
        "rerank_s_per_query": (t3 - t2) / max(1, dataset.num_queries),
    }
    (out / "timing.json").write_text(json.dumps(timing, indent=2) + "\n")
    if report:
        with _reading_features(searcher):
            _write_report(searcher, dataset, ranks, metrics, features, reranked, to_dataset,
                          out, initial_metrics=initial_metrics, show_progress=show_progress)
    return metrics


def _write_report(searcher, dataset, ranks, metrics, queries, reranked, to_dataset, out, *,
                  initial_metrics=None, show_progress=None) -> None:
    """The visual report of a dataset run: how it was produced, metrics before and after
    re-ranking, inlier matches of re-ranked pairs, regions if any."""
    verification = None
    if reranked is not None:
        matches = report_matches(reranked, queries, searcher.database_features)
        verification = {(q, int(to_dataset[i])): pair for (q, i), pair in matches.items()}
    regions = None
    if searcher.config.regions.source != "none":
        regions = {int(to_dataset[i]): read_regions(
            searcher.path / "boxes", name, searcher.database_features(i).image_size)
            for i, name in enumerate(searcher.names)}
    settings = run_settings(searcher.config, getattr(searcher, "manifest", None),
                            index=Path(searcher.path).resolve(), num_queries=dataset.num_queries,
                            num_db=dataset.num_db)
    page = write_report(out / "report", dataset=dataset, ranks=ranks, metrics=metrics,
                        initial_metrics=initial_metrics, settings=settings,
                        regions=regions, verification=verification, show_progress=show_progress)
    logger.info("report written to %s", page)
