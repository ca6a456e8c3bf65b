"""Scale-out figures for d2r.distributed: extraction on Ray, sharded search, an R1M estimate.

Three parts, each a subcommand (``all`` runs a, b and c with their defaults):

``extract`` (a)
    RootSIFT extraction of ``--images`` synthetic benchmark images (generated from
    scikit-image photographs, about 340x510 px) by one process
    (:func:`d2r.pipeline.extraction.extract_to_store`) and by ``--workers`` local Ray actors
    (:func:`d2r.distributed.run_extract_ray`, merge included; ``ray.init`` itself is
    timed apart).  Both stores are checked to hold the same features.

``search`` (b)
    A synthetic ASMK*-style inverted index of ``--images`` images (``--words`` unique
    visual words per image out of ``--num-words``, random 128-bit codes) written
    straight as CSR arrays, searched as one memory-mapped index and as ``--shards``
    shard indexes (:func:`d2r.distributed.split_index`) served by Ray actors
    (:class:`d2r.distributed.ShardedIndex`).  Reports per-query latency (one query
    per call, and a batch), array bytes and actor RSS per shard, and checks that the
    sharded top-k equals the single index's (ids and scores).  1M images at 600
    words is ~600M postings / ~12 GB; this machine (2 cores, ~20 GB shared) runs
    100k-200k, and the per-shard figures scale linearly in images per shard.

``estimate`` (c)
    Wall time and cost of DELF extraction of R1M (1,001,001 images) on N GPUs from a
    per-image cost: ``--gpu-s-per-image`` if measured on a GPU, else derived from the
    network's multiply-adds (7 scales, 1024 px, random weights, counted from the traced
    model as in ``benchmarks/extract_speed.py``) at an assumed achieved GPU rate
    (``--gpu-tflops``).  ``--measure-cpu`` also times one DELF extraction on this CPU.

    python benchmarks/distributed_scale.py extract --images 128 --workers 2
    python benchmarks/distributed_scale.py search --images 100000 --shards 2 4
    python benchmarks/distributed_scale.py estimate --measure-cpu
    python benchmarks/distributed_scale.py all --json figures.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

R1M_IMAGES = 1_001_001


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _ray_init(num_cpus: int):
    import ray

    t = time.perf_counter()
    if not ray.is_initialized():
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                 object_store_memory=512 << 20)
    return ray, time.perf_counter() - t


# ----------------------------------------------------------------------------- (a)


def bench_extract(args) -> dict:
    from d2r.pipeline.sources import ImageSource
    from d2r.config import load_config
    from d2r.datasets.synthetic import generate
    from d2r.distributed import run_extract_ray
    from d2r.pipeline.extraction import extract_to_store
    from d2r.io.feature_store import FeatureStore

    work = Path(tempfile.mkdtemp(prefix="d2r-dist-extract-"))
    try:
        t = time.perf_counter()
        generate(work / "data", seed=0, num_landmarks=8, num_db_images=args.images,
                 num_distractors=args.images // 4, queries_per_landmark=1)
        gen_s = time.perf_counter() - t
        source = ImageSource.from_dataset(work / "data")
        config = load_config("rootsift-asmk-star")
        t = time.perf_counter()
        extract_to_store(config, source, work / "single", show_progress=False)
        single_s = time.perf_counter() - t
        ray, init_s = _ray_init(args.workers)
        t = time.perf_counter()
        run_extract_ray(config, source, work / "ray", num_workers=args.workers,
                        chunk_size=args.chunk, show_progress=False)
        ray_s = time.perf_counter() - t
        with FeatureStore.open(work / "single") as a, FeatureStore.open(work / "ray") as b:
            same = sorted(a.names()) == sorted(b.names()) and all(
                np.array_equal(a.get(n).descriptors, b.get(n).descriptors) for n in a.names())
        out = {
            "images": len(source), "generate_s": gen_s, "cpus": os.cpu_count(),
            "single_s": single_s, "single_img_per_s": len(source) / single_s,
            "ray_workers": args.workers, "ray_chunk": args.chunk, "ray_init_s": init_s,
            "ray_s": ray_s, "ray_img_per_s": len(source) / ray_s,
            "speedup": single_s / ray_s, "identical_features": bool(same),
        }
        print(f"(a) RootSIFT extraction of {len(source)} images (~340x510 px), "
              f"{os.cpu_count()} CPUs")
        print(f"    single process : {single_s:6.1f} s  {out['single_img_per_s']:6.1f} img/s")
        print(f"    Ray, {args.workers} actors : {ray_s:6.1f} s  {out['ray_img_per_s']:6.1f} img/s"
              f"  (x{out['speedup']:.2f}; actor start + merge included; ray.init {init_s:.1f} s "
              f"apart)  identical features: {same}")
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ----------------------------------------------------------------------------- (b)


def _synthetic_inverted(path: Path, *, num_images: int, words: int, num_words: int,
                        dim: int, seed: int) -> dict:
    """Write an inverted index of random binary items directly as CSR arrays."""
    from d2r.index.storage import IndexWriter

    rng = np.random.default_rng(seed)
    width = (dim + 7) // 8
    block = max(1, 20_000_000 // max(words, 1))
    word_parts, length_parts = [], []
    for lo in range(0, num_images, block):
        n = min(block, num_images - lo)
        w = np.sort(rng.integers(0, num_words, (n, words), dtype=np.int32), axis=1)
        keep = np.ones(w.shape, bool)
        keep[:, 1:] = w[:, 1:] != w[:, :-1]
        word_parts.append(w[keep].astype(np.uint16 if num_words <= 1 << 16 else np.int32))
        length_parts.append(keep.sum(axis=1).astype(np.int32))
        del w, keep
    flat_words = np.concatenate(word_parts)
    del word_parts
    lengths = np.concatenate(length_parts)
    order = np.argsort(flat_words, kind="stable")
    offsets = np.zeros(num_words + 1, np.int64)
    np.cumsum(np.bincount(flat_words, minlength=num_words), out=offsets[1:])
    del flat_words
    total = int(offsets[-1])
    image_of = np.repeat(np.arange(num_images, dtype=np.int32), lengths)
    with IndexWriter(path, kind="inverted") as writer:
        writer.put("offsets", offsets)
        ids = writer.create("image_ids", (total,), np.int32)
        step = 50_000_000
        for lo in range(0, total, step):
            ids[lo:lo + step] = image_of[order[lo:lo + step]]
        del order, image_of
        codes = writer.create("codes", (total, width), np.uint8)
        for lo in range(0, total, step):
            hi = min(total, lo + step)
            codes[lo:hi] = rng.integers(0, 256, (hi - lo, width), dtype=np.uint8)
        writer.put("item_lengths", lengths)
        meta = {"num_words": num_words, "dim": dim, "binary": True, "vector_dtype": "uint8",
                "num_items": num_images, "num_postings": total}
        writer.commit(meta=meta, names=[f"img{i:07d}" for i in range(num_images)])
    return {"postings": total, "bytes": total * (4 + width) + 8 * (num_words + 1) + 4 * num_images}


def _queries(rng, count: int, *, words: int, num_words: int, dim: int):
    from d2r.types import AggregatedImage

    out = []
    for _ in range(count):
        w = np.unique(rng.integers(0, num_words, words)).astype(np.int32)
        out.append(AggregatedImage(w, rng.integers(0, 256, (len(w), (dim + 7) // 8), np.uint8),
                                   dim, True))
    return out


def bench_search(args) -> dict:
    from d2r.distributed import ShardedIndex, split_index
    from d2r.index.inverted import InvertedIndex

    work = Path(args.workdir or tempfile.mkdtemp(prefix="d2r-dist-search-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t = time.perf_counter()
        built = _synthetic_inverted(work / "full", num_images=args.images, words=args.words,
                                    num_words=args.num_words, dim=128, seed=0)
        build_s = time.perf_counter() - t
        rng = np.random.default_rng(1)
        queries = _queries(rng, args.queries, words=args.words, num_words=args.num_words, dim=128)
        rss0 = _rss()
        index = InvertedIndex.load(work / "full", mmap=True)
        single = index.search(queries[:2], k=args.k)  # warm the page cache
        t = time.perf_counter()
        for q in queries:
            index.search([q], k=args.k)
        single_ms = (time.perf_counter() - t) / len(queries) * 1e3
        t = time.perf_counter()
        single = index.search(queries, k=args.k)
        single_batch_ms = (time.perf_counter() - t) / len(queries) * 1e3
        single_rss = _rss() - rss0
        out = {"images": args.images, "words_per_image": args.words, "num_words": args.num_words,
               "postings": built["postings"], "index_bytes": built["bytes"], "build_s": build_s,
               "queries": len(queries), "k": args.k, "cpus": os.cpu_count(),
               "single": {"ms_per_query": single_ms, "ms_per_query_batch": single_batch_ms,
                          "driver_rss_growth_bytes": single_rss},
               "sharded": []}
        print(f"(b) synthetic ASMK* index: {args.images} images x ~{args.words} words of "
              f"{args.num_words}, 128-bit codes: {built['postings'] / 1e6:.1f}M postings, "
              f"{built['bytes'] / 2**30:.2f} GiB (written in {build_s:.0f} s); "
              f"{len(queries)} queries, top-{args.k}, {os.cpu_count()} CPUs")
        print(f"    single index (mmap): {single_ms:7.1f} ms/query one by one, "
              f"{single_batch_ms:7.1f} ms/query in a batch; driver RSS +{single_rss / 2**20:.0f} MiB")
        del index
        ray, init_s = _ray_init(args.cpus)
        out["ray_init_s"] = init_s
        for shards in args.shards:
            t = time.perf_counter()
            split_index(work / "full", num_shards=shards, out=work / f"shards{shards}",
                        overwrite=True)
            split_s = time.perf_counter() - t
            t = time.perf_counter()
            with ShardedIndex(work / f"shards{shards}", num_cpus_per_shard=args.cpus / shards) as sh:
                got = sh.search(queries[:2], k=args.k)  # actors up, pages warm
                start_s = time.perf_counter() - t
                t = time.perf_counter()
                for q in queries:
                    sh.search([q], k=args.k)
                ms = (time.perf_counter() - t) / len(queries) * 1e3
                t = time.perf_counter()
                got = sh.search(queries, k=args.k)
                batch_ms = (time.perf_counter() - t) / len(queries) * 1e3
                stats = sh.stats()
            same_ids = bool(np.array_equal(got.ids, single.ids))
            same_scores = bool(np.array_equal(got.scores, single.scores))
            row = {"shards": shards, "split_s": split_s, "start_s": start_s, "ms_per_query": ms,
                   "ms_per_query_batch": batch_ms, "identical_ids": same_ids,
                   "identical_scores": same_scores,
                   "per_shard": [{"images": s["num_images"], "nbytes": s["nbytes"],
                                  "rss_bytes": s["rss_bytes"]} for s in stats]}
            out["sharded"].append(row)
            print(f"    {shards} shards on Ray : {ms:7.1f} ms/query one by one, {batch_ms:7.1f} "
                  f"ms/query in a batch; identical ids {same_ids}, scores {same_scores}; "
                  f"split {split_s:.0f} s, actors up {start_s:.1f} s")
            for i, s in enumerate(stats):
                print(f"        shard {i}: {s['num_images']} images, arrays "
                      f"{s['nbytes'] / 2**20:7.0f} MiB, actor RSS {s['rss_bytes'] / 2**20:6.0f} MiB")
            shutil.rmtree(work / f"shards{shards}", ignore_errors=True)
        return out
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


# ----------------------------------------------------------------------------- (c)


def _delf_costs(max_side: int, measure_cpu: bool) -> dict:
    """GMAC of the DELF network over the 7-scale pyramid (and one CPU timing when asked)."""
    import keras

    from d2r.features.delf import DEFAULT_SCALES, DelfExtractor
    from d2r.features.delf_model import build_delf_model
    from d2r.features.pca import learn_pca

    spec = importlib.util.spec_from_file_location(
        "extract_speed", Path(__file__).with_name("extract_speed.py"))
    extract_speed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(extract_speed)
    image = extract_speed._test_image(max_side)
    height, width = image.shape[:2]
    keras.utils.set_random_seed(0)
    model = build_delf_model()
    levels = [(max(1, round(height * s)), max(1, round(width * s))) for s in DEFAULT_SCALES]
    macs = sum(extract_speed._conv_macs(model, h, w) for h, w in levels)
    out = {"image": [width, height], "gmacs": macs / 1e9, "scales": list(DEFAULT_SCALES)}
    if measure_cpu:
        rng = np.random.default_rng(0)
        pca = learn_pca(rng.normal(size=(4096, 1024)).astype(np.float32), dim=128)
        delf = DelfExtractor.from_model(model, score_threshold=0.0, max_features=1000, pca=pca,
                                        pca_dim=128)
        delf.extract(image)
        t = time.perf_counter()
        delf.extract(image)
        out["cpu_s_per_image"] = time.perf_counter() - t
    return out


def bench_estimate(args) -> dict:
    costs = _delf_costs(args.max_side, args.measure_cpu)
    gflop = 2 * costs["gmacs"]
    rows = []
    if args.gpu_s_per_image:
        per_image = {"measured": args.gpu_s_per_image}
    else:
        per_image = {f"{r:g} TFLOP/s achieved": gflop / (r * 1e3) + args.overhead_s
                     for r in args.gpu_tflops}
    for label, s in per_image.items():
        for gpus in args.gpus:
            hours = R1M_IMAGES * s / gpus / 3600
            rows.append({"per_image": label, "s_per_image": s, "gpus": gpus, "wall_hours": hours,
                         "gpu_hours": hours * gpus, "usd": hours * gpus * args.gpu_hour_usd})
    out = {"delf": costs, "gflop_per_image": gflop, "overhead_s": args.overhead_s,
           "gpu_hour_usd": args.gpu_hour_usd, "rows": rows, "images": R1M_IMAGES}
    w, h = costs["image"]
    print(f"(c) R1M DELF extraction estimate: {R1M_IMAGES} images, {w}x{h}, 7 scales: "
          f"{costs['gmacs']:.0f} GMAC = {gflop:.0f} GFLOP per image"
          + (f"; this CPU: {costs['cpu_s_per_image']:.1f} s/image"
             f" = {R1M_IMAGES * costs['cpu_s_per_image'] / 86400 / 365:.2f} CPU-years"
             if "cpu_s_per_image" in costs else ""))
    print(f"    per-image GPU time = GFLOP / achieved rate + {args.overhead_s} s "
          f"(decode, resize, top-k, PCA, write); ${args.gpu_hour_usd}/GPU-hour")
    print("    | per-image cost | s/image | GPUs | wall time | GPU-hours | cost |")
    print("    |---|---|---|---|---|---|")
    for r in rows:
        print(f"    | {r['per_image']} | {r['s_per_image']:.3f} | {r['gpus']} | "
              f"{r['wall_hours']:.1f} h | {r['gpu_hours']:.0f} | ${r['usd']:.0f} |")
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="part", required=True)
    ext = sub.add_parser("extract", help="(a) extraction: one process vs Ray actors")
    ext.add_argument("--images", type=int, default=128, help="database images (+25%% distractors)")
    ext.add_argument("--workers", type=int, default=2)
    ext.add_argument("--chunk", type=int, default=16)
    se = sub.add_parser("search", help="(b) sharded search on a synthetic index")
    se.add_argument("--images", type=int, default=100_000)
    se.add_argument("--words", type=int, default=600, help="visual words drawn per image")
    se.add_argument("--num-words", type=int, default=65536)
    se.add_argument("--shards", type=int, nargs="+", default=[2, 4])
    se.add_argument("--queries", type=int, default=20)
    se.add_argument("--k", type=int, default=100)
    se.add_argument("--cpus", type=int, default=2, help="Ray CPUs (shared by the shard actors)")
    se.add_argument("--workdir", help="where the index is written (default: a temp dir)")
    se.add_argument("--keep", action="store_true", help="keep the written index")
    es = sub.add_parser("estimate", help="(c) R1M DELF extraction time and cost on N GPUs")
    es.add_argument("--max-side", type=int, default=1024)
    es.add_argument("--measure-cpu", action="store_true", help="time one DELF extraction here")
    es.add_argument("--gpu-s-per-image", type=float, help="measured GPU seconds per image")
    es.add_argument("--gpu-tflops", type=float, nargs="+", default=[10.0, 30.0, 100.0],
                    help="assumed achieved GPU TFLOP/s (without a measurement)")
    es.add_argument("--overhead-s", type=float, default=0.03, help="CPU work per image, overlapped poorly")
    es.add_argument("--gpus", type=int, nargs="+", default=[1, 8, 32, 64])
    es.add_argument("--gpu-hour-usd", type=float, default=2.0)
    al = sub.add_parser("all", help="a, b (100k images) and c with defaults")
    for p in (ext, se, es, al):
        p.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    if args.part == "all":
        figures = {}
        for part in ("extract", "search", "estimate"):
            figures[part] = main([part])
        result = figures
    else:
        result = {"extract": bench_extract, "search": bench_search,
                  "estimate": bench_estimate}[args.part](args)
    if getattr(args, "json", None):
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
    sys.exit(0)
