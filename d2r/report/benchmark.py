"""A static HTML report of a retrieval run on a benchmark.

:func:`write_report` writes, under ``out_dir``::

    index.html                 how the run was produced, metrics (before and after
                               re-ranking when both are given), PR curves, one
                               section per query
    pr_<protocol>.png          precision/recall curves (Easy, Medium, Hard; "all"
                               for the classic benchmarks)
    thumbs/q_<q>.jpg           query images with their box (also used by the match views)
    thumbs/db_<id>.jpg         database images with detected regions, one file per
                               image however many queries show it
    matches/q<q>.html          the verified pairs of one query: the two images side
                               by side with lines between matched points (SVG drawn
                               over the thumbnails, so no image is stored twice)

Each query shows its top-``top_k`` results with a green (correct), red (wrong)
or grey (ignored) border under one protocol (for Revisited Oxford/Paris Medium
by default: correct means an easy or hard view of the landmark, ignored means
junk; the classic benchmarks have one), with the query's average precision.
Images listed with a rotation (Holidays) are shown upright, as their features
were extracted.  All links are relative, so the directory can be opened from
``file://`` or moved as a whole.

This module labels the results and assembles the pages; the pictures (thumbnails,
match lines, curves) come from :mod:`d2r.report.drawing`, the metrics and settings
tables from :mod:`d2r.report.tables`, the settings rows from :mod:`d2r.report.settings`.
"""

from __future__ import annotations

import html
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from d2r.datasets.benchmarks import Benchmark
from d2r.datasets.revisited import RevisitedDataset
from d2r.evaluation.metrics import compute_map
from d2r.progress import track
from d2r.report.drawing import (MAX_LINES, QUERY_BOX, RECALL_GRID, REGION_BOX, draw_boxes,
                                match_svg, plot_pr, save_jpeg, thumbnail)
from d2r.report.tables import metrics_notes, metrics_table, settings_table
from d2r.types import Boxes, LocalFeatures

__all__ = [
    "LABEL_COLOURS",
    "LABEL_WORDS",
    "write_report",
    "label_results",
    "precision_recall",
    "report_matches",
]

logger = logging.getLogger(__name__)

LABEL_COLOURS = {"positive": "#1a9850", "negative": "#d73027", "junk": "#9e9e9e"}
"""Border colour of a result by its label under the report's protocol."""

LABEL_WORDS = {"positive": "correct", "negative": "wrong", "junk": "ignored"}
"""What each label means, in the words the page uses."""

_KIND_WORDS = {"easy": "easy view", "hard": "hard view", "junk": "ignored view",
               "positive": "in the ground truth", "query": "the query image itself"}
_PROTOCOL_WORDS = {
    "easy": "only easy views of the landmark count as correct; hard views and junk are ignored",
    "medium": "easy and hard views of the landmark count as correct; junk is ignored",
    "hard": "only hard views of the landmark count as correct; easy views and junk are ignored",
    "all": "the images the benchmark lists for the query count as correct",
}

_CSS = """
body { font-family: sans-serif; margin: 16px; color: #222; max-width: 1500px; }
p.note { color: #555; font-size: 13px; max-width: 900px; }
table { border-collapse: collapse; margin-bottom: 8px; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
table.settings th, table.settings td { text-align: left; vertical-align: top; }
table.settings td { overflow-wrap: anywhere; max-width: 900px; }
td.up { color: #1a7f37; } td.down { color: #c62828; }
.legend span { display: inline-block; padding: 1px 8px; margin-right: 6px; color: #fff; }
.curves img { margin-right: 8px; border: 1px solid #ddd; }
section.query { display: flex; gap: 12px; align-items: flex-start;
                border-top: 1px solid #ddd; padding: 10px 0; }
.qinfo { width: 270px; flex: none; font-size: 13px; }
.qinfo img { border: 4px solid #444; }
.results { display: flex; flex-wrap: wrap; gap: 8px; }
figure.result { margin: 0; font-size: 11px; width: 204px; }
figure.result img { border: 5px solid; display: block; }
figure.result figcaption { overflow-wrap: anywhere; }
""" + "".join(
    f"figure.{label} img {{ border-color: {colour}; }}\n" for label, colour in LABEL_COLOURS.items()
)

