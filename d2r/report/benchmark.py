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
``file://`` or moved as a whole.  Thumbnails are small, plain JPEGs (quality
:data:`JPEG_QUALITY`, 4:2:0 chroma, no metadata).  Matplotlib draws the curves
with its Agg backend; Pillow draws everything else.
"""

from __future__ import annotations

import datetime
import html
import logging
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw

from d2r.datasets.benchmarks import Benchmark
from d2r.datasets.revisited import RevisitedDataset
from d2r.evaluation.metrics import compute_map
from d2r.io.images import load_image_with_info
from d2r.spatial.decision import rule, verified_order
from d2r.progress import track
from d2r.types import Boxes, LocalFeatures

__all__ = [
    "JPEG_QUALITY",
    "LABEL_COLOURS",
    "write_report",
    "label_results",
    "precision_recall",
    "report_matches",
    "run_settings",
    "thumbnail",
    "draw_boxes",
    "save_jpeg",
]

logger = logging.getLogger(__name__)

LABEL_COLOURS = {"positive": "#1a9850", "negative": "#d73027", "junk": "#9e9e9e"}
"""Border colour of a result by its label under the report's protocol."""

LABEL_WORDS = {"positive": "correct", "negative": "wrong", "junk": "ignored"}
"""What each label means, in the words the page uses."""

JPEG_QUALITY = 72
"""Quality of every JPEG the report writes (thumbnails stay recognisable, a few KB each)."""

_QUERY_BOX = (255, 200, 0)
_REGION = (0, 170, 255)
_RECALL_GRID = np.linspace(0.0, 1.0, 101)
_MAX_LINES = 300
_LINE_COLOURS = ("#ff3b30", "#ffcc00", "#34c759", "#00c7be", "#30b0ff", "#5856d6", "#ff2d92",
                 "#ff9500")
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

_METRIC_WORDS = {
    "mAP": "mean average precision, in percent: 100 means every correct image is ranked "
           "above every wrong one",
    "N-S": "UKBench score: how many of the 4 correct images are among the first 4 results "
           "(0 to 4)",
}


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
    fig.savefig(path, format="png", metadata={"Software": None},
                pil_kwargs={"optimize": True})


def thumbnail(path: Path, max_side: int, rotation: int) -> tuple[Image.Image, np.ndarray]:
    """Downscaled RGB image turned ``rotation`` degrees clockwise, and its (2,) x, y factors.

    The factors are relative to the original pixels, turned the same way.
    """
    loaded = load_image_with_info(path, max_side=max_side).rotated(rotation)
    return Image.fromarray(loaded.pixels), np.asarray(loaded.scale_xy, np.float64)


def draw_boxes(image: Image.Image, xyxy: np.ndarray, scale: np.ndarray, colour, width: int):
    draw = ImageDraw.Draw(image)
    for x1, y1, x2, y2 in np.asarray(xyxy, np.float64).reshape(-1, 4):
        draw.rectangle([x1 * scale[0], y1 * scale[1], x2 * scale[0], y2 * scale[1]],
                       outline=colour, width=width)


def save_jpeg(image: Image.Image, path: Path) -> None:
    """A small baseline JPEG: :data:`JPEG_QUALITY`, 4:2:0 chroma, optimized Huffman tables,
    no EXIF / ICC / comment (the pixels are all that is written)."""
    plain = Image.new("RGB", image.size)
    plain.paste(image.convert("RGB"))
    plain.save(path, format="JPEG", quality=JPEG_QUALITY, subsampling="4:2:0", optimize=True)


