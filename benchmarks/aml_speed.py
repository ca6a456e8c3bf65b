"""Speed of AML re-ranking (:func:`d2r.cnn.aml.aml_rerank`) against a frozen copy of the former code.

The former implementation (``reference_*`` below, copied unchanged from
``d2r/cnn/aml.py`` and ``d2r/cnn/integral.py`` before they were sped
up) runs in the same process on the same data, so the ratios are fair on a
shared machine; every run also checks that both give the same windows, ids and
scores.

Data: random ReLU-like activation maps (a shifted Gaussian with per-channel gains,
about ``--density`` non-zero, stored as float16 in a temporary
:class:`~d2r.io.feature_store.FeatureStore` and read back through the searcher's
``_StoredMaps``, as ``Searcher.rerank`` does), of two sizes: 64x48x512
(a ~1024-px image through VGG16) and 18x13x512 (~288 px).  Each query is a random
crop of a database map (MAC for localization, R-MAC for the region comparison,
its aspect ratio for the window filter); every query's ranking is a random order
of the database with the source image in the head.

Reported per map size:

* per stage, on a sample of (query, image) pairs: map decode (store read, shared
  by both), integral-image build, grid-window scoring, refinement and region
  description (R-MAC of the crop, shared), reference vs new, in ms;
* end to end, ``aml_rerank`` over Q queries x top N through the store, in ms per
  localized image, reference vs new with 1 and ``--workers`` threads;
* agreement: identical windows / ids, largest score difference.

    python benchmarks/aml_speed.py                 # both sizes
    python benchmarks/aml_speed.py --quick         # smaller, for a smoke test
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from d2r.cnn import aml
from d2r.cnn._ranking import cap_tail, ranking_ids
from d2r.cnn.integral import IntegralMaxPool
from d2r.cnn.pooling import check_activations, check_regions, l2_normalize
from d2r.cnn.rmac import rmac
from d2r.io.feature_store import FeatureStore
from d2r.pipeline.searcher import _StoredMaps
from d2r.types import ActivationMap, SearchResult

# --------------------------------------------------------------------------------------
# Frozen reference: the implementation before the speed-up (do not optimize).
# --------------------------------------------------------------------------------------

_REFERENCE_CHUNK = 2048


class ReferenceIntegralMaxPool:
    """The former ``IntegralMaxPool`` (unchanged)."""

    def __init__(self, activations, *, alpha: float = 10.0, levels: int | None = None) -> None:
        x = check_activations(activations).astype(np.float64)
        if np.any(x < 0):
            raise ValueError("integral max-pooling needs non-negative (ReLU'd) activations")
        if not np.isfinite(alpha) or alpha <= 0:
            raise ValueError(f"alpha must be a positive finite number, got {alpha!r}")
        if levels is not None and (isinstance(levels, bool) or int(levels) != levels or levels < 2):
            raise ValueError(f"levels must be an integer >= 2 or None, got {levels!r}")
        self.alpha = float(alpha)
        self.levels = None if levels is None else int(levels)
        self.height, self.width, self.channels = x.shape
        peak = x.max(axis=(0, 1))
        self.scale = np.where(peak > 0, peak, 1.0)
        unit = x / self.scale
        if self.levels is None:
            powered = unit**self.alpha
        else:
            table = (np.arange(self.levels, dtype=np.float64) / (self.levels - 1)) ** self.alpha
            powered = table[np.rint(unit * (self.levels - 1)).astype(np.int64)]
        self.integral = np.zeros((self.height + 1, self.width + 1, self.channels), np.float64)
        np.cumsum(np.cumsum(powered, axis=0), axis=1, out=self.integral[1:, 1:])
        self._noise = 16 * np.finfo(np.float64).eps * self.integral[-1, -1]

    def _sums(self, boxes: np.ndarray) -> np.ndarray:
        ii = self.integral
        x1, y1, x2, y2 = boxes.T
        total = ii[y2, x2] - ii[y1, x2] - ii[y2, x1] + ii[y1, x1]
        return np.where(total > self._noise, total, 0.0)

    def cosine(self, windows, query) -> np.ndarray:
        q = np.asarray(query, dtype=np.float64).reshape(-1)
        if q.shape[0] != self.channels:
            raise ValueError(f"query has {q.shape[0]} dimensions, the map has {self.channels} channels")
        q = q / max(float(np.linalg.norm(q)), 1e-12)
        boxes = check_regions(windows, self.height, self.width, "windows")
        out = np.empty(boxes.shape[0], np.float64)
        for start in range(0, boxes.shape[0], _REFERENCE_CHUNK):
            v = self._sums(boxes[start : start + _REFERENCE_CHUNK]) ** (1.0 / self.alpha) * self.scale
            norms = np.maximum(np.linalg.norm(v, axis=1), 1e-12)
            out[start : start + _REFERENCE_CHUNK] = (v @ q) / norms
        return out


def _reference_pairs(length: int, step: int) -> np.ndarray:
    coords = np.unique(np.append(np.arange(0, length, step), length))
    i, j = np.triu_indices(coords.size, 1)
    return np.stack([coords[i], coords[j]], axis=1)


def _reference_product(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    ix, iy = np.meshgrid(np.arange(xs.shape[0]), np.arange(ys.shape[0]), indexing="ij")
    ix, iy = ix.reshape(-1), iy.reshape(-1)
    return np.stack([xs[ix, 0], ys[iy, 0], xs[ix, 1], ys[iy, 1]], axis=1).astype(np.int64)


def reference_candidate_windows(height: int, width: int, *, step: int = 3, aspect_ratio=None,
                                aspect_ratio_factor: float = 1.1) -> np.ndarray:
    windows = _reference_product(_reference_pairs(int(width), step), _reference_pairs(int(height), step))
    if aspect_ratio is None:
        return windows
    ratios = (windows[:, 2] - windows[:, 0]) / (windows[:, 3] - windows[:, 1])
    deviation = np.abs(np.log(ratios / aspect_ratio))
    keep = deviation <= np.log(aspect_ratio_factor) + 1e-12
    if not keep.any():
        keep = deviation <= deviation.min() + 1e-12
    return windows[keep]


def reference_refine(pool, query: np.ndarray, window: np.ndarray, score: float,
                     refine_step: int, refine_rounds: int) -> tuple[np.ndarray, float, int]:
    offsets = np.concatenate([np.arange(-refine_step, 0), np.arange(1, refine_step + 1)])
    limits = np.array([pool.width, pool.height, pool.width, pool.height])
    evaluated = 0
    for _ in range(refine_rounds):
        improved = False
        for coord in range(4):
            cands = np.repeat(window[None], offsets.size, axis=0)
            cands[:, coord] += offsets
            ok = ((cands[:, 0] >= 0) & (cands[:, 1] >= 0) & (cands[:, 2] <= limits[2])
                  & (cands[:, 3] <= limits[3]) & (cands[:, 2] > cands[:, 0]) & (cands[:, 3] > cands[:, 1]))
            cands = cands[ok]
            if not cands.shape[0]:
                continue
            scores = pool.cosine(cands, query)
            evaluated += cands.shape[0]
            best = int(np.argmax(scores))
            if scores[best] > score + 1e-12:
                window, score, improved = cands[best].copy(), float(scores[best]), True
        if not improved:
            break
    return window, score, evaluated


def reference_localize(query_mac, activations, *, query_aspect_ratio=None, step: int = 3,
                       aspect_ratio_factor: float = 1.1, refine_step: int = 3, refine_rounds: int = 5,
                       alpha: float = 10.0, levels: int | None = None) -> aml.Localization:
    pool = (activations if isinstance(activations, ReferenceIntegralMaxPool)
            else ReferenceIntegralMaxPool(activations, alpha=alpha, levels=levels))
    windows = reference_candidate_windows(pool.height, pool.width, step=step, aspect_ratio=query_aspect_ratio,
                                          aspect_ratio_factor=aspect_ratio_factor)
    scores = pool.cosine(windows, query_mac)
    best = int(np.argmax(scores))
    window, score, refined = reference_refine(pool, np.asarray(query_mac, np.float64), windows[best].copy(),
                                              float(scores[best]), refine_step, int(refine_rounds))
    return aml.Localization(window=window, score=score, num_evaluated=int(windows.shape[0]) + refined)


def reference_aml_rerank(ranking, query_macs, database_maps, *, query_vectors=None, query_aspect_ratios=None,
                         describe_region=None, top_n: int = 1000, step: int = 3,
                         aspect_ratio_factor: float = 1.1, refine_step: int = 3, refine_rounds: int = 5,
                         alpha: float = 10.0, levels: int | None = None):
    macs = np.asarray(query_macs, dtype=np.float32)
    ids = ranking_ids(ranking, macs.shape[0], len(database_maps))
    describe = describe_region if describe_region is not None else (lambda m: l2_normalize(m.max(axis=(0, 1))))
    qvec = l2_normalize(macs) if query_vectors is None else np.asarray(query_vectors, dtype=np.float32)
    ratios = [None] * macs.shape[0] if query_aspect_ratios is None else list(np.asarray(query_aspect_ratios, float))
    head = min(top_n, ids.shape[1])
    windows = np.full((macs.shape[0], head, 4), -1, np.int64)
    vectors = np.zeros((macs.shape[0], head, qvec.shape[1]), np.float32)
    scores = np.array(ranking.scores, dtype=np.float32)
    new_ids = ids.copy()
    for q in range(macs.shape[0]):
        sims = np.full(head, -np.inf, np.float32)
        for j in np.flatnonzero(ids[q, :head] >= 0):
            amap = check_activations(database_maps[int(ids[q, j])], f"database_maps[{int(ids[q, j])}]")
            loc = reference_localize(macs[q], amap, query_aspect_ratio=ratios[q], step=step,
                                     aspect_ratio_factor=aspect_ratio_factor, refine_step=refine_step,
                                     refine_rounds=refine_rounds, alpha=alpha, levels=levels)
            x1, y1, x2, y2 = loc.window
            vec = np.asarray(describe(amap[y1:y2, x1:x2]), dtype=np.float32)
            windows[q, j], vectors[q, j] = loc.window, vec
            sims[j] = float(vec @ qvec[q])
        order = np.argsort(-sims, kind="stable")
        new_ids[q, :head] = ids[q, :head][order]
        scores[q, :head] = sims[order]
        windows[q], vectors[q] = windows[q][order], vectors[q][order]
    cap_tail(scores, head)
    return SearchResult(scores, new_ids, ranking.names), windows, vectors


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------


def relu_map(rng: np.random.Generator, h: int, w: int, c: int, density: float) -> np.ndarray:
    """(h, w, c) float32, about ``density`` non-zero: ReLU of a shifted Gaussian with channel gains
    and a few brighter blobs (object-like parts)."""
    from scipy.stats import norm

    shift = norm.ppf(1.0 - density)
    x = rng.standard_normal((h, w, c), dtype=np.float32) - np.float32(shift)
    for _ in range(3):
        cy, cx = rng.integers(0, h), rng.integers(0, w)
        yy, xx = np.ogrid[:h, :w]
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (0.15 * max(h, w)) ** 2)).astype(np.float32)
        chans = rng.choice(c, c // 8, replace=False)
        x[:, :, chans] += 2 * blob[:, :, None]
    gain = rng.lognormal(0.0, 0.5, c).astype(np.float32)
    return np.maximum(x, 0) * gain


def make_case(tmp: Path, rng, *, size, num_db: int, num_queries: int, top_n: int, density: float):
    h, w, c = size
    path = tmp / f"maps_{h}x{w}"
    names = [f"db{i:05d}" for i in range(num_db)]
    with FeatureStore.open(path, mode="a", dtype="float16", value_type=ActivationMap) as store:
        for name in names:
            store.put(name, ActivationMap(relu_map(rng, h, w, c, density)))
    store = FeatureStore.open(path, value_type=ActivationMap)
    maps = _StoredMaps(store, names)
    macs, vecs, ratios, rows = [], [], [], []
    for _ in range(num_queries):
        src = int(rng.integers(num_db))
        amap = maps[src]
        bw, bh = (max(1, round(s * rng.uniform(0.35, 0.8))) for s in (w, h))
        x1, y1 = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
        crop = amap[y1 : y1 + bh, x1 : x1 + bw]
        macs.append(crop.max(axis=(0, 1)))
        vecs.append(rmac(crop))
        ratios.append(bw / bh)
        order = rng.permutation(num_db)
        order = np.concatenate([[src], order[order != src]])
        head = min(top_n, num_db)
        order[:head] = order[:head][rng.permutation(head)]
        rows.append(order)
    ids = np.stack(rows).astype(np.int64)
    scores = np.sort(rng.random(ids.shape).astype(np.float32), axis=1)[:, ::-1].copy()
    ranking = SearchResult(scores, ids)
    return store, maps, ranking, np.stack(macs), np.stack(vecs), np.array(ratios)


# --------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------


def _clock(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def stage_timings(maps, ranking, macs, ratios, *, samples: int, levels, rng) -> tuple[dict, int, float]:
    """Median ms per pair of each stage, reference and new, on the same sampled pairs; the
    number of pairs localized in another window, and the largest score difference."""
    q_all, j_all = np.nonzero(np.ones(ranking.ids.shape, bool))
    pick = rng.choice(q_all.size, min(samples, q_all.size), replace=False)
    times: dict[str, list[float]] = {}
    mismatches, worst = 0, 0.0
    for p in pick:
        q = int(q_all[p])
        same, diff = _time_pair(maps, int(ranking.ids[q, int(j_all[p])]), macs[q], float(ratios[q]), levels, times)
        mismatches += int(not same)
        worst = max(worst, diff)
    return {k: float(np.median(v)) for k, v in times.items()}, mismatches, worst


def _time_pair(maps, db: int, mac: np.ndarray, ratio: float, levels, times: dict) -> tuple[bool, float]:
    """Time each stage for one (query, database image) pair, both implementations."""

    def add(key, seconds):
        times.setdefault(key, []).append(seconds * 1e3)

    amap, t = _clock(lambda: maps[db])
    add("decode", t)
    # reference
    ref_pool, t = _clock(lambda: ReferenceIntegralMaxPool(amap, levels=levels))
    add("build ref", t)

    def ref_score():
        wins = reference_candidate_windows(ref_pool.height, ref_pool.width, aspect_ratio=ratio)
        return wins, ref_pool.cosine(wins, mac)

    (wins, scores), t = _clock(ref_score)
    add("score ref", t)
    best = int(np.argmax(scores))
    (ref_win, ref_s, _), t = _clock(lambda: reference_refine(
        ref_pool, np.asarray(mac, np.float64), wins[best].copy(), float(scores[best]), 3, 5))
    add("refine ref", t)
    # new
    new_pool, t = _clock(lambda: IntegralMaxPool(amap, levels=levels))
    add("build new", t)
    unit = new_pool.unit_query(mac)

    def new_score():
        wins = aml._grid_windows(new_pool.height, new_pool.width, 3, ratio, 1.1)
        return wins, new_pool.best_windows(wins, [unit])[0]

    (nwins, (nbest, nscore)), t = _clock(new_score)
    add("score new", t)
    (new_win, new_s, _), t = _clock(lambda: aml._refine(new_pool, unit, nwins[nbest], nscore, 3, 5))
    add("refine new", t)
    x1, y1, x2, y2 = new_win
    _, t = _clock(lambda: rmac(amap[y1:y2, x1:x2]))
    add("describe", t)
    return bool(np.array_equal(ref_win, new_win)), abs(ref_s - new_s)


def end_to_end(maps, ranking, macs, vecs, ratios, *, top_n: int, levels, workers: int) -> dict:
    kwargs = {"query_vectors": vecs, "query_aspect_ratios": ratios, "describe_region": rmac, "top_n": top_n,
              "levels": levels}
    pairs = int(np.sum(ranking.ids[:, :top_n] >= 0))
    images = int(np.unique(ranking.ids[:, :top_n]).size)
    ref, t_ref = _clock(lambda: reference_aml_rerank(ranking, macs, maps, **kwargs))
    new1, t_new1 = _clock(lambda: aml.aml_rerank(ranking, macs, maps, workers=1, **kwargs))
    newk, t_newk = _clock(lambda: aml.aml_rerank(ranking, macs, maps, workers=workers, **kwargs))
    agree = {}
    for label, new in (("workers=1", new1), (f"workers={workers}", newk)):
        agree[label] = {
            "ids": bool(np.array_equal(ref[0].ids, new[0].ids)),
            "windows": bool(np.array_equal(ref[1], new[1])),
            "scores_bitwise": bool(np.array_equal(ref[0].scores, new[0].scores)),
            "max_score_diff": float(np.max(np.abs(ref[0].scores - new[0].scores))),
            "vectors": bool(np.array_equal(ref[2], new[2])),
        }
    return {"pairs": pairs, "images": images, "ref": t_ref, "new1": t_new1, "newk": t_newk, "agree": agree}


def agreement_localize(rng, *, trials: int) -> dict:
    """localize() vs reference_localize() on random and planted maps, quantized or not."""
    same = total = 0
    worst = 0.0
    for t in range(trials):
        h, w = int(rng.integers(1, 30)), int(rng.integers(1, 40))
        c = int(rng.choice([8, 32, 128]))
        x = relu_map(rng, h, w, c, float(rng.choice([0.05, 0.3, 0.9])))
        if t % 3 == 0:  # planted object in zeroed surroundings
            x[...] = 0
            bx1, by1 = int(rng.integers(0, w)), int(rng.integers(0, h))
            bx2, by2 = int(rng.integers(bx1 + 1, w + 1)), int(rng.integers(by1 + 1, h + 1))
            x[by1:by2, bx1:bx2] = relu_map(rng, by2 - by1, bx2 - bx1, c, 0.3)
        x = x.astype(np.float16).astype(np.float32)
        q = x[: max(1, h // 2), : max(1, w // 2)].max(axis=(0, 1))
        levels = [None, 16, 256][t % 3]
        ratio = None if t % 4 == 0 else float(rng.uniform(0.3, 3.0))
        step = int(rng.choice([1, 2, 3]))
        a = reference_localize(q, x, query_aspect_ratio=ratio, levels=levels, step=step)
        b = aml.localize(q, x, query_aspect_ratio=ratio, levels=levels, step=step)
        total += 1
        same += int(np.array_equal(a.window, b.window) and a.num_evaluated == b.num_evaluated)
        worst = max(worst, abs(a.score - b.score))
    return {"same": same, "total": total, "max_score_diff": worst}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer images and queries")
    parser.add_argument("--workers", type=int, default=2, help="threads of the parallel run")
    parser.add_argument("--levels", type=int, default=None, help="quantization levels (aml_levels)")
    parser.add_argument("--density", type=float, default=0.2, help="fraction of non-zero activations")
    parser.add_argument("--samples", type=int, default=12, help="pairs timed stage by stage")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    rng = np.random.default_rng(args.seed)
    cases = [  # (H, W, C), database images, queries, top N
        ((48, 64, 512), 12 if args.quick else 30, 3, 8 if args.quick else 20),
        ((13, 18, 512), 60 if args.quick else 200, 3 if args.quick else 4, 30 if args.quick else 100),
    ]
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for size, num_db, num_queries, top_n in cases:
            store, maps, ranking, macs, vecs, ratios = make_case(
                Path(tmp), rng, size=size, num_db=num_db, num_queries=num_queries, top_n=top_n,
                density=args.density)
            try:
                print(f"\n== maps {size[1]}x{size[0]}x{size[2]} (W x H x C), density {args.density}, "
                      f"levels {args.levels}: {num_queries} queries x top {top_n} of {num_db} images ==")
                stages, bad, worst = stage_timings(maps, ranking, macs, ratios, samples=args.samples, levels=args.levels,
                                            rng=rng)
                print(f"stages (median ms per pair over {args.samples} pairs; decode and describe are shared):")
                print(f"  {'decode':<9} {stages['decode']:8.2f}")
                for stage in ("build", "score", "refine"):
                    ref, new = stages[f"{stage} ref"], stages[f"{stage} new"]
                    print(f"  {stage:<9} ref {ref:8.2f}  new {new:8.2f}  ratio {ref / new:6.1f}x")
                print(f"  {'describe':<9} {stages['describe']:8.2f}")
                print(f"  pairs localized in another window: {bad}; largest score difference {worst:.1e}")
                failures += bad + int(worst > 1e-5)
                e2e = end_to_end(maps, ranking, macs, vecs, ratios, top_n=top_n, levels=args.levels,
                                 workers=args.workers)
                per = 1e3 / e2e["pairs"]
                print(f"end to end: {e2e['pairs']} localized pairs ({e2e['images']} distinct images), ms per pair:")
                print(f"  reference            {e2e['ref'] * per:8.2f}")
                print(f"  new, 1 worker        {e2e['new1'] * per:8.2f}  ratio {e2e['ref'] / e2e['new1']:6.1f}x")
                print(f"  new, {args.workers} workers       {e2e['newk'] * per:8.2f}  "
                      f"ratio {e2e['ref'] / e2e['newk']:6.1f}x")
                for label, agree in e2e["agree"].items():
                    print(f"  agreement ({label}): {agree}")
                    ok = agree["ids"] and agree["windows"] and agree["max_score_diff"] <= 1e-5
                    failures += int(not ok)
            finally:
                store.close()
    loc = agreement_localize(rng, trials=60 if args.quick else 300)
    print(f"\nlocalize() on random / planted maps (levels None, 16, 256; steps 1-3; sizes 1..29 x 1..39): "
          f"{loc['same']}/{loc['total']} identical windows, max score difference {loc['max_score_diff']:.2e}")
    failures += loc["total"] - loc["same"] + int(loc["max_score_diff"] > 1e-5)
    if failures:
        print(f"FAILED: {failures} disagreement(s) with the reference")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
