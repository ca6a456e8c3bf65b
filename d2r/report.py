"""A static HTML report of a retrieval run on a benchmark.

:func:`write_report` writes, under ``out_dir``::

    index.html                 metrics, PR curves, one section per query
    pr_<protocol>.png          precision/recall curves (Easy, Medium, Hard; "all"
                               for the classic benchmarks)
    thumbs/q_<q>.jpg           query images with their box
    thumbs/db_<id>.jpg         database thumbnails with detected regions
    matches/q<q>_db<id>.html   inlier correspondences of a verified pair
    matches/q<q>_db<id>.jpg

Each query shows its top-``top_k`` results framed green (positive), red
(negative) or grey (junk) under one protocol (for Revisited Oxford/Paris Medium
by default: positives are easy + hard, junk is junk; the classic benchmarks have
one), with the query's AP.  Images listed with a rotation (Holidays) are shown
upright, as their features were extracted.  All links are relative, so
the directory can be opened from ``file://`` or moved as a whole.  Matplotlib
draws the curves with its Agg backend; Pillow draws everything else.
"""

from __future__ import annotations

import html
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

from d2r.datasets.benchmarks import Benchmark
from d2r.datasets.revisited import RevisitedDataset
from d2r.evaluation import compute_map
from d2r.io.images import load_image_with_info
from d2r.types import Boxes, LocalFeatures

__all__ = [
    "LABEL_COLOURS",
    "write_report",
    "label_results",
    "precision_recall",
    "report_matches",
]

logger = logging.getLogger(__name__)

LABEL_COLOURS = {"positive": "#1a9850", "negative": "#d73027", "junk": "#9e9e9e"}
"""Frame colour of a result by its label under the report's protocol."""

_QUERY_BOX = (255, 200, 0)
_REGION = (0, 170, 255)
_RECALL_GRID = np.linspace(0.0, 1.0, 101)
_MAX_LINES = 300

_CSS = """
body { font-family: sans-serif; margin: 16px; color: #222; }
table { border-collapse: collapse; margin-bottom: 12px; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
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
        gnd: Q ``{"ok", "junk"}`` mappings (:func:`d2r.evaluation.protocol_gnd`).

    Returns:
        (Q, 101) float64; precision at recall r is the best precision at any
        recall >= r (0 beyond the last retrieved positive); NaN rows for
        queries without positives.
    """
    ranks = np.asarray(ranks)
    out = np.full((ranks.shape[0], _RECALL_GRID.size), np.nan)
    for q, entry in enumerate(gnd):
        ok = np.asarray(entry["ok"], np.int64)
        if ok.size == 0:
            continue
        row = ranks[q][(ranks[q] >= 0) & ~np.isin(ranks[q], entry.get("junk", []))]
        hits = np.flatnonzero(np.isin(row, ok))
        found = np.arange(1, hits.size + 1)
        recall = found / ok.size
        precision = np.maximum.accumulate((found / (hits + 1.0))[::-1])[::-1]
        index = np.searchsorted(recall, _RECALL_GRID - 1e-12, side="left")
        padded = np.append(precision, 0.0)
        out[q] = padded[index]
    return out