def _match_svg(q_src: str, q_size: tuple[int, int], q_scale: np.ndarray,
               d_src: str, d_size: tuple[int, int], d_scale: np.ndarray,
               q_xy: np.ndarray, d_xy: np.ndarray) -> str:
    """Inline SVG: the two stored thumbnails side by side, a line per matched point pair.

    Lines are vectors drawn over the JPEGs (no image is re-encoded per pair), in a few
    colours so that crossing lines stay apart; the page's CSS keeps their width when the
    view is scaled.
    """
    gap = 10
    width, height = q_size[0] + gap + d_size[0], max(q_size[1], d_size[1])
    if q_xy.shape[0] > _MAX_LINES:
        keep = np.linspace(0, q_xy.shape[0] - 1, _MAX_LINES).astype(int)
        q_xy, d_xy = q_xy[keep], d_xy[keep]
    a = q_xy * q_scale
    b = d_xy * d_scale + np.array([q_size[0] + gap, 0.0])
    paths = []
    for c, colour in enumerate(_LINE_COLOURS):
        sel = slice(c, None, len(_LINE_COLOURS))
        if not a[sel].shape[0]:
            continue
        lines = "".join(f"M{x1:.0f} {y1:.0f}L{x2:.0f} {y2:.0f}"
                        for (x1, y1), (x2, y2) in zip(a[sel], b[sel]))
        dots = "".join(f"M{x:.0f} {y:.0f}h0" for x, y in np.concatenate([a[sel], b[sel]]))
        paths.append(f'<path d="{lines}" stroke="{colour}" stroke-width="1.5" '
                     f'stroke-opacity="0.85"/><path d="{dots}" stroke="{colour}" '
                     f'stroke-width="6" stroke-linecap="round"/>')
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img">'
        f'<rect width="{width}" height="{height}" fill="#fff"/>'
        f'<image href="{q_src}" x="0" y="0" width="{q_size[0]}" height="{q_size[1]}"/>'
        f'<image href="{d_src}" x="{q_size[0] + gap}" y="0" width="{d_size[0]}" '
        f'height="{d_size[1]}"/>'
        f'<g fill="none">{"".join(paths)}</g></svg>'
    )


def _fmt(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        return "n/a" if np.isnan(value) else f"{value:.2f}"
    return html.escape("" if value is None else str(value))


def _fmt_change(after: Any, before: Any) -> tuple[str, str]:
    """``(text, css class)`` of after - before (``+1.25``, ``up``)."""
    try:
        diff = float(after) - float(before)
    except (TypeError, ValueError):
        return "", ""
    if np.isnan(diff):
        return "n/a", ""
    return f"{diff:+.2f}", "up" if diff > 0.005 else "down" if diff < -0.005 else ""


def _row_label(name: str) -> str:
    return html.escape(name.capitalize() if name != "all" else "All queries")


def _metric_rows(metrics: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """``{row name: {metric: value}}``: one row per protocol, or one row for flat metrics."""
    if metrics and all(isinstance(v, Mapping) for v in metrics.values()):
        return {str(k): v for k, v in metrics.items()}
    return {"all": metrics}


def _metrics_table(metrics: Mapping[str, Any],
                   initial: Optional[Mapping[str, Any]] = None) -> str:
    """The metrics as a table; with ``initial``: before / after / change column groups."""
    rows = _metric_rows(metrics)
    columns = list(dict.fromkeys(k for v in rows.values() for k in v))
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)

    def cells(row: Mapping[str, Any], cls: str, name: str) -> str:
        return "".join(f'<td class="{cls}" data-protocol="{html.escape(name)}" '
                       f'data-metric="{html.escape(str(c))}">{_fmt(row.get(c))}</td>'
                       for c in columns)

    if initial is None:
        body = "".join(f"<tr><td>{_row_label(n)}</td>{cells(r, 'after', n)}</tr>"
                       for n, r in rows.items())
        return (f'<table class="metrics"><tr><th>Protocol</th>{head}</tr>{body}</table>')
    before = _metric_rows(initial)
    span = len(columns)
    groups = (f'<tr><th rowspan="2">Protocol</th>'
              f'<th colspan="{span}">Before re-ranking</th>'
              f'<th colspan="{span}">After re-ranking</th>'
              f'<th colspan="{span}">Change</th></tr><tr>{head * 3}</tr>')
    body = []
    for name, row in rows.items():
        old = before.get(name, {})
        change = []
        for c in columns:
            text, cls = _fmt_change(row.get(c), old.get(c))
            classes = f"change {cls}".strip()
            change.append(f'<td class="{classes}" data-protocol="{html.escape(name)}" '
                          f'data-metric="{html.escape(str(c))}">{text}</td>')
        body.append(f"<tr><td>{_row_label(name)}</td>{cells(old, 'before', name)}"
                    f"{cells(row, 'after', name)}{''.join(change)}</tr>")
    return f'<table class="metrics">{groups}{"".join(body)}</table>'


def _metrics_notes(metrics: Mapping[str, Any]) -> str:
    """One line per metric shown, in plain words."""
    columns = dict.fromkeys(k for v in _metric_rows(metrics).values() for k in v)
    notes = []
    for c in columns:
        if c in _METRIC_WORDS:
            notes.append(f"<b>{html.escape(c)}</b>: {_METRIC_WORDS[c]}")
        elif str(c).startswith("mP@"):
            k = html.escape(str(c)[3:])
            first = "first result" if k == "1" else f"first {k} results"
            notes.append(f"<b>{html.escape(c)}</b>: on average, the percentage of correct "
                         f"images among the {first}")
    return "; ".join(notes)


def _settings_table(settings: Any) -> str:
    items = settings.items() if isinstance(settings, Mapping) else settings
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                   for k, v in items)
    return f'<table class="settings">{body}</table>'


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
        results: Q :class:`d2r.spatial.verification.RerankResult`.
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


