"""R1M cost model from measurement: images/s of each index build stage, extrapolated to R1M.

Measures, on this machine, the rate of each stage of building a RootSIFT + ASMK* index
(the ``rootsift-asmk-star`` preset) and extrapolates to R1M (1,001,001 images):

extraction
    RootSIFT of ``--extract-images`` images of a synthetic benchmark (``--data``, else one
    generated with :func:`d2r.datasets.synthetic.generate`), once by one process
    (:func:`d2r.pipeline.extraction.extract_to_store`) and once by ``--workers`` local Ray
    actors (:func:`d2r.distributed.run_extract_ray`, actor start and merge included,
    ``ray.init`` timed apart).  Each mode runs once (no repeats).
quantization
    :func:`d2r.encoding.codebook.quantize` of ``--quantize-descriptors`` of the extracted descriptors
    (tiled when fewer) to a ``--words`` codebook: a random sample of them, jittered and
    L2-normalised (no k-means: the cost depends on K and D only), ``mode="exact"`` and
    ``"approximate"`` (HNSW with d2r's default parameters; its one-off graph build is timed
    apart), with faiss's default
    threads and with one thread.  Descriptors/s become images/s by the measured
    descriptors/image.
aggregation
    :func:`d2r.encoding.aggregation.aggregate` (``asmk_star``, words given) of every extracted image.
index writing
    :class:`d2r.index.inverted.InvertedIndexWriter` of synthetic R1M-shaped ASMK* items
    (``synthetic_batch`` of ``benchmarks/index_scale.py``: ~600 words/image out of 65536,
    128-bit codes) for each of ``--index-images``, in ``--batch`` batches; batch generation
    is not timed.

Quantization, aggregation and index writing report the median of ``--repeat`` runs.

Extrapolation (no overlap between stages; image reads from a shared file system and all
transfers ignored): R1M seconds of a stage = 1,001,001 / its rate; one process = the sum.
An N-worker Ray cluster divides extraction, quantization and aggregation by N x the
per-worker rate (extraction: the Ray rate / ``--workers``, or the one-process rate with
``--no-ray``; quantization: the one-thread rate; aggregation is single-threaded numpy:
the one-process rate), while index writing stays on one driver at the rate measured at
the largest ``--index-images``.  The HNSW graph build is a one-off, left out of the totals.

Usage::

    python benchmarks/r1m_cost.py --data /tmp/synth-large --json r1m_cost.json
    python benchmarks/r1m_cost.py --data /tmp/synth-large --extract-images 20 --words 1024 \\
        --quantize-descriptors 2000 --index-images 500 1000 --repeat 1 --no-ray   # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from index_scale import synthetic_batch  # noqa: E402

R1M_IMAGES = 1_001_001


def median_s(fn, repeat: int) -> float:
    """Median wall seconds of ``repeat`` calls of ``fn``."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_extraction(args, work: Path) -> tuple[dict, list[np.ndarray]]:
    """Extraction rates, and the descriptors (float32) of every measured image."""
    from PIL import Image

    from d2r.config import load_config
    from d2r.datasets.synthetic import generate
    from d2r.io.feature_store import FeatureStore
    from d2r.pipeline.extraction import extract_to_store
    from d2r.pipeline.sources import ImageSource

    data = Path(args.data) if args.data else generate(
        work / "data", num_landmarks=min(8, args.extract_images), num_db_images=args.extract_images,
        num_distractors=0)
    full = ImageSource.from_dataset(data)
    n = min(args.extract_images, len(full))
    source = ImageSource.checked(full.names[:n], full.paths[:n], full.rotations[:n])
    sizes = np.array([Image.open(p).size for p in source.paths], float)
    config = load_config("rootsift-asmk-star")
    t0 = time.perf_counter()
    extract_to_store(config, source, work / "single", show_progress=False)
    single_s = time.perf_counter() - t0
    with FeatureStore.open(work / "single") as store:
        descriptors = [store.get(name).descriptors.astype(np.float32) for name in source.names]
    out = {"data": str(data), "images": n, "mean_width": sizes[:, 0].mean(),
           "mean_height": sizes[:, 1].mean(),
           "descriptors_per_image": sum(map(len, descriptors)) / n,
           "single_s": single_s, "single_img_per_s": n / single_s}
    if not args.no_ray:
        from d2r.distributed import init_ray, run_extract_ray

        t0 = time.perf_counter()
        ray = init_ray(None, num_cpus=args.workers, log_to_driver=False,
                       object_store_memory=512 << 20)
        init_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        run_extract_ray(config, source, work / "ray", num_workers=args.workers,
                        chunk_size=args.chunk, show_progress=False)
        ray_s = time.perf_counter() - t0
        ray.shutdown()
        with FeatureStore.open(work / "ray") as store:
            assert sorted(store.names()) == sorted(source.names), "Ray store misses images"
        out.update(ray_workers=args.workers, ray_init_s=init_s, ray_s=ray_s,
                   ray_img_per_s=n / ray_s)
    out["worker_img_per_s"] = (out["ray_img_per_s"] / args.workers if not args.no_ray
                               else out["single_img_per_s"])
    return out, descriptors


