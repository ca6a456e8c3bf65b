#!/usr/bin/env bash
# Render a d2r HTML report in headless Chromium and check the screenshot.
#
# Usage:
#   scripts/check_report_in_browser.sh [OUT_DIR]
#
# Builds a tiny synthetic benchmark (d2r.datasets.synthetic), RootSIFT features,
# a random initial ranking re-ranked by spatial verification, and writes the
# report (d2r.report.benchmark.write_report) to OUT_DIR/report (default: a new temporary
# directory).  Chromium then opens report/index.html and one match page from
# file:// and saves OUT_DIR/index.png and OUT_DIR/match.png; the script fails
# unless both screenshots show rendered thumbnails (many distinct colours) and
# the index shows green (positive) and red (negative) result frames.  Look at
# the PNGs to judge the layout.
#
# Needs: the project's Python environment (python on PATH, or .venv/) and
# Debian's chromium (apt-get install -y chromium).  The same check runs in
# tests/test_report.py, skipped when chromium is absent.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${1:-$(mktemp -d -t d2r_report_check.XXXXXX)}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
if [[ -z "${VIRTUAL_ENV:-}" && -f "$ROOT/.venv/bin/activate" ]]; then
  # shellcheck disable=SC1091
  . "$ROOT/.venv/bin/activate"
fi
BROWSER="$(command -v chromium || command -v chromium-browser || true)"
if [[ -z "$BROWSER" ]]; then
  echo "chromium not found; install it with: apt-get install -y chromium" >&2
  exit 2
fi

python - "$OUT" <<'PY'
import sys
from pathlib import Path

import numpy as np

from d2r.datasets.revisited import load_revisited
from d2r.datasets.synthetic import generate
from d2r.features.rootsift import RootSiftExtractor
from d2r.io.images import load_image
from d2r.report.benchmark import report_matches, write_report
from d2r.spatial.reranking import rerank_batch, stack_results

out = Path(sys.argv[1])
root = out / "synth"
if not root.exists():
    generate(root, seed=0, num_landmarks=4, num_db_images=16, num_distractors=4,
             queries_per_landmark=1)
dataset = load_revisited(root)
extractor = RootSiftExtractor(max_features=500)
db = [extractor.extract(load_image(dataset.db_path(i))) for i in range(dataset.num_db)]
queries = [extractor.extract(load_image(dataset.query_path(q)), box=dataset.query_boxes[q])
           for q in range(dataset.num_queries)]
rng = np.random.default_rng(0)
initial = np.stack([rng.permutation(dataset.num_db) for _ in range(dataset.num_queries)])
results = rerank_batch(queries, (initial, np.zeros(initial.shape, np.float32)), db,
                       top_n=dataset.num_db, ratio_test=0.8)
index = write_report(out / "report", dataset=dataset, ranks=stack_results(results).ids,
                     verification=report_matches(results, queries, db, top_k=10))
match = sorted((out / "report" / "matches").glob("*.html"))[0]
(out / "pages.txt").write_text(f"{index}\n{match}\n")
PY

shot() {  # shot URL PNG HEIGHT
  "$BROWSER" --headless --no-sandbox --disable-gpu --disable-background-networking \
    --disable-component-update --disable-sync --no-first-run \
    --user-data-dir="$(mktemp -d)" --screenshot="$2" --window-size="1200,$3" "$1" \
    >/dev/null 2>&1
}
mapfile -t PAGES < "$OUT/pages.txt"
shot "file://${PAGES[0]}" "$OUT/index.png" 1600
shot "file://${PAGES[1]}" "$OUT/match.png" 700

python - "$OUT" <<'PY'
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from d2r.report.benchmark import LABEL_COLOURS

out = Path(sys.argv[1])
failed = []
for name, frames in (("index.png", ("positive", "negative")), ("match.png", ())):
    pixels = np.asarray(Image.open(out / name).convert("RGB")).reshape(-1, 3).astype(int)
    colours = len(np.unique(pixels @ np.array([65536, 256, 1])))
    if colours < 1000:
        failed.append(f"{name}: only {colours} distinct colours (images not rendered?)")
    for label in frames:
        rgb = np.array([int(LABEL_COLOURS[label][i:i + 2], 16) for i in (1, 3, 5)])
        if not np.any(np.abs(pixels - rgb).max(axis=1) <= 8):
            failed.append(f"{name}: no {label} frame colour {LABEL_COLOURS[label]}")
for line in failed:
    print("FAIL", line, file=sys.stderr)
if failed:
    sys.exit(1)
print(f"ok: {out}/index.png and {out}/match.png")
PY
