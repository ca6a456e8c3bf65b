"""The pictures of the reports: thumbnails, boxes, JPEGs, match lines, PR curves.

Used by the benchmark report (:mod:`d2r.report.benchmark`), the one-query page
(:mod:`d2r.report.query_page`) and the server's thumbnails.  Thumbnails are small,
plain JPEGs (quality :data:`JPEG_QUALITY`, 4:2:0 chroma, no metadata).  Matplotlib
draws the curves with its Agg backend; Pillow draws everything else.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from d2r.io.images import load_image_with_info

__all__ = [
    "JPEG_QUALITY",
    "QUERY_BOX",
    "REGION_BOX",
    "RECALL_GRID",
    "MAX_LINES",
    "thumbnail",
    "draw_boxes",
    "save_jpeg",
    "match_svg",
    "plot_pr",
]

JPEG_QUALITY = 72
"""Quality of every JPEG the report writes (thumbnails stay recognisable, a few KB each)."""

QUERY_BOX = (255, 200, 0)
"""RGB of the box drawn on a query image: the part of it that was searched."""

REGION_BOX = (0, 170, 255)
"""RGB of the regions detected in a database image."""

RECALL_GRID = np.linspace(0.0, 1.0, 101)
"""Recall values at which precision/recall curves are sampled."""

MAX_LINES = 300
"""Most match lines drawn for one pair of images (more are subsampled)."""

_LINE_COLOURS = ("#ff3b30", "#ffcc00", "#34c759", "#00c7be", "#30b0ff", "#5856d6", "#ff2d92",
                 "#ff9500")


def thumbnail(path: Path, max_side: int, rotation: int) -> tuple[Image.Image, np.ndarray]:
    """Downscaled RGB image turned ``rotation`` degrees clockwise, and its (2,) x, y factors.

    The factors are relative to the original pixels, turned the same way.
    """
    loaded = load_image_with_info(path, max_side=max_side).rotated(rotation)
    return Image.fromarray(loaded.pixels), np.asarray(loaded.scale_xy, np.float64)


def draw_boxes(image: Image.Image, xyxy: np.ndarray, scale: np.ndarray, colour, width: int):
    """Draw (N, 4) x1, y1, x2, y2 boxes in original pixels on ``image`` scaled by ``scale``."""
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


def match_svg(q_src: str, q_size: tuple[int, int], q_scale: np.ndarray,
              d_src: str, d_size: tuple[int, int], d_scale: np.ndarray,
              q_xy: np.ndarray, d_xy: np.ndarray) -> str:
    """Inline SVG: the two stored thumbnails side by side, a line per matched point pair.

    Lines are vectors drawn over the JPEGs (no image is re-encoded per pair), in a few
    colours so that crossing lines stay apart; the page's CSS keeps their width when the
    view is scaled.  At most :data:`MAX_LINES` pairs are drawn.
    """
    gap = 10
    width, height = q_size[0] + gap + d_size[0], max(q_size[1], d_size[1])
    if q_xy.shape[0] > MAX_LINES:
        keep = np.linspace(0, q_xy.shape[0] - 1, MAX_LINES).astype(int)
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


def plot_pr(path: Path, curves: np.ndarray, protocol: str, mean_ap: float) -> None:
    """Write a PNG of (Q, 101) precision curves at :data:`RECALL_GRID`: one grey line per
    query (NaN rows skipped) and their mean in blue, titled by ``protocol``."""
    from matplotlib.figure import Figure  # without pyplot: PNG output goes through Agg

    fig = Figure(figsize=(3.6, 3.0), dpi=100)
    ax = fig.add_subplot()
    valid = curves[~np.isnan(curves[:, 0])]
    for row in valid:
        ax.plot(RECALL_GRID, row, color="#999999", linewidth=0.6, alpha=0.5)
    if valid.size:
        ax.plot(RECALL_GRID, valid.mean(axis=0), color="#1f4e9c", linewidth=2.0,
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
