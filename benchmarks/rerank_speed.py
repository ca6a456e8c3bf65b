"""Speed of spatial verification: d2r's OpenCV path vs. the reference's scikit-image RANSAC.

One query of a synthetic benchmark (:mod:`d2r.datasets.synthetic`, generated
into a temporary directory) is verified against ``--candidates`` database
images with RootSIFT features.  Putative matches are computed once with
:func:`d2r.spatial.matching.match_descriptors`; both RANSAC procedures then run on
the *same* matches:

* ``opencv``: :func:`d2r.spatial.ransac.verify_pair` with ``method="opencv"``
  (``cv2.estimateAffine2D``, adaptive stop at 99 % confidence), serially and
  through :func:`d2r.spatial.reranking.rerank` with ``--workers`` threads;
* ``skimage``: the DELF reference's procedure, ``skimage.measure.ransac`` with
  ``AffineTransform``, ``min_samples=3``, all ``max_trials`` iterations.

The reference's KD-tree matching (``scipy.spatial.cKDTree`` with
``distance_upper_bound``) is timed against ours as well.  The script prints the
timings, their ratios, the inlier counts side by side, and the query's
Medium-protocol AP before and after re-ranking with either method.

    python benchmarks/rerank_speed.py                     # 100 candidates, reference settings
    python benchmarks/rerank_speed.py --ratio-test 0.8    # Lowe's ratio test on top
    python benchmarks/rerank_speed.py --candidates 20     # quick run
    python benchmarks/rerank_speed.py --decision nfa      # the a-contrario decision

It also prints what re-ranking costs per pair (matching, RANSAC and the decision,
:func:`d2r.spatial.score.decide`: one-to-one inliers, the a-contrario score, the sanity
checks) and the decision's part, with the numpy decision and the compiled one
(:mod:`d2r.spatial._score_kernels`); medians of ``--repeats`` alternating serial runs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from d2r.datasets.revisited import load_revisited
from d2r.datasets.synthetic import generate
from d2r.evaluation.metrics import compute_map, protocol_gnd
from d2r.features.rootsift import RootSiftExtractor
from d2r.io.images import load_image
from d2r.spatial import ransac as ransac_module
from d2r.spatial.matching import match_descriptors
from d2r.spatial.ransac import verify_pair
from d2r.spatial.reranking import rerank
from d2r.spatial.score import QueryPoints


def _kdtree_matches(query, db, threshold: float) -> np.ndarray:
    """The reference's putative matching: KD-tree over db descriptors, distance upper bound."""
    _, idx = cKDTree(db.descriptors).query(query.descriptors, distance_upper_bound=threshold)
    keep = idx < len(db)
    return np.stack([np.flatnonzero(keep), idx[keep]], axis=1)