def _get(values: Mapping, dotted: str) -> Any:
    node: Any = values
    for part in dotted.split("."):
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    return node


def _changed_keys(expected: Mapping, actual: Mapping) -> list[str]:
    """``key=value`` (the value in ``actual``) of every dotted key that differs."""
    from d2r.config import diff_configs

    keys = [d.split(": ", 1)[0] for d in diff_configs(expected, actual)]
    return [f"{k}={_get(actual, k)!r}".replace("'", "") for k in keys]


def _preset_of(built: Mapping, recorded: Optional[str]) -> str:
    """The preset an index was built with: recorded, or the shipped preset whose settings
    are the build's, or the closest one and what differs."""
    if recorded:
        return str(recorded)
    from d2r.config import available_presets, load_config, to_dict

    found = []
    for name in available_presets():
        try:
            found.append((_changed_keys(to_dict(load_config(name)), built), name))
        except Exception:  # noqa: BLE001 - a preset that no longer loads is just no match
            continue
    exact = [name for changed, name in found if not changed]
    if exact:
        names = [n for n in exact if n != "base"] or exact
        return " / ".join(names) + " (the settings match this preset)"
    if not found:
        return "not recorded"
    changed, name = min(found, key=lambda item: (len(item[0]), item[1] == "base"))
    if len(changed) <= 4:
        return f"{name}, changed: {', '.join(changed)}"
    return "custom settings (no shipped preset is close)"


def _features_words(config: Any) -> str:
    features = config.features
    if features.backend == "rootsift":
        rs = features.rootsift
        text = f"RootSIFT local features, up to {rs.max_features} per image"
        if rs.pca_path:
            text += f", PCA to {rs.pca_dim or 'all'} dimensions ({rs.pca_path})"
        return text
    if features.backend == "delf":
        delf = features.delf
        return (f"DELF local features, up to {delf.max_features} per image, "
                f"{len(delf.scales)} image scales, model {delf.model_path or 'none'}")
    if features.backend == "cnn":
        cnn = features.cnn
        return (f"one CNN descriptor per image: {cnn.method} on {cnn.backbone} "
                f"({cnn.weights_path or 'random weights: for testing only'})")
    return str(features.backend)


_RANSAC_WORDS = {"opencv": "OpenCV", "skimage": "scikit-image"}
_KERNEL_WORDS = {"asmk_star": "ASMK* (aggregated selective match kernel, binary)",
                 "asmk": "ASMK (aggregated selective match kernel)",
                 "vlad": "VLAD (vectors of locally aggregated descriptors)"}