def bench_quantization(args, descriptors: list[np.ndarray]):
    """Quantization rates; also the codebook and each image's (approximate) words."""
    import faiss

    from d2r.encoding.codebook import Codebook, quantize
    from d2r.config import CodebookConfig
    from d2r.index.quantizer import options

    pool = np.concatenate(descriptors)
    rng = np.random.default_rng(args.seed)
    sample = pool[rng.choice(len(pool), args.words, replace=len(pool) < args.words)]
    sample += rng.normal(0.0, 0.01, sample.shape).astype(np.float32)  # distinct words
    codebook = Codebook(sample / np.linalg.norm(sample, axis=1, keepdims=True),
                        source="r1m_cost sample")
    x = np.ascontiguousarray(np.resize(pool, (args.quantize_descriptors, pool.shape[1])))
    hnsw = options(CodebookConfig(quantization="approximate"), args.words)  # d2r's defaults
    t0 = time.perf_counter()
    quantize(x[:1], codebook, **hnsw)  # builds and caches the HNSW graph
    out = {"words": args.words, "descriptors": len(x), "graph_build_s": time.perf_counter() - t0,
           "threads": faiss.omp_get_max_threads()}
    quantize(x[:1], codebook, mode="exact")
    for mode in ("exact", "approximate"):
        for threads in sorted({out["threads"], 1}, reverse=True):
            faiss.omp_set_num_threads(threads)
            try:
                seconds = median_s(lambda: quantize(x, codebook, **{**hnsw, "mode": mode}),
                                   args.repeat)
            finally:
                faiss.omp_set_num_threads(out["threads"])
            out[f"{mode}_{threads}t_desc_per_s"] = len(x) / seconds
    words = quantize(pool, codebook, **hnsw)[0]
    return out, codebook, np.split(words, np.cumsum(list(map(len, descriptors)))[:-1])


def bench_aggregation(args, descriptors, codebook, words) -> dict:
    from d2r.encoding.aggregation import aggregate

    items = [aggregate(d, codebook, "asmk_star", assignments=w) for d, w in zip(descriptors, words)]
    seconds = median_s(lambda: [aggregate(d, codebook, "asmk_star", assignments=w)
                                for d, w in zip(descriptors, words)], args.repeat)
    return {"images": len(descriptors), "img_per_s": len(descriptors) / seconds,
            "words_per_image": float(np.mean([len(item.words) for item in items]))}


def bench_index(args, work: Path) -> list[dict]:
    from d2r.index.inverted import InvertedIndexWriter

    out = []
    for size in args.index_images:
        times, postings = [], 0
        for r in range(args.repeat):
            rng = np.random.default_rng(args.seed + r)
            path, seconds = work / f"index-{size}", 0.0
            with InvertedIndexWriter(path, num_words=65_536, dim=128, binary=True) as writer:
                for lo in range(0, size, args.batch):
                    n = min(args.batch, size - lo)
                    batch = synthetic_batch(rng, n, num_words=65_536, words_per_image=600, dim=128)
                    t0 = time.perf_counter()
                    writer.add(batch, names=[f"img{i:07d}" for i in range(lo, lo + n)])
                    seconds += time.perf_counter() - t0
                postings = writer.num_postings
                t0 = time.perf_counter()
                writer.close()
                seconds += time.perf_counter() - t0
            times.append(seconds)
            shutil.rmtree(path)
        out.append({"images": size, "postings": postings, "img_per_s": size / statistics.median(times)})
    return out


