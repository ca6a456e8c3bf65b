"""CNN global baselines on a synthetic benchmark: dimension, extraction / query time, mAP.

Methods (one backbone, ``last`` and ``previous_block`` conv layers):

* MAC; MAC + PCA-whitening; R-MAC (L=3) + whitening, alone, with AML re-ranking of
  the top N, with AML + query expansion (top 5 localized regions), with plain QE;
* multi-resolution (three input sizes in the ratio 550:800:1050) multi-layer R-MAC
  with square-sum pooling, without and with PFA selection to half the dimension;
  with a CAM mask (min of global / local Manhattan distances) when the backbone has
  an ImageNet classifier (ResNets with ``--classifier``);
* regional first + second-order pooling on salient-point regions (best region pair),
  without and with QE.

Whitening, PFA and the local PCA are learned on a second synthetic data set
(``--train-data``; note: the synthetic generator draws its landmarks from the same
photographs, so this is friendlier than Oxford/Paris cross-learning).

Without ``--weights`` the backbone has RANDOM weights: the mAP figures then only
show that the pipelines run end to end; real numbers need the user's ImageNet
weights file (e.g. Keras' ``vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5``).

Usage::

    d2r synthetic --out /tmp/synth_small --size small
    d2r synthetic --out /tmp/synth_train --size small --seed 1
    python benchmarks/global_baselines.py --data /tmp/synth_small --train-data /tmp/synth_train

Times are wall-clock on this machine, single process; "extract" is per database
image (CNN forward passes of the resolutions the method needs + pooling), "query"
per query (pooling excluded; search + re-ranking).
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass, field

import numpy as np

from d2r.datasets.revisited import crop_query, load_revisited
from d2r.evaluation.metrics import evaluate_protocols, result_to_ranks
from d2r.cnn.aml import aml_rerank
from d2r.cnn.backbones import Backbone, resize_image
from d2r.cnn.cam import cam_heatmap, cam_mask
from d2r.cnn.multires import multilayer_descriptor
from d2r.cnn.pfa import learn_pfa
from d2r.cnn.qe import (
    average_query_expansion,
    expand_queries,
    rerank_top,
    rescore_head,
)
from d2r.cnn.regional import region_vectors
from d2r.cnn.rmac import mac_descriptor, rmac, rmac_training_vectors
from d2r.cnn.salient_regions import detect_salient_points, salient_regions
from d2r.cnn.whitening import learn_whitening
from d2r.index.global_index import GlobalIndex
from d2r.index.global_local import GlobalLocalIndex
from d2r.index.region_vectors import RegionVectorIndex
from d2r.io.images import load_image
from d2r.types import SearchResult

logger = logging.getLogger("global_baselines")


@dataclass
class Extracted:
    """Per-image maps and timings."""

    last: list = field(default_factory=list)
    prev: list = field(default_factory=list)
    multires: list = field(default_factory=list)  # [[last maps per resolution], [prev maps ...]]
    points: list = field(default_factory=list)
    sizes: list = field(default_factory=list)
    aspect: list = field(default_factory=list)
    t_base: list = field(default_factory=list)
    t_multires: list = field(default_factory=list)
    t_points: list = field(default_factory=list)


def extract(backbone: Backbone, images, *, max_side: int, resolutions, multires: bool) -> Extracted:
    out = Extracted()
    for img in images:
        t0 = time.perf_counter()
        maps = backbone.activations(img, max_side=max_side)
        out.t_base.append(time.perf_counter() - t0)
        out.last.append(maps["last"])
        out.prev.append(maps["previous_block"])
        if multires:
            t0 = time.perf_counter()
            per_res = [backbone.activations(img, max_side=r) for r in resolutions]
            out.multires.append([[m["last"] for m in per_res], [m["previous_block"] for m in per_res]])
            out.t_multires.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        small = resize_image(img, max_side).astype(np.uint8)
        out.points.append(detect_salient_points(small)[:, :2])
        out.t_points.append(time.perf_counter() - t0)
        out.sizes.append((small.shape[1], small.shape[0]))
        out.aspect.append(img.shape[1] / img.shape[0])
    return out


def timed_map(fn, items):
    """[fn(x) for x in items] and the median seconds per item."""
    values, times = [], []
    for item in items:
        t0 = time.perf_counter()
        values.append(fn(item))
        times.append(time.perf_counter() - t0)
    return values, float(np.median(times)) if times else 0.0


def search_all(db: np.ndarray, queries: np.ndarray) -> tuple[SearchResult, float]:
    index = GlobalIndex(db.shape[1])
    index.add(db)
    t0 = time.perf_counter()
    result = index.search(queries, k=db.shape[0])
    return result, (time.perf_counter() - t0) / queries.shape[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="synthetic benchmark directory (revisitop layout)")
    parser.add_argument("--train-data", required=True, help="second data set for whitening / PFA / local PCA")
    parser.add_argument("--backbone", default="vgg16", choices=["vgg16", "resnet50", "resnet101"])
    parser.add_argument("--weights", default=None, help="local weights file (default: random weights)")
    parser.add_argument("--classifier", action="store_true", help="weights hold the ImageNet classifier (CAM)")
    parser.add_argument("--max-side", type=int, default=288, help="longer image side for single-scale methods")
    parser.add_argument("--resolutions", type=int, nargs="+", default=None,
                        help="multi-resolution sizes (default: 550/800/1050 scaled so the largest is --max-side)")
    parser.add_argument("--whiten-dim", type=int, default=256)
    parser.add_argument("--regional-dim", type=int, default=256)
    parser.add_argument("--local-dim", type=int, default=128, help="K', PCA dimension before second-order pooling")
    parser.add_argument("--top-n", type=int, default=100, help="AML / QE re-rank depth")
    parser.add_argument("--no-multires", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    resolutions = args.resolutions or [round(r * args.max_side / 1050) for r in (550, 800, 1050)]
    ds, train = load_revisited(args.data), load_revisited(args.train_data)
    backbone = Backbone(args.backbone, weights_path=args.weights, layers=("last", "previous_block"),
                        classifier=args.classifier, seed=0)
    db_imgs = [load_image(ds.db_path(i)) for i in range(ds.num_db)]
    q_imgs = [crop_query(load_image(ds.query_path(i)), ds.query_boxes[i]) for i in range(ds.num_queries)]
    tr_imgs = [load_image(train.db_path(i)) for i in range(train.num_db)]
    multires = not args.no_multires
    kw = {"max_side": args.max_side, "resolutions": resolutions, "multires": multires}
    logger.info("extracting %d train, %d database, %d query images (%s, %s weights)", len(tr_imgs), len(db_imgs),
                len(q_imgs), args.backbone, "RANDOM" if args.weights is None else args.weights)
    tr, db, qs = extract(backbone, tr_imgs, **kw), extract(backbone, db_imgs, **kw), extract(backbone, q_imgs, **kw)
    t_cnn, t_multi, t_pts = (float(np.median(getattr(db, a))) if getattr(db, a) else 0.0
                             for a in ("t_base", "t_multires", "t_points"))
    rows = []

    def report(name, dim, t_extract, t_query, result):
        metrics = evaluate_protocols(result_to_ranks(result), ds.gnd)
        maps = (metrics[p]["mAP"] for p in ("easy", "medium", "hard"))
        rows.append((name, dim, 1e3 * t_extract, 1e3 * t_query, *maps))

    # MAC, MAC + whitening
    mac_db, t_pool = timed_map(mac_descriptor, db.last)
    mac_q = np.stack([mac_descriptor(m) for m in qs.last])
    result, t_q = search_all(np.stack(mac_db), mac_q)
    report("MAC", mac_q.shape[1], t_cnn + t_pool, t_q, result)
    w_mac = learn_whitening(np.stack([mac_descriptor(m) for m in tr.last]),
                            dim=min(args.whiten_dim, len(tr.last) - 1))
    macw_db, t_pool = timed_map(lambda m: mac_descriptor(m, whitening=w_mac), db.last)
    macw_q = np.stack([mac_descriptor(m, whitening=w_mac) for m in qs.last])
    result, t_q = search_all(np.stack(macw_db), macw_q)
    report("MAC + whitening", w_mac.dim, t_cnn + t_pool, t_q, result)

    # R-MAC + whitening, AML, QE
    w_rmac = learn_whitening(rmac_training_vectors(tr.last), dim=args.whiten_dim)
    rmac_db, t_pool = timed_map(lambda m: rmac(m, whitening=w_rmac), db.last)
    rmac_db = np.stack(rmac_db)
    rmac_q = np.stack([rmac(m, whitening=w_rmac) for m in qs.last])
    base, t_q = search_all(rmac_db, rmac_q)
    report("R-MAC + whitening", w_rmac.dim, t_cnn + t_pool, t_q, base)
    t0 = time.perf_counter()
    aml, _, region_vecs = aml_rerank(base, np.stack([m.max(axis=(0, 1)) for m in qs.last]), db.last,
                                     query_vectors=rmac_q, query_aspect_ratios=qs.aspect,
                                     describe_region=lambda m: rmac(m, whitening=w_rmac), top_n=args.top_n)
    t_aml = (time.perf_counter() - t0) / len(qs.last)
    report(f"R-MAC + AML (top {args.top_n})", w_rmac.dim, t_cnn + t_pool, t_q + t_aml, aml)
    t0 = time.perf_counter()
    expanded = expand_queries(rmac_q, region_vecs[:, :5])
    aml_qe = rescore_head(aml, expanded, region_vecs)
    t_qe = (time.perf_counter() - t0) / len(qs.last)
    report("R-MAC + AML + QE", w_rmac.dim, t_cnn + t_pool, t_q + t_aml + t_qe, aml_qe)
    t0 = time.perf_counter()
    qe = rerank_top(average_query_expansion(rmac_q, rmac_db, base, top_k=5), rmac_db, base, top_n=args.top_n)
    report("R-MAC + QE", w_rmac.dim, t_cnn + t_pool, t_q + (time.perf_counter() - t0) / len(qs.last), qe)

    # multi-resolution multi-layer R-MAC, PFA, CAM
    if multires:
        ml_db, t_pool = timed_map(multilayer_descriptor, db.multires)
        ml_db = np.stack(ml_db)
        ml_q = np.stack([multilayer_descriptor(m) for m in qs.multires])
        result, t_q = search_all(ml_db, ml_q)
        report(f"multi-res {resolutions} multi-layer", ml_db.shape[1], t_multi + t_pool, t_q, result)
        pfa = learn_pfa(np.stack([multilayer_descriptor(m) for m in tr.multires]), dim=ml_db.shape[1] // 2)
        pf_db, t_pool = timed_map(lambda m: multilayer_descriptor(m, pfa=pfa), db.multires)
        pf_q = np.stack([multilayer_descriptor(m, pfa=pfa) for m in qs.multires])
        result, t_q = search_all(np.stack(pf_db), pf_q)
        report("  + PFA", pfa.dim, t_multi + t_pool, t_q, result)
        if backbone.classifier_kernel is not None:
            def local(m):
                heat = cam_heatmap(m[0][-1], backbone.classifier_kernel, backbone.classifier_bias)
                return multilayer_descriptor(m, pfa=pfa, mask=cam_mask(heat))

            loc_db, t_loc = timed_map(local, db.multires)
            loc_q = np.stack([local(m) for m in qs.multires])
            cam_index = GlobalLocalIndex(pfa.dim)
            cam_index.add(np.stack([np.stack(pf_db), np.stack(loc_db)], axis=1))
            t0 = time.perf_counter()
            result = cam_index.search(np.stack([pf_q, loc_q], axis=1), k=cam_index.num_images)
            report("  + PFA + CAM (min L1)", pfa.dim, t_multi + t_pool + t_loc,
                   (time.perf_counter() - t0) / len(qs.last), result)

    # regional first + second-order pooling
    local_pca = learn_whitening(np.concatenate([m.reshape(-1, m.shape[2]) for m in tr.last]),
                                dim=args.local_dim, whiten=False)

    def regions_of(ext, i):
        masks, alpha = salient_regions(ext.last[i], ext.points[i], ext.sizes[i])
        return region_vectors(ext.last[i], masks, alpha, order="both", reduction=local_pca)

    w_reg = learn_whitening(np.concatenate([regions_of(tr, i) for i in range(len(tr.last))]),
                            dim=args.regional_dim)
    reg_db, t_pool = timed_map(lambda i: w_reg.apply(regions_of(db, i)), range(len(db.last)))
    reg_q = [w_reg.apply(regions_of(qs, i)) for i in range(len(qs.last))]
    rdb = RegionVectorIndex(w_reg.dim)
    rdb.add(reg_db)
    t0 = time.perf_counter()
    result = rdb.search(reg_q, k=rdb.num_images)
    t_q = (time.perf_counter() - t0) / len(reg_q)
    report("regional 1st+2nd order", w_reg.dim, t_cnn + t_pts + t_pool, t_q, result)
    t0 = time.perf_counter()
    expanded = [rdb.expand(q, result.ids[i], top_k=5) for i, q in enumerate(reg_q)]
    qe_result = rdb.search(expanded, k=rdb.num_images)
    report("regional + QE", w_reg.dim, t_cnn + t_pts + t_pool, t_q + (time.perf_counter() - t0) / len(reg_q),
           qe_result)

    weights = "RANDOM weights (pipeline check only)" if args.weights is None else f"weights {args.weights}"
    print(f"\n{args.backbone}, {weights}; {ds.num_db} database images, {ds.num_queries} queries; "
          f"max side {args.max_side}; CNN forward median {1e3 * t_cnn:.0f} ms/image"
          + (f", multi-res {1e3 * t_multi:.0f} ms/image" if multires else ""))
    mac_ms = rows[0][2]
    print("| method | dim | extract ms/img | x MAC | query ms | mAP E | mAP M | mAP H |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, dim, te, tq, e, m, h in rows:
        print(f"| {name} | {dim} | {te:.0f} | {te / mac_ms:.2f} | {tq:.2f} | {e:.1f} | {m:.1f} | {h:.1f} |")


if __name__ == "__main__":
    main()