_MATCH_CSS = """
body { font-family: sans-serif; margin: 16px; color: #222; }
section.pair { border-top: 1px solid #ddd; padding: 8px 0; }
section.pair svg { width: 100%; max-width: 960px; height: auto; display: block; }
section.pair path { vector-effect: non-scaling-stroke; }
"""

def _as_benchmark(dataset: Any) -> Benchmark:
    """A :class:`Benchmark` as is; a :class:`RevisitedDataset` wrapped in one."""
    if isinstance(dataset, Benchmark):
        return dataset
    if isinstance(dataset, RevisitedDataset):
        return Benchmark("revisited", dataset)
    raise TypeError(
        f"dataset must be a Benchmark or a RevisitedDataset, got {type(dataset).__name__}"
    )


def _check_ranks(ranks: Any, dataset: Benchmark) -> np.ndarray:
    arr = np.asarray(ranks)
    if arr.ndim != 2 or arr.shape[0] != dataset.num_queries:
        raise ValueError(
            f"ranks must have shape ({dataset.num_queries}, N) for {dataset.name}, got {arr.shape}"
        )
    if arr.size and arr.dtype.kind not in "iu":
        raise TypeError(f"ranks must hold integer database ids, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < -1 or arr.max() >= dataset.num_db):
        raise ValueError(
            f"ranks hold ids outside [-1, {dataset.num_db}) (database of {dataset.name})"
        )
    return arr


def label_results(
    ranks: np.ndarray, dataset: Benchmark | RevisitedDataset, *, protocol: str | None = None
) -> np.ndarray:
    """Labels of ranked ids under ``protocol`` (default: the benchmark's default protocol).

    Args:
        ranks: (Q, K) int database ids, -1 padding.

    Returns:
        (Q, K) str ``"positive"``, ``"negative"``, ``"junk"`` or ``""`` for padding.
    """
    bench = _as_benchmark(dataset)
    ranks = _check_ranks(ranks, bench)
    out = np.full(ranks.shape, "negative", dtype=object)
    for q, entry in enumerate(bench.protocol_gnd(protocol or bench.default_protocol)):
        out[q, np.isin(ranks[q], entry["junk"])] = "junk"
        out[q, np.isin(ranks[q], entry["ok"])] = "positive"
    out[ranks < 0] = ""
    return out


def precision_recall(ranks: np.ndarray, gnd: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Interpolated precision at recall 0, 0.01, ..., 1, junk removed (revisitop rules).

    Args:
        ranks: (Q, N) int database ids, best first, -1 padding.
        gnd: Q ``{"ok", "junk"}`` mappings (:func:`d2r.evaluation.metrics.protocol_gnd`).

    Returns:
        (Q, 101) float64; precision at recall r is the best precision at any
        recall >= r (0 beyond the last retrieved positive); NaN rows for
        queries without positives.
    """
    ranks = np.asarray(ranks)
    out = np.full((ranks.shape[0], RECALL_GRID.size), np.nan)
    for q, entry in enumerate(gnd):
        ok = np.asarray(entry["ok"], np.int64)
        if ok.size == 0:
            continue
        row = ranks[q][(ranks[q] >= 0) & ~np.isin(ranks[q], entry.get("junk", []))]
        hits = np.flatnonzero(np.isin(row, ok))
        found = np.arange(1, hits.size + 1)
        recall = found / ok.size
        precision = np.maximum.accumulate((found / (hits + 1.0))[::-1])[::-1]
        index = np.searchsorted(recall, RECALL_GRID - 1e-12, side="left")
        padded = np.append(precision, 0.0)
        out[q] = padded[index]
    return out


def _regions_of(regions: Any, dataset: Benchmark):
    if regions is None:
        return lambda i: None
    if isinstance(regions, Mapping):
        return regions.get
    if isinstance(regions, Sequence) and len(regions) == dataset.num_db:
        return lambda i: regions[i]
    raise TypeError(
        f"regions must be a mapping id -> Boxes or a sequence of {dataset.num_db} Boxes/None"
    )


def _check_pair(value: Any, key: Any) -> tuple[np.ndarray, np.ndarray]:
    if not (isinstance(key, tuple) and len(key) == 2):
        raise TypeError(f"verification keys must be (query, db id) tuples, got {key!r}")
    if not (isinstance(value, tuple) and len(value) == 2):
        raise TypeError(f"verification[{key}] must be a (query_xy, db_xy) tuple")
    q_xy = np.asarray(value[0], np.float64).reshape(-1, 2)
    d_xy = np.asarray(value[1], np.float64).reshape(-1, 2)
    if q_xy.shape != d_xy.shape:
        raise ValueError(f"verification[{key}]: {q_xy.shape} query and {d_xy.shape} db points")
    return q_xy, d_xy


def report_matches(
    results: Sequence[Any],
    queries: Sequence[LocalFeatures],
    features: Any,
    *,
    top_k: int = 10,
) -> dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]:
    """The ``verification`` argument of :func:`write_report` from re-ranking results.

    Args:
        results: Q :class:`d2r.spatial.reranking.RerankResult`.
        queries: Q query features.
        features: database features by id (a sequence or a callable).
        top_k: pairs kept per query (the verified ones among the first ``top_k``).

    Returns:
        ``{(query, db id): ((I, 2) query (x, y), (I, 2) database (x, y))}``.
    """
    if len(results) != len(queries):
        raise ValueError(f"{len(results)} results for {len(queries)} queries")
    fetch = features if callable(features) else features.__getitem__
    out = {}
    for q, (result, query) in enumerate(zip(results, queries)):
        for pos in range(min(top_k, result.ids.shape[0])):
            db_id, pairs = int(result.ids[pos]), result.matches[pos]
            if db_id < 0 or result.inliers[pos] < 0:
                continue
            db = fetch(db_id)
            out[(q, db_id)] = (query.locations[pairs[:, 0]], db.locations[pairs[:, 1]])
    return out


def write_report(
    out_dir: str | Path,
    *,
    dataset: Benchmark | RevisitedDataset,
    ranks: Any,
    aps: Any = None,
    top_k: int = 10,
    regions: Any = None,
    verification: Mapping[tuple[int, int], tuple[np.ndarray, np.ndarray]] | None = None,
    metrics: Mapping[str, Any] | None = None,
    initial_metrics: Mapping[str, Any] | None = None,
    settings: Mapping[str, Any] | Sequence[tuple[str, Any]] | None = None,
    protocol: str | None = None,
    title: str | None = None,
    thumb_side: int = 192,
    query_side: int = 256,
    match_side: int = 256,
    show_progress: bool | None = None,
) -> Path:
    """Write the HTML report of a run; return the path of ``index.html``.

    Args:
        out_dir: output directory (created; files of a previous report are replaced).
        dataset: the evaluated benchmark, or a Revisited dataset (images are read
            from its paths).
        ranks: (Q, N) int database ids per query, best first, -1 padding.
        aps: (Q,) AP fractions under ``protocol``; computed from ``ranks`` when None.
        top_k: results shown per query.
        regions: per database image :class:`~d2r.types.Boxes` (pixels) drawn on
            its thumbnail: a mapping id -> Boxes, or a sequence of num_db Boxes/None.
        verification: ``{(query, db id): (query_xy (I, 2), db_xy (I, 2))}`` inlier
            locations in original pixels (see :func:`report_matches`); the pairs
            among the shown results are drawn on their query's match page.
        metrics: table shown at the top, ``{protocol: {name: value}}`` or
            ``{name: value}``; :meth:`Benchmark.evaluate` of ``ranks`` when None.
        initial_metrics: the same metrics of the ranking before re-ranking; when
            given the table shows before, after and the change side by side.
        settings: the "How this was produced" rows, ``{label: text}`` or
            ``[(label, text)]`` (see :func:`d2r.report.settings.run_settings`); HTML-escaped.
        protocol: border colours and AP: ``"easy"``, ``"medium"`` (default) or
            ``"hard"`` for Revisited Oxford/Paris, ``"all"`` (the only one)
            for the classic benchmarks.
        title: page title (default: dataset name).
        thumb_side, query_side, match_side: longest side of result thumbnails as
            shown, of query thumbnails, and of database images in match views, in
            pixels.  A database image is stored once, at ``max(thumb_side,
            match_side)`` when some query has verified pairs, else at ``thumb_side``.
        show_progress: progress over queries (:func:`d2r.progress.track`): None = a
            bar on a terminal and log lines otherwise, True = bar, False = silent.
    """
    dataset = _as_benchmark(dataset)
    protocol = protocol or dataset.default_protocol
    if protocol not in dataset.protocols:
        raise ValueError(f"protocol must be one of {dataset.protocols}, got {protocol!r}")
    for name, value in (("top_k", top_k), ("thumb_side", thumb_side),
                        ("query_side", query_side), ("match_side", match_side)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    ranks = _check_ranks(ranks, dataset)
    gnd = {p: dataset.protocol_gnd(p) for p in dataset.protocols}
    if aps is None:
        aps = compute_map(ranks, gnd[protocol])[1]
    aps = np.asarray(aps, np.float64).reshape(-1)
    if aps.shape != (dataset.num_queries,):
        raise ValueError(f"aps must have shape ({dataset.num_queries},), got {aps.shape}")
    if metrics is None:
        metrics = dataset.evaluate(ranks)
    verification = {key: _check_pair(value, key) for key, value in (verification or {}).items()}

    out = Path(out_dir)
    for sub in ("thumbs", "matches"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for old in [*(out / "matches").glob("q*.html"), *(out / "matches").glob("q*_db*.jpg")]:
        old.unlink()  # match views of an earlier report (this one writes its own)
    curves = _write_curves(out, dataset, ranks, gnd)

    shown = ranks[:, :top_k]
    labels = label_results(shown, dataset, protocol=protocol)
    shown_pairs = {(q, int(i)) for q, row in enumerate(shown.tolist()) for i in row if i >= 0}
    thumbs = _Thumbnails(out, dataset, _regions_of(regions, dataset), thumb_side,
                         max(thumb_side, match_side) if shown_pairs & verification.keys()
                         else thumb_side)
    sections = [_query_section(out, dataset, q, shown[q], labels[q], aps[q],
                               gnd[protocol][q]["ok"].size, protocol, query_side, thumbs,
                               verification)
                for q in track(range(dataset.num_queries), desc="report", unit="query",
                               show=show_progress)]
    page = _report_page(dataset, title, protocol, top_k, settings, metrics, initial_metrics,
                        curves, sections, _extras_note(verification, regions))
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    logger.info("wrote report %s (%d queries, %d thumbnails)", index, dataset.num_queries,
                len(thumbs.written))
    return index


def _write_curves(out: Path, dataset: Benchmark, ranks: np.ndarray,
                  gnd: Mapping[str, Any]) -> list[str]:
    """Write ``pr_<protocol>.png`` for every protocol; their ``<img>`` tags."""
    curves = []
    for p in dataset.protocols:
        mean_ap = compute_map(ranks, gnd[p])[0]
        plot_pr(out / f"pr_{p}.png", precision_recall(ranks, gnd[p]), p, mean_ap)
        curves.append(
            f'<img src="pr_{p}.png" alt="{p} precision-recall curve" width="360" height="300">'
        )
    return curves


class _Thumbnails:
    """Database thumbnails written once each (``thumbs/db_<id>.jpg``, at ``stored_side``,
    regions drawn); ``written[id]`` = (stored size, scale from original pixels)."""

    def __init__(self, out: Path, dataset: Benchmark, region_of, side: int,
                 stored_side: int) -> None:
        self.out, self.dataset, self.region_of = out, dataset, region_of
        self.side, self.stored_side = side, stored_side
        self.written: dict[int, tuple[tuple[int, int], np.ndarray]] = {}

    def get(self, db_id: int) -> tuple[tuple[int, int], np.ndarray]:
        if db_id not in self.written:
            image, scale = thumbnail(self.dataset.db_path(db_id), self.stored_side,
                                     self.dataset.rotation(db_id))
            boxes = self.region_of(db_id)
            if boxes is not None:
                if not isinstance(boxes, Boxes):
                    raise TypeError(f"regions of database image {db_id} must be Boxes")
                draw_boxes(image, boxes.xyxy, scale, REGION_BOX, 2)
            save_jpeg(image, self.out / "thumbs" / f"db_{db_id:06d}.jpg")
            self.written[db_id] = (image.size, scale)
        return self.written[db_id]


def _query_section(out: Path, dataset: Benchmark, q: int, shown: np.ndarray,
                   labels: np.ndarray, ap: float, n_pos: int, protocol: str, query_side: int,
                   thumbs: _Thumbnails, verification: Mapping) -> str:
    """The HTML section of query ``q``: its thumbnail, AP and ``shown`` (K,) results
    labelled ``labels`` (K,); writes its thumbnail and its match page (if any pair)."""
    q_image, q_scale = _query_thumbnail(dataset, q, query_side, 3)
    save_jpeg(q_image, out / "thumbs" / f"q_{q:04d}.jpg")
    kinds = dataset.result_kinds(q)
    figures, pairs = [], []
    for pos, db_id in enumerate(shown.tolist()):
        if db_id < 0:
            continue
        (width, height), scale = thumbs.get(db_id)
        shrink = min(1.0, thumbs.side / max(width, height))
        label = labels[pos]
        db_name = html.escape(dataset.db_names[db_id])
        img = (f'<img src="thumbs/db_{db_id:06d}.jpg" width="{round(width * shrink)}" '
               f'height="{round(height * shrink)}" alt="{db_name}">')
        caption = f"#{pos + 1} {db_name}"
        if db_id in kinds:
            caption += f" · {_KIND_WORDS.get(kinds[db_id], html.escape(kinds[db_id]))}"
        if (q, db_id) in verification:
            pair = verification[(q, db_id)]
            link = f"matches/q{q:04d}.html#db{db_id:06d}"
            img = f'<a href="{link}">{img}</a>'
            caption += f' · <a href="{link}">{len(pair[0])} matched points</a>'
            pairs.append(_pair_section(
                q, q_image.size, q_scale, db_id, (width, height), scale, pair, pos,
                db_name, label, protocol.capitalize()))
        figures.append(
            f'<figure class="result {label}" data-db-id="{db_id}" data-label="{label}">'
            f"{img}<figcaption>{caption}</figcaption></figure>"
        )
    if pairs:
        _write_match_page(out, dataset, q, pairs)
    ap_text = "n/a" if np.isnan(ap) else f"{100 * ap:.1f}"
    return (
        f'<section class="query" id="q{q}"><div class="qinfo">'
        f'<img src="thumbs/q_{q:04d}.jpg" width="{q_image.width}" height="{q_image.height}" '
        f'alt="query {q}"><div><b>{html.escape(dataset.query_names[q])}</b></div>'
        f'<div class="ap" title="average precision, out of 100">AP ({protocol}) '
        f'{ap_text} · {n_pos} correct images in the database</div></div>'
        f'<div class="results">{"".join(figures)}</div></section>'
    )


def _report_page(dataset: Benchmark, title: str | None, protocol: str, top_k: int,
                 settings: Any, metrics: Mapping, initial_metrics: Mapping | None,
                 curves: Sequence[str], sections: Sequence[str], extras: str) -> str:
    """The whole ``index.html`` around the query sections."""
    legend = "".join(
        f'<span style="background:{c}">{LABEL_WORDS[label]}</span>'
        for label, c in LABEL_COLOURS.items()
    )
    name = html.escape(title or f"d2r report: {dataset.name}")
    produced = ""
    if settings:
        produced = f"<h2>How this was produced</h2>{settings_table(settings)}"
    if initial_metrics is not None:
        metrics_intro = ("Before re-ranking: the ranking of the index search alone. After "
                         "re-ranking: the same ranking once its top results were checked and "
                         "reordered. Change: after minus before.")
        curves_intro = "After re-ranking. "
    else:
        metrics_intro, curves_intro = "", ""
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{name}</title>'
        f"<style>{_CSS}</style></head><body><h1>{name}</h1>"
        f"<p>{html.escape(dataset.name)}: {dataset.num_db} database images, "
        f"{dataset.num_queries} queries. Each query below is shown with its top {top_k} "
        f"results, best first.</p>"
        f"{produced}<h2>Results</h2>"
        f'<p class="note">{metrics_intro}</p>{metrics_table(metrics, initial_metrics)}'
        f'<p class="note">{metrics_notes(metrics)}. Protocols decide which images count as '
        f"correct for a query: {_protocol_notes(dataset)}.</p>"
        f"<h2>Precision and recall</h2>"
        f'<p class="note">{curves_intro}Recall: the share of the correct images found so far '
        f"down the ranking; precision: the share of correct images among those returned so "
        f"far. Grey: one line per query; blue: their mean.</p>"
        f'<div class="curves">{"".join(curves)}</div>'
        f"<h2>Top {top_k} per query</h2>"
        f'<p class="legend">{legend}</p>'
        f'<p class="note">Green border: correct match ({_protocol_short(protocol)}); red: wrong '
        f"match; grey: ignored (junk: counts neither way). "
        f"{extras}</p>"
        f"{''.join(sections)}</body></html>\n"
    )


def _protocol_short(protocol: str) -> str:
    if protocol == "all":
        return "listed as correct for the query by the benchmark"
    return f"positive under the {protocol.capitalize()} protocol"


def _protocol_notes(dataset: Benchmark) -> str:
    return "; ".join(f"<b>{p.capitalize()}</b>: {_PROTOCOL_WORDS.get(p, p)}"
                     for p in dataset.protocols)


def _extras_note(verification: Mapping, regions: Any) -> str:
    notes = []
    if verification:
        notes.append('"matched points": pairs of points that look alike in the two images and '
                     "agree on one geometric transformation; click a result to see them")
    if regions is not None:
        notes.append("blue boxes: the regions detected in the database image")
    notes.append("yellow box: the part of the query image that was searched. AP: the "
                 "query's average precision, out of 100")
    return ". ".join(n[0].upper() + n[1:] for n in notes) + "."


def _query_thumbnail(dataset: Benchmark, q: int, side: int,
                     width: int) -> tuple[Image.Image, np.ndarray]:
    """:func:`~d2r.report.drawing.thumbnail` of query ``q`` with its box drawn (if it has one)."""
    image, scale = thumbnail(dataset.query_path(q), side, dataset.query_rotation(q))
    box = dataset.query_box(q)
    if box is not None:
        draw_boxes(image, np.array(box), scale, QUERY_BOX, width)
    return image, scale


def _pair_section(q: int, q_size: tuple[int, int], q_scale: np.ndarray, db_id: int,
                  d_size: tuple[int, int], d_scale: np.ndarray,
                  pair: tuple[np.ndarray, np.ndarray], pos: int, db_name: str, label: str,
                  protocol_name: str) -> str:
    """One verified pair on its query's match page (``db_name`` already escaped)."""
    q_xy, d_xy = pair
    note = f" ({MAX_LINES} drawn)" if q_xy.shape[0] > MAX_LINES else ""
    svg = match_svg(f"../thumbs/q_{q:04d}.jpg", q_size, q_scale,
                    f"../thumbs/db_{db_id:06d}.jpg", d_size, d_scale, q_xy, d_xy)
    word = LABEL_WORDS.get(label, label)
    return (
        f'<section class="pair" id="db{db_id:06d}"><h2>#{pos + 1} {db_name}</h2>'
        f"<p>{q_xy.shape[0]} matched points{note}; this result is "
        f'<b style="color:{LABEL_COLOURS.get(label, "#000")}">{word}</b> '
        f"({protocol_name} protocol).</p>{svg}</section>"
    )


def _write_match_page(out: Path, dataset: Benchmark, q: int, pairs: Sequence[str]) -> str:
    """Write the match page of query ``q`` (its verified pairs); return its relative path."""
    q_name = html.escape(dataset.query_names[q])
    path = f"matches/q{q:04d}.html"
    (out / path).write_text(
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{q_name}: matched points</title><style>{_MATCH_CSS}</style></head><body>"
        f'<p><a href="../index.html#q{q}">back to the report</a></p>'
        f"<h1>{q_name}: matched points</h1>"
        f"<p>Left: the query (yellow box: the part searched); right: a result. Each line joins "
        f"two points that look alike and agree on one geometric transformation between the "
        f"images (spatial verification); the more such points, the surer the match.</p>"
        f'{"".join(pairs)}</body></html>\n',
        encoding="utf-8",
    )
    return path