def _plot_pr(path: Path, curves: np.ndarray, protocol: str, mean_ap: float) -> None:
    from matplotlib.figure import Figure  # without pyplot: PNG output goes through Agg

    fig = Figure(figsize=(3.6, 3.0), dpi=100)
    ax = fig.add_subplot()
    valid = curves[~np.isnan(curves[:, 0])]
    for row in valid:
        ax.plot(_RECALL_GRID, row, color="#999999", linewidth=0.6, alpha=0.5)
    if valid.size:
        ax.plot(_RECALL_GRID, valid.mean(axis=0), color="#1f4e9c", linewidth=2.0,
                label=f"mean (mAP {100 * mean_ap:.1f})")
        ax.legend(loc="lower left", fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(f"{protocol.capitalize()} ({valid.shape[0]} queries)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png")


def _thumbnail(path: Path, max_side: int, rotation: int) -> tuple[Image.Image, np.ndarray]:
    """Downscaled RGB image turned ``rotation`` degrees clockwise, and its (2,) x, y factors.

    The factors are relative to the original pixels, turned the same way.
    """
    loaded = load_image_with_info(path, max_side=max_side).rotated(rotation)
    return Image.fromarray(loaded.pixels), np.asarray(loaded.scale_xy, np.float64)


def _draw_boxes(image: Image.Image, xyxy: np.ndarray, scale: np.ndarray, colour, width: int):
    draw = ImageDraw.Draw(image)
    for x1, y1, x2, y2 in np.asarray(xyxy, np.float64).reshape(-1, 4):
        draw.rectangle([x1 * scale[0], y1 * scale[1], x2 * scale[0], y2 * scale[1]],
                       outline=colour, width=width)


def _save_jpeg(image: Image.Image, path: Path) -> None:
    image.convert("RGB").save(path, format="JPEG", quality=85)


def _match_image(
    query: Image.Image, q_scale: np.ndarray, db: Image.Image, d_scale: np.ndarray,
    q_xy: np.ndarray, d_xy: np.ndarray,
) -> Image.Image:
    """Query and database images side by side with lines between corresponding points."""
    gap = 10
    canvas = Image.new("RGB", (query.width + gap + db.width, max(query.height, db.height)), "white")
    canvas.paste(query, (0, 0))
    canvas.paste(db, (query.width + gap, 0))
    draw = ImageDraw.Draw(canvas)
    if q_xy.shape[0] > _MAX_LINES:
        keep = np.linspace(0, q_xy.shape[0] - 1, _MAX_LINES).astype(int)
        q_xy, d_xy = q_xy[keep], d_xy[keep]
    a = q_xy * q_scale
    b = d_xy * d_scale + np.array([query.width + gap, 0.0])
    colours = np.random.default_rng(0).integers(40, 256, size=(a.shape[0], 3))
    for (ax, ay), (bx, by), colour in zip(a, b, colours):
        fill = tuple(int(c) for c in colour)
        draw.line([ax, ay, bx, by], fill=fill, width=1)
        draw.ellipse([ax - 2, ay - 2, ax + 2, ay + 2], outline=fill)
        draw.ellipse([bx - 2, by - 2, bx + 2, by + 2], outline=fill)
    return canvas


def _metrics_table(metrics: Mapping[str, Any]) -> str:
    if metrics and all(isinstance(v, Mapping) for v in metrics.values()):
        columns = list(dict.fromkeys(k for v in metrics.values() for k in v))
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
        body = "".join(
            f"<tr><td>{html.escape(str(name))}</td>"
            + "".join(f"<td>{_fmt(row.get(c))}</td>" for c in columns) + "</tr>"
            for name, row in metrics.items()
        )
        return f"<table><tr><th></th>{head}</tr>{body}</table>"
    body = "".join(
        f"<tr><td>{html.escape(str(k))}</td><td>{_fmt(v)}</td></tr>" for k, v in metrics.items()
    )
    return f"<table>{body}</table>"


def _fmt(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        return "n/a" if np.isnan(value) else f"{value:.2f}"
    return html.escape("" if value is None else str(value))


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
        results: Q :class:`d2r.verification.RerankResult`.
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
    protocol: str | None = None,
    title: str | None = None,
    thumb_side: int = 192,
    query_side: int = 256,
    match_side: int = 480,
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
            locations in original pixels (see :func:`report_matches`); each pair
            among the shown results gets a match page.
        metrics: table shown at the top, ``{protocol: {name: value}}`` or
            ``{name: value}``; :meth:`Benchmark.evaluate` of ``ranks`` when None.
        protocol: frame colours and AP: ``"easy"``, ``"medium"`` (default) or
            ``"hard"`` for Revisited Oxford/Paris, ``"all"`` (the only one)
            for the classic benchmarks.
        title: page title (default: dataset name).
        thumb_side, query_side, match_side: longest side of result thumbnails,
            query thumbnails and the images in match views, in pixels.
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
    region_of = _regions_of(regions, dataset)
    verification = {key: _check_pair(value, key) for key, value in (verification or {}).items()}

    out = Path(out_dir)
    for sub in ("thumbs", "matches"):
        (out / sub).mkdir(parents=True, exist_ok=True)

    curves = []
    for p in dataset.protocols:
        mean_ap = compute_map(ranks, gnd[p])[0]
        _plot_pr(out / f"pr_{p}.png", precision_recall(ranks, gnd[p]), p, mean_ap)
        curves.append(
            f'<img src="pr_{p}.png" alt="{p} precision-recall curve" width="360" height="300">'
        )

    shown = ranks[:, :top_k]
    labels = label_results(shown, dataset, protocol=protocol)
    detail = [dataset.result_kinds(q) for q in range(dataset.num_queries)]
    written: dict[int, tuple[int, int]] = {}
    sections = []
    for q in range(dataset.num_queries):
        q_image, _ = _query_thumbnail(dataset, q, query_side, 3)
        _save_jpeg(q_image, out / "thumbs" / f"q_{q:04d}.jpg")
        figures = []
        for pos, db_id in enumerate(shown[q].tolist()):
            if db_id < 0:
                continue
            if db_id not in written:
                image, scale = _thumbnail(dataset.db_path(db_id), thumb_side,
                                          dataset.rotation(db_id))
                boxes = region_of(db_id)
                if boxes is not None:
                    if not isinstance(boxes, Boxes):
                        raise TypeError(f"regions of database image {db_id} must be Boxes")
                    _draw_boxes(image, boxes.xyxy, scale, _REGION, 2)
                _save_jpeg(image, out / "thumbs" / f"db_{db_id:06d}.jpg")
                written[db_id] = image.size
            width, height = written[db_id]
            label = labels[q, pos]
            img = (f'<img src="thumbs/db_{db_id:06d}.jpg" width="{width}" height="{height}" '
                   f'alt="{html.escape(dataset.db_names[db_id])}">')
            kind = detail[q].get(db_id, "–")
            caption = f"#{pos + 1} {html.escape(dataset.db_names[db_id])} · {kind}"
            if (q, db_id) in verification:
                page = _write_match_page(out, dataset, q, db_id, verification[(q, db_id)],
                                         match_side, label)
                img = f'<a href="{page}">{img}</a>'
                caption += f' · <a href="{page}">{len(verification[(q, db_id)][0])} inliers</a>'
            figures.append(
                f'<figure class="result {label}" data-db-id="{db_id}" data-label="{label}">'
                f"{img}<figcaption>{caption}</figcaption></figure>"
            )
        ap_text = "n/a" if np.isnan(aps[q]) else f"{100 * aps[q]:.1f}"
        n_pos = gnd[protocol][q]["ok"].size
        sections.append(
            f'<section class="query" id="q{q}"><div class="qinfo">'
            f'<img src="thumbs/q_{q:04d}.jpg" width="{q_image.width}" height="{q_image.height}" '
            f'alt="query {q}"><div><b>{html.escape(dataset.query_names[q])}</b></div>'
            f'<div class="ap">AP ({protocol}) {ap_text} · {n_pos} positives</div></div>'
            f'<div class="results">{"".join(figures)}</div></section>'
        )

    legend = "".join(
        f'<span style="background:{c}">{label}</span>' for label, c in LABEL_COLOURS.items()
    )
    name = html.escape(title or f"d2r report: {dataset.name}")
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{name}</title>'
        f"<style>{_CSS}</style></head><body><h1>{name}</h1>"
        f"<p>{html.escape(dataset.name)}: {dataset.num_db} database images, "
        f"{dataset.num_queries} queries. Frames use the {protocol.capitalize()} protocol.</p>"
        f'<p class="legend">{legend}</p><h2>Metrics</h2>{_metrics_table(metrics)}'
        f'<h2>Precision / recall</h2><div class="curves">{"".join(curves)}</div>'
        f"<h2>Top {top_k} per query</h2>{''.join(sections)}</body></html>\n"
    )
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    logger.info("wrote report %s (%d queries, %d thumbnails)", index, dataset.num_queries,
                len(written))
    return index


def _query_thumbnail(dataset: Benchmark, q: int, side: int,
                     width: int) -> tuple[Image.Image, np.ndarray]:
    """:func:`_thumbnail` of query ``q`` with its box drawn (if it has one)."""
    image, scale = _thumbnail(dataset.query_path(q), side, dataset.query_rotation(q))
    box = dataset.query_box(q)
    if box is not None:
        _draw_boxes(image, np.array(box), scale, _QUERY_BOX, width)
    return image, scale


def _write_match_page(
    out: Path, dataset: Benchmark, q: int, db_id: int,
    pair: tuple[np.ndarray, np.ndarray], side: int, label: str,
) -> str:
    """Write the match view of (q, db_id); return its path relative to ``out``."""
    q_xy, d_xy = pair
    q_image, q_scale = _query_thumbnail(dataset, q, side, 2)
    d_image, d_scale = _thumbnail(dataset.db_path(db_id), side, dataset.rotation(db_id))
    stem = f"q{q:04d}_db{db_id:06d}"
    canvas = _match_image(q_image, q_scale, d_image, d_scale, q_xy, d_xy)
    _save_jpeg(canvas, out / "matches" / f"{stem}.jpg")
    q_name, d_name = html.escape(dataset.query_names[q]), html.escape(dataset.db_names[db_id])
    note = ""
    if q_xy.shape[0] > _MAX_LINES:
        note = f" ({_MAX_LINES} drawn)"
    (out / "matches" / f"{stem}.html").write_text(
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{q_name} / {d_name}</title><style>{_CSS}</style></head><body>"
        f'<p><a href="../index.html#q{q}">back to the report</a></p>'
        f"<h1>{q_name} ↔ {d_name}</h1>"
        f'<p>{q_xy.shape[0]} inlier correspondences{note}; result is '
        f'<b style="color:{LABEL_COLOURS.get(label, "#000")}">{label}</b>.</p>'
        f'<img src="{stem}.jpg" width="{canvas.width}" height="{canvas.height}" '
        f'alt="inlier correspondences"></body></html>\n',
        encoding="utf-8",
    )
    return f"matches/{stem}.html"