def extrapolate(result: dict, cluster_workers: list[int]) -> dict:
    """Per-stage (one-process img/s, per-worker img/s or None for driver-only) and R1M hours."""
    ex, q = result["extraction"], result["quantization"]
    per_image = ex["descriptors_per_image"]
    top = f"{q['threads']}t"
    stages = {
        "extraction": (ex["single_img_per_s"], ex["worker_img_per_s"]),
        "quantization exact": (q[f"exact_{top}_desc_per_s"] / per_image,
                               q["exact_1t_desc_per_s"] / per_image),
        "quantization approximate": (q[f"approximate_{top}_desc_per_s"] / per_image,
                                     q["approximate_1t_desc_per_s"] / per_image),
        "aggregation": (result["aggregation"]["img_per_s"],) * 2,
        "index writing (driver)": (max(result["index"], key=lambda i: i["images"])["img_per_s"], None),
    }
    rows = {}
    for stage, (rate, worker) in stages.items():
        hours = {"1": R1M_IMAGES / rate / 3600}
        for n in cluster_workers:
            hours[str(n)] = R1M_IMAGES / (n * worker if worker else rate) / 3600
        rows[stage] = {"img_per_s": rate, "worker_img_per_s": worker, "r1m_hours": hours}
    for mode in ("exact", "approximate"):
        parts = ["extraction", f"quantization {mode}", "aggregation", "index writing (driver)"]
        rows[f"total ({mode} quantization)"] = {"r1m_hours": {
            key: sum(rows[p]["r1m_hours"][key] for p in parts) for key in rows["extraction"]["r1m_hours"]}}
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="synthetic benchmark directory (default: generate one)")
    parser.add_argument("--extract-images", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2, help="local Ray actors for extraction")
    parser.add_argument("--chunk", type=int, default=16, help="images per Ray task")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray extraction")
    parser.add_argument("--words", type=int, default=65_536, help="codebook size K")
    parser.add_argument("--quantize-descriptors", type=int, default=50_000)
    parser.add_argument("--index-images", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--batch", type=int, default=20_000, help="images per index add() batch")
    parser.add_argument("--cluster-workers", type=int, nargs="+", default=[8, 16, 64])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", help="parent of the scratch directory (default: system temp)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)

    result = {"config": vars(args), "cpus": os.cpu_count(), "load_start": os.getloadavg()}
    work = Path(tempfile.mkdtemp(prefix="d2r-r1m-cost-", dir=args.workdir))
    try:
        result["extraction"], descriptors = bench_extraction(args, work)
        result["quantization"], codebook, words = bench_quantization(args, descriptors)
        result["aggregation"] = bench_aggregation(args, descriptors, codebook, words)
        result["index"] = bench_index(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["load_end"] = os.getloadavg()
    result["extrapolation"] = rows = extrapolate(result, args.cluster_workers)

    ex, q = result["extraction"], result["quantization"]
    print(f"r1m_cost: {result['cpus']} CPUs, load average {result['load_start'][0]:.2f} at start, "
          f"{result['load_end'][0]:.2f} at end (1 min)")
    print(f"extraction: {ex['images']} images of {ex['data']}, mean {ex['mean_width']:.0f}x"
          f"{ex['mean_height']:.0f} px, {ex['descriptors_per_image']:.0f} descriptors/image; "
          f"one run per mode" + ("" if args.no_ray else
                                 f"; Ray {args.workers} actors, ray.init {ex['ray_init_s']:.1f} s apart"))
    print(f"quantization: K={q['words']}, {q['descriptors']} descriptors, faiss threads "
          f"{q['threads']} and 1; HNSW graph build {q['graph_build_s']:.1f} s (one-off, not in totals)")
    print(f"aggregation: asmk_star, {result['aggregation']['words_per_image']:.0f} words/image; "
          f"index writing: " + ", ".join(f"{i['images']} images {i['img_per_s']:.0f} img/s "
                                         f"({i['postings'] / i['images']:.0f} postings/image)"
                                         for i in result["index"]))
    print(f"medians of {args.repeat} runs (quantization, aggregation, index writing)\n")
    keys = ["1", *map(str, args.cluster_workers)]
    print(f"{'stage':32} {'img/s':>9} {'img/s/worker':>12} " + " ".join(
        f"{'R1M h, ' + ('1 proc' if k == '1' else k + ' wk'):>13}" for k in keys))
    for stage, row in rows.items():
        rate = f"{row['img_per_s']:9.1f}" if "img_per_s" in row else " " * 9
        worker = row.get("worker_img_per_s")
        worker = f"{worker:12.1f}" if worker else f"{'driver' if 'img_per_s' in row else '':>12}"
        print(f"{stage:32} {rate} {worker} " + " ".join(f"{row['r1m_hours'][k]:13.2f}" for k in keys))
    print(f"\nR1M = {R1M_IMAGES:,} images; hours are an EXTRAPOLATION from the rates above "
          f"(stages in sequence, no I/O or transfer costs; measured images are "
          f"{ex['mean_width']:.0f}x{ex['mean_height']:.0f} px, R1M images have up to 1024 px sides)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