def _timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def _decision_cost(query, db, match_options: dict, options: dict, repeats: int) -> None:
    """Print the milliseconds per pair of serial re-ranking (matching, RANSAC, decision) and
    the part spent deciding, with the numpy decision (before) and the compiled one (after),
    the query's locations indexed once per query either way."""
    spent = [0.0]
    decide = ransac_module.decide

    def timed_decide(*args, **kwargs):
        start = time.perf_counter()
        try:
            return decide(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - start

    def rerank_pairs(compiled: bool):
        points = QueryPoints(query.locations, compiled=compiled)
        return [verify_pair(query, d, query_points=points, **match_options, **options)
                for d in db]

    runs = {"numpy (before)": [], "compiled (after)": []}
    rerank_pairs(True)  # compiles (or loads) the kernels outside the timing
    ransac_module.decide = timed_decide
    try:
        for _ in range(repeats):
            for name, compiled in zip(runs, (False, True)):
                spent[0] = 0.0
                results, seconds = _timed(lambda: rerank_pairs(compiled))
                runs[name].append((seconds, spent[0], results))
    finally:
        ransac_module.decide = decide
    before, after = ([r[2] for r in runs[name]][0] for name in runs)
    same = all((a.inlier_matches.tolist(), a.score, a.verified, a.reason)
               == (b.inlier_matches.tolist(), b.score, b.verified, b.reason)
               for a, b in zip(before, after))
    n = len(db)
    print(f"\nre-ranking cost per pair ({options['decision']}: matching, RANSAC, decision), "
          f"serial, medians of {repeats} alternating runs; results identical: {same}")
    print(f"| {'decision':<18} | {'ms/pair':>8} | {'decide ms/pair':>14} | {'share':>6} |")
    print(f"|{'-' * 20}|{'-' * 10}|{'-' * 16}|{'-' * 8}|")
    for name, values in runs.items():
        total = float(np.median([v[0] for v in values]))
        deciding = float(np.median([v[1] for v in values]))
        print(f"| {name:<18} | {1000 * total / n:8.3f} | {1000 * deciding / n:14.3f} | "
              f"{100 * deciding / total:5.1f}% |")


def _labels(gnd, num_db: int) -> np.ndarray:
    labels = np.full(num_db, "negative", dtype=object)
    labels[gnd.junk] = "junk"
    labels[gnd.hard] = "hard"
    labels[gnd.easy] = "easy"
    return labels


def run(args: argparse.Namespace, root: Path) -> None:
    generate(root, seed=args.seed, num_landmarks=5, num_db_images=args.candidates,
             num_distractors=max(1, args.candidates // 5), queries_per_landmark=1,
             image_side=(384, 512))
    dataset = load_revisited(root)
    extractor = RootSiftExtractor(max_features=args.max_features)
    query = extractor.extract(load_image(dataset.query_path(args.query)),
                              box=dataset.query_boxes[args.query])
    db, extract_s = _timed(lambda: [extractor.extract(load_image(dataset.db_path(i)))
                                    for i in range(dataset.num_db)])
    match_options = dict(descriptor_threshold=args.descriptor_threshold, ratio_test=args.ratio_test)
    ransac = dict(ransac_threshold=args.ransac_threshold, max_trials=args.max_trials,
                  decision=args.decision)

    matches, ours_match_s = _timed(lambda: [match_descriptors(query, d, **match_options)
                                            for d in db])
    _, kdtree_s = _timed(lambda: [_kdtree_matches(query, d, args.descriptor_threshold) for d in db])
    cv_runs, cv_s = _timed(lambda: [verify_pair(query, d, matches=m, method="opencv", **ransac)
                                    for d, m in zip(db, matches)])
    sk_runs, sk_s = _timed(lambda: [verify_pair(query, d, matches=m, method="skimage",
                                                seed=args.seed, **ransac)
                                    for d, m in zip(db, matches)])
    ids = np.arange(dataset.num_db, dtype=np.int64)
    initial = (ids, np.zeros(dataset.num_db, np.float32))
    threaded, threaded_s = _timed(lambda: rerank(query, initial, db, top_n=dataset.num_db,
                                                 workers=args.workers, min_inliers=args.min_inliers,
                                                 **match_options, **ransac))
    n = dataset.num_db
    print(f"query {dataset.query_names[args.query]}: {len(query)} RootSIFT features; "
          f"{n} candidates (extraction {extract_s:.1f} s, not timed below)")
    print(f"matching: descriptor_threshold={args.descriptor_threshold} ratio_test={args.ratio_test}; "
          f"RANSAC: threshold={args.ransac_threshold} px, max_trials={args.max_trials}\n")
    rows = [
        ("matching, d2r (numpy matmul)", ours_match_s, kdtree_s),
        ("matching, reference (cKDTree)", kdtree_s, kdtree_s),
        ("RANSAC, skimage (reference)", sk_s, sk_s),
        ("RANSAC, d2r opencv, 1 thread", cv_s, sk_s),
        (f"match+RANSAC, d2r rerank, {args.workers} threads", threaded_s, sk_s + kdtree_s),
    ]
    print(f"| {'step':<42} | {'total s':>8} | {'ms/pair':>8} | {'speed-up':>8} |")
    print(f"|{'-' * 44}|{'-' * 10}|{'-' * 10}|{'-' * 10}|")
    for name, seconds, reference in rows:
        print(f"| {name:<42} | {seconds:8.3f} | {1000 * seconds / n:8.2f} | "
              f"{reference / seconds:7.1f}x |")

    _decision_cost(query, db, match_options, dict(method="opencv", **ransac), args.repeats)

    labels = _labels(dataset.gnd[args.query], n)
    cv_in = np.array([r.num_inliers for r in cv_runs])
    sk_in = np.array([r.num_inliers for r in sk_runs])
    n_matches = np.array([len(m) for m in matches])
    print(f"\n| {'label':<9} | {'images':>6} | {'matches':>8} | {'inliers cv':>10} | "
          f"{'inliers sk':>10} | {'mean |cv-sk|':>12} |")
    print(f"|{'-' * 11}|{'-' * 8}|{'-' * 10}|{'-' * 12}|{'-' * 12}|{'-' * 14}|")
    for label in ("easy", "hard", "junk", "negative"):
        sel = labels == label
        if sel.any():
            print(f"| {label:<9} | {sel.sum():6d} | {n_matches[sel].mean():8.1f} | "
                  f"{cv_in[sel].mean():10.1f} | {sk_in[sel].mean():10.1f} | "
                  f"{np.abs(cv_in - sk_in)[sel].mean():12.1f} |")
    if args.per_candidate:
        print(f"\n| {'id':>4} | {'label':<8} | {'matches':>7} | {'cv':>4} | {'sk':>4} |")
        for i in range(n):
            print(f"| {i:4d} | {labels[i]:<8} | {n_matches[i]:7d} | {cv_in[i]:4d} | {sk_in[i]:4d} |")

    gnd = protocol_gnd(dataset.gnd[args.query:args.query + 1], "medium")

    def ap(order: np.ndarray) -> float:
        return 100 * compute_map(order[None], gnd)[0]

    def reranked(inliers: np.ndarray) -> np.ndarray:
        """The re-ranking rule for the initial order ``ids`` (all initial scores equal)."""
        verified = inliers >= args.min_inliers
        first = ids[verified][np.lexsort((ids[verified], -inliers[verified]))]
        return np.concatenate([first, ids[~verified]])

    print(f"\nMedium AP of this query (initial order = database order): {ap(ids):.1f}; "
          f"re-ranked (min_inliers={args.min_inliers}) with opencv {ap(reranked(cv_in)):.1f}, "
          f"skimage {ap(reranked(sk_in)):.1f}, d2r rerank() {ap(threaded.ids):.1f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--query", type=int, default=0)
    parser.add_argument("--max-features", type=int, default=1000)
    parser.add_argument("--descriptor-threshold", type=float, default=0.8)
    parser.add_argument("--ratio-test", type=float, default=None)
    parser.add_argument("--ransac-threshold", type=float, default=20.0)
    parser.add_argument("--max-trials", type=int, default=1000)
    parser.add_argument("--min-inliers", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-candidate", action="store_true", help="print every candidate")
    parser.add_argument("--decision", choices=("inliers", "nfa"), default="inliers",
                        help="verification.decision of every verification (default inliers)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of the decision-cost comparison (median reported)")
    args = parser.parse_args(argv)
    if not 0 <= args.query < 5:
        parser.error("--query must be in [0, 5): the benchmark has 5 landmarks, one query each")
    with tempfile.TemporaryDirectory(prefix="rerank_speed_") as tmp:
        run(args, Path(tmp) / "synth")
    return 0


if __name__ == "__main__":
    sys.exit(main())
