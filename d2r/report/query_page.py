"""A static HTML page of one query's results (``d2r query --image Q --out DIR --report``).

:func:`write_result_page` writes, under ``out_dir``::

    index.html          the query (its box drawn), how the list was ordered, and the
                        top results as thumbnails with rank, score, inliers, verification
                        score and name (verified ones framed green)
    thumbs/query.jpg    the query thumbnail
    thumbs/r<rank>.jpg  one thumbnail per shown result

Database images are found through ``locate(name)`` (for an index built from
``--images`` / ``--image-list``: the folder recorded at build time); a result whose
file is gone or unreadable gets a card with its name and a short reason instead of a
picture, and the page and one logged warning say how many are missing and how to
point at the folder the images moved to.  Links are relative, so the folder can be
moved or opened from ``file://``.
"""

from __future__ import annotations

import html
import logging
import os
from pathlib import Path
from typing import Callable, Optional, Sequence

from d2r.config import VerificationConfig
from d2r.errors import InputError
from d2r.spatial.decision import error_rate, rest_order, rule, verified_order
from d2r.report.drawing import QUERY_BOX, draw_boxes, save_jpeg, thumbnail

__all__ = ["write_result_page"]

logger = logging.getLogger(__name__)

_VERIFIED = "#1a9850"

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
.query img { max-width: 360px; border: 3px solid #ffc800; }
.results { display: flex; flex-wrap: wrap; gap: 12px; }
.card { width: 200px; border: 3px solid #ddd; padding: 4px; font-size: 13px; }
.card.verified { border-color: %s; }
.card img { max-width: 100%%; display: block; margin: auto; }
.card .name { word-break: break-all; }
.missing { height: 120px; background: #f3f3f3; color: #777; padding: 6px; font-size: 12px; }
.note { background: #fff4ce; padding: 6px 10px; }
""" % _VERIFIED


def write_result_page(out_dir: str | os.PathLike, *, query: str | os.PathLike,
                      box: Optional[Sequence[float]], rows: Sequence[dict],
                      locate: Callable[[str], Optional[Path]],
                      verification: VerificationConfig, index: str, shown: Optional[int] = None,
                      hint: Optional[str] = None, max_side: int = 320,
                      expansion: int = 0) -> Path:
    """Write the page of one query; returns the path of ``index.html``.

    ``rows`` are every :func:`d2r.pipeline.run.run_image` result (``rank``, ``name``,
    ``score``, ``verified``; ``inliers`` and ``verification_score`` for the re-ranked head),
    the first ``shown`` (default all) shown in order, the verified ones framed green; the page
    states how many of the re-ranked head were verified, by the rule of ``verification``
    (:func:`d2r.spatial.decision.rule`) and with what error rate; ``expansion``: the query
    was expanded with up to this many verified images (0: not).  ``locate`` maps a
    database name to its file (None when unknown); ``hint`` is the option that points at
    the database images (``"--images DIR"``), suggested when some cannot be read.
    """
    out = Path(out_dir)
    (out / "thumbs").mkdir(parents=True, exist_ok=True)
    image, scale = thumbnail(Path(query), max_side * 2, 0)
    if box is not None:
        draw_boxes(image, box, scale, QUERY_BOX, 3)
    save_jpeg(image, out / "thumbs" / "query.jpg")
    shown_rows = rows[:len(rows) if shown is None else shown]
    missing: list[str] = []
    cards = [_card(out, row, locate, max_side, missing) for row in shown_rows]
    checked = sum("inliers" in row for row in rows)
    verified = sum(row["verified"] for row in rows)
    order = (f"The top {checked} were spatially verified: {verified} verified "
             f"({rule(verification)}: {error_rate(verification)}) come first (green border, "
             f"{verified_order(verification)}); {rest_order(verification, expansion=expansion)}."
             if checked else
             "Ordered by search score (no spatial verification; use --rerank N).")
    note = _missing_note(missing, len(shown_rows), hint)
    page = out / "index.html"
    page.write_text(
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>d2r: {html.escape(Path(query).name)}</title><style>{_STYLE}</style></head>"
        f"<body><h1>Results for {html.escape(str(query))}</h1>"
        f"<p>Index: {html.escape(index)}. {html.escape(order)}</p>"
        + (f"<p class='note'>{html.escape(note)}</p>" if note else "") +
        "<div class='query'><img src='thumbs/query.jpg' alt='query'></div>"
        f"<h2>Top {len(shown_rows)}</h2><div class='results'>{''.join(cards)}</div>"
        "</body></html>\n", encoding="utf-8")
    if note:
        logger.warning("%s: %s", page, note)
    logger.info("wrote result page %s (%d results)", page, len(shown_rows))
    return page


def _missing_note(missing: Sequence[str], count: int, hint: Optional[str]) -> str:
    """One sentence on the result images that could not be shown ('' when none)."""
    if not missing:
        return ""
    where = (f"if the database images moved, give their folder with {hint}" if hint
             else "they are not in the folder given")
    return (f"{len(missing)} of the {count} result images could not be read (e.g. "
            f"{missing[0]}); {where}.")


def _card(out: Path, row: dict, locate: Callable[[str], Optional[Path]], max_side: int,
          missing: list[str]) -> str:
    """One result as an HTML card, writing its thumbnail when the image can be read (else
    its reason is appended to ``missing``)."""
    name = html.escape(row["name"])
    inliers, strength = row.get("inliers"), row.get("verification_score")
    caption = (f"<div>#{row['rank']} · score {row['score']:.4f}"
               + (f" · {inliers} matched points" if inliers is not None else "")
               + (f" · -log10 NFA {strength:.1f}" if strength is not None else "")
               + (" · verified" if row["verified"] else "")
               + f"</div><div class='name'>{name}</div>")
    path = locate(row["name"])
    if path is None:
        missing.append(f"{row['name']}: location unknown")
        picture = "<div class='missing'>image location unknown</div>"
    else:
        try:
            image, _ = thumbnail(path, max_side, 0)
            file = f"r{row['rank']:04d}.jpg"
            save_jpeg(image, out / "thumbs" / file)
            picture = f"<img src='thumbs/{file}' alt='{name}'>"
        except (InputError, OSError) as exc:
            missing.append(str(exc) if path.exists() else f"{path}: no such file")
            picture = (f"<div class='missing'>{'unreadable' if path.exists() else 'not found'}"
                       f"</div>")
    return f"<div class='card{' verified' if row['verified'] else ''}'>{picture}{caption}</div>"
