"""Draw docs/img/synthetic_examples.png: queries and database images of the synthetic benchmark.

Each row is one landmark: its query (blue ``bbx``), then database images that
show it, framed and boxed by label (green easy, orange hard, red junk).  The
last row shows distractors (grey frame, no landmark).

    python benchmarks/make_synthetic_figure.py [--data DIR] [--out PNG]

Without ``--data`` the default-size benchmark (seed 0) is generated in a
temporary directory.
"""

from __future__ import annotations

import argparse
import csv
import pickle
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw

from d2r.datasets.synthetic import generate

COLOURS = {
    "query": (40, 110, 255),
    "easy": (40, 200, 60),
    "hard": (255, 150, 0),
    "junk": (230, 30, 30),
    "distractor": (150, 150, 150),
}
CELL = 150
CAPTION = 14


def _thumbnail(path: Path, row: dict) -> Image.Image:
    """The image scaled into a CELL x CELL cell, with its box and a label-coloured frame."""
    image = Image.open(path).convert("RGB")
    scale = CELL / max(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
    colour = COLOURS[row["label"]]
    draw = ImageDraw.Draw(image)
    if row["x1"]:
        box = [float(row[k]) * scale for k in ("x1", "y1", "x2", "y2")]
        draw.rectangle(box, outline=colour, width=2)
    draw.rectangle([0, 0, image.width - 1, image.height - 1], outline=colour, width=3)
    cell = Image.new("RGB", (CELL, CELL + CAPTION), "white")
    cell.paste(image, ((CELL - image.width) // 2, (CELL - image.height) // 2))
    caption = row["label"]
    if row["label"] not in ("query", "distractor"):
        caption += f"  vis {float(row['visible']):.2f} cov {float(row['coverage']):.2f}"
    ImageDraw.Draw(cell).text((3, CELL), caption, fill=colour)
    return cell


def make_figure(data: Path, out: Path, *, rows: int = 4, per_row: int = 5) -> Path:
    """Write the example grid for the dataset in ``data`` to ``out`` (palette PNG)."""
    (gnd_path,) = sorted(data.glob("gnd_*.pkl"))
    with open(gnd_path, "rb") as f:
        gnd = pickle.load(f)
    with open(data / "annotations.csv", newline="") as f:
        ann = {row["id"]: row for row in csv.DictReader(f)}
    imlist, qimlist = gnd["imlist"], gnd["qimlist"]
    seen, grid = set(), []
    for qname in qimlist:
        if len(grid) == rows:
            break
        landmark = ann[qname]["landmark_id"]
        if landmark in seen:
            continue
        seen.add(landmark)
        q = qimlist.index(qname)
        picks = []
        for label, count in (("easy", 2), ("hard", 2), ("junk", 1)):
            picks += [imlist[i] for i in gnd["gnd"][q][label][:count]]
        grid.append([qname] + picks[:per_row])
    distractors = [n for n in imlist if ann[n]["label"] == "distractor"][: per_row + 1]
    grid.append(distractors)
    legend = 22
    sheet = Image.new("RGB", ((per_row + 1) * CELL, legend + len(grid) * (CELL + CAPTION)), "white")
    draw = ImageDraw.Draw(sheet)
    x = 4
    for name, colour in COLOURS.items():
        draw.rectangle([x, 5, x + 12, 17], fill=colour)
        draw.text((x + 16, 5), name, fill=(0, 0, 0))
        x += 110
    for r, names in enumerate(grid):
        for c, name in enumerate(names):
            cell = _thumbnail(data / "jpg" / f"{name}.jpg", ann[name])
            sheet.paste(cell, (c * CELL, legend + r * (CELL + CAPTION)))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="a generated benchmark (default: generate one)")
    parser.add_argument("--out", type=Path, default=Path("docs/img/synthetic_examples.png"))
    args = parser.parse_args()
    if args.data is not None:
        make_figure(args.data, args.out)
        return
    with tempfile.TemporaryDirectory() as tmp:
        make_figure(generate(Path(tmp) / "synth"), args.out)


if __name__ == "__main__":
    main()