def run_settings(
    config: Any,
    manifest: Optional[Mapping[str, Any]] = None,
    *,
    index: Any = None,
    num_queries: Optional[int] = None,
    num_db: Optional[int] = None,
    when: Optional[datetime.datetime] = None,
) -> list[tuple[str, str]]:
    """The "How this was produced" rows of a report, in plain words.

    Args:
        config: the resolved :class:`d2r.config.Config` of the run (query-time settings
            included).
        manifest: the index's ``index.json`` (:func:`d2r.index.layout.read_manifest`):
            the build's settings, its codebook record and the number of indexed images.
        index: the index directory.
        num_queries, num_db: queries run and database images of the benchmark.
        when: date of the run (default: now).

    Returns:
        ``[(label, text)]``, plain text (the report escapes it).
    """
    from d2r import __version__
    from d2r.config import to_dict, upgrade_record

    manifest = manifest or {}
    current = to_dict(config)
    built = upgrade_record(manifest["config"]) if "config" in manifest else current
    rows: list[tuple[str, str]] = []
    if index is not None:
        rows.append(("Index", str(index)))
    rows.append(("Preset", _preset_of(built, manifest.get("preset"))))
    at_query = _changed_keys(built, current)
    if at_query:
        rows.append(("Changed for this run", ", ".join(at_query)))
    rows.append(("Image features", _features_words(config)))
    if config.regions.source != "none":
        text = f"{config.regions.source}, up to {config.regions.max_boxes} per image"
        if config.aggregation.regional_search:
            text += "; each region is searched on its own"
        rows.append(("Regions", text))
    codebook = manifest.get("codebook")
    if codebook:
        rows.append(("Visual words (codebook)",
                     f"{codebook.get('num_words')} words of {codebook.get('dim')} dimensions, "
                     f"sha256 {str(codebook.get('sha256', ''))[:12]}, "
                     f"{codebook.get('path')} in the index"))
    elif config.features.backend != "cnn":
        rows.append(("Visual words (codebook)", f"{config.codebook.num_words} words"
                     + (f", from {config.codebook.path}" if config.codebook.path else "")))
    if config.features.backend != "cnn":
        agg = config.aggregation
        rows.append(("Image similarity", f"{_KERNEL_WORDS.get(agg.method, agg.method)}, "
                     f"alpha {agg.alpha:g}, threshold tau {agg.tau:g}"))
    verification = config.verification
    if config.features.backend == "cnn":
        search = config.search
        words = []
        if search.query_expansion:
            words.append(f"query expansion with the top {search.query_expansion}")
        if search.aml_rerank:
            words.append(f"AML re-ranking of the top {search.aml_rerank} (the query is "
                         f"located in each database image)")
        rows.append(("Re-ranking", "; ".join(words) or "none (initial ranking only)"))
    elif verification.rerank > 0:
        rows.append(("Re-ranking", f"the top {verification.rerank} results of each query are "
                     f"checked by spatial verification "
                     f"({_RANSAC_WORDS.get(verification.method, verification.method)} RANSAC); "
                     f"the verified ones ({rule(verification)}) move up, "
                     f"{verified_order(verification)}"))
    else:
        rows.append(("Re-ranking", "none (initial ranking only)"))
    if num_queries is not None:
        rows.append(("Queries", str(num_queries)))
    if num_db is not None:
        indexed = manifest.get("num_images")
        rows.append(("Database images", str(num_db) if indexed in (None, num_db)
                     else f"{num_db} ({indexed} in the index)"))
    when = when or datetime.datetime.now().astimezone()
    rows.append(("Date", when.strftime("%Y-%m-%d %H:%M %Z").strip()))
    version = f"d2r {__version__}"
    if manifest.get("d2r_version") and manifest["d2r_version"] != __version__:
        version += f" (index built with d2r {manifest['d2r_version']})"
    rows.append(("Software", version))
    return rows


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
            ``[(label, text)]`` (see :func:`run_settings`); HTML-escaped.
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
    region_of = _regions_of(regions, dataset)
    verification = {key: _check_pair(value, key) for key, value in (verification or {}).items()}

    out = Path(out_dir)
    for sub in ("thumbs", "matches"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for old in [*(out / "matches").glob("q*.html"), *(out / "matches").glob("q*_db*.jpg")]:
        old.unlink()  # match views of an earlier report (this one writes its own)

    curves = []
    for p in dataset.protocols:
        mean_ap = compute_map(ranks, gnd[p])[0]
        _plot_pr(out / f"pr_{p}.png", precision_recall(ranks, gnd[p]), p, mean_ap)
        curves.append(
            f'<img src="pr_{p}.png" alt="{p} precision-recall curve" width="360" height="300">'
        )

    shown = ranks[:, :top_k]
    labels = label_results(shown, dataset, protocol=protocol)
    shown_pairs = {(q, int(i)) for q, row in enumerate(shown.tolist()) for i in row if i >= 0}
    stored_side = max(thumb_side, match_side) if shown_pairs & verification.keys() else thumb_side
    written: dict[int, tuple[tuple[int, int], np.ndarray]] = {}
    sections = []
    protocol_name = protocol.capitalize()
    for q in track(range(dataset.num_queries), desc="report", unit="query", show=show_progress):
        q_image, q_scale = _query_thumbnail(dataset, q, query_side, 3)
        save_jpeg(q_image, out / "thumbs" / f"q_{q:04d}.jpg")
        kinds = dataset.result_kinds(q)
        figures, pairs = [], []
        for pos, db_id in enumerate(shown[q].tolist()):
            if db_id < 0:
                continue
            if db_id not in written:
                image, scale = thumbnail(dataset.db_path(db_id), stored_side,
                                          dataset.rotation(db_id))
                boxes = region_of(db_id)
                if boxes is not None:
                    if not isinstance(boxes, Boxes):
                        raise TypeError(f"regions of database image {db_id} must be Boxes")
                    draw_boxes(image, boxes.xyxy, scale, _REGION, 2)
                save_jpeg(image, out / "thumbs" / f"db_{db_id:06d}.jpg")
                written[db_id] = (image.size, scale)
            (width, height), scale = written[db_id]
            shrink = min(1.0, thumb_side / max(width, height))
            label = labels[q, pos]
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
                    db_name, label, protocol_name))
            figures.append(
                f'<figure class="result {label}" data-db-id="{db_id}" data-label="{label}">'
                f"{img}<figcaption>{caption}</figcaption></figure>"
            )
        if pairs:
            _write_match_page(out, dataset, q, pairs)
        ap_text = "n/a" if np.isnan(aps[q]) else f"{100 * aps[q]:.1f}"
        n_pos = gnd[protocol][q]["ok"].size
        sections.append(
            f'<section class="query" id="q{q}"><div class="qinfo">'
            f'<img src="thumbs/q_{q:04d}.jpg" width="{q_image.width}" height="{q_image.height}" '
            f'alt="query {q}"><div><b>{html.escape(dataset.query_names[q])}</b></div>'
            f'<div class="ap" title="average precision, out of 100">AP ({protocol}) '
            f'{ap_text} · {n_pos} correct images in the database</div></div>'
            f'<div class="results">{"".join(figures)}</div></section>'
        )

    legend = "".join(
        f'<span style="background:{c}">{LABEL_WORDS[label]}</span>'
        for label, c in LABEL_COLOURS.items()
    )
    name = html.escape(title or f"d2r report: {dataset.name}")
    produced = ""
    if settings:
        produced = f"<h2>How this was produced</h2>{_settings_table(settings)}"
    if initial_metrics is not None:
        metrics_intro = ("Before re-ranking: the ranking of the index search alone. After "
                         "re-ranking: the same ranking once its top results were checked and "
                         "reordered. Change: after minus before.")
        curves_intro = "After re-ranking. "
    else:
        metrics_intro, curves_intro = "", ""
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{name}</title>'
        f"<style>{_CSS}</style></head><body><h1>{name}</h1>"
        f"<p>{html.escape(dataset.name)}: {dataset.num_db} database images, "
        f"{dataset.num_queries} queries. Each query below is shown with its top {top_k} "
        f"results, best first.</p>"
        f"{produced}<h2>Results</h2>"
        f'<p class="note">{metrics_intro}</p>{_metrics_table(metrics, initial_metrics)}'
        f'<p class="note">{_metrics_notes(metrics)}. Protocols decide which images count as '
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
        f"{_extras_note(verification, regions)}</p>"
        f"{''.join(sections)}</body></html>\n"
    )
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    logger.info("wrote report %s (%d queries, %d thumbnails)", index, dataset.num_queries,
                len(written))
    return index


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
    """:func:`_thumbnail` of query ``q`` with its box drawn (if it has one)."""
    image, scale = thumbnail(dataset.query_path(q), side, dataset.query_rotation(q))
    box = dataset.query_box(q)
    if box is not None:
        draw_boxes(image, np.array(box), scale, _QUERY_BOX, width)
    return image, scale


def _pair_section(q: int, q_size: tuple[int, int], q_scale: np.ndarray, db_id: int,
                  d_size: tuple[int, int], d_scale: np.ndarray,
                  pair: tuple[np.ndarray, np.ndarray], pos: int, db_name: str, label: str,
                  protocol_name: str) -> str:
    """One verified pair on its query's match page (``db_name`` already escaped)."""
    q_xy, d_xy = pair
    note = f" ({_MAX_LINES} drawn)" if q_xy.shape[0] > _MAX_LINES else ""
    svg = _match_svg(f"../thumbs/q_{q:04d}.jpg", q_size, q_scale,
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
