"""Local feature extraction speed: DELF (random weights) and RootSIFT, against this CPU's matmul rate.

DELF runs the package model (ResNet-50 to conv4 + attention head) with **random
weights** -- timing does not depend on the weights -- over the full 7-scale pyramid
(0.25 ... 2.0) of an image whose longer side is ``--max-side`` (1024), threshold 0 so
every cell competes for the top 1000, then L2 -> PCA(1024 -> 128) -> L2.  RootSIFT is
OpenCV SIFT (up to 1000 keypoints) + Hellinger normalization on the same image.

The DELF time is compared with the network's work: the multiply-adds of every conv
layer at every pyramid level, read from the ``Conv2D`` ops of the model traced at each
level's exact size, against the float32 GFLOP/s of a large ``np.matmul`` and
``tf.matmul`` measured in the same run (achieved fraction of that rate).

Every time is the best of several calls after a warm-up call, so a machine shared
with other work still gives usable figures.

    python benchmarks/extract_speed.py               # best of 3, 1024 px
    python benchmarks/extract_speed.py --images 1 --max-side 512    # quick run
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from skimage import data  # noqa: E402

from d2r.features.delf import DEFAULT_SCALES, DelfExtractor  # noqa: E402
from d2r.features.pca import learn_pca  # noqa: E402
from d2r.features.rootsift import RootSiftExtractor  # noqa: E402


def _test_image(max_side: int) -> np.ndarray:
    """scikit-image's 'coffee' (400x600) resized so the longer side is ``max_side``."""
    img = Image.fromarray(data.coffee())
    w, h = img.size
    f = max_side / max(w, h)
    return np.asarray(img.resize((round(w * f), round(h * f)), Image.Resampling.BILINEAR))


def _matmul_gflops(n: int, repeats: int) -> tuple[float, float]:
    """Best-of-``repeats`` float32 GFLOP/s of an (n, n) @ (n, n) product in numpy and TensorFlow."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    a, b = rng.random((n, n), np.float32), rng.random((n, n), np.float32)
    ta, tb = tf.constant(a), tf.constant(b)
    np_best = _best_time(lambda: np.matmul(a, b), repeats)
    tf_best = _best_time(lambda: tf.matmul(ta, tb).numpy(), repeats)
    return 2 * n**3 / np_best / 1e9, 2 * n**3 / tf_best / 1e9


def _conv_macs(model, height: int, width: int) -> int:
    """Multiply-adds of all Conv2D ops of ``model`` on a (1, height, width, 3) input."""
    import tensorflow as tf

    fn = tf.function(lambda x: model(x, training=False)).get_concrete_function(
        tf.TensorSpec([1, height, width, 3], tf.float32)
    )
    total = 0
    for op in fn.graph.get_operations():
        if op.type == "Conv2D":
            kh, kw, cin, _ = op.inputs[1].shape
            _, oh, ow, cout = op.outputs[0].shape
            total += oh * ow * cout * kh * kw * cin
    return int(total)


def _best_time(fn, repeats: int) -> float:
    """Shortest of ``repeats`` timed calls after one untimed call (robust to a busy machine)."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=3, help="timed DELF extractions (best is kept)")
    parser.add_argument("--max-side", type=int, default=1024)
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)

    import keras
    import tensorflow as tf

    from d2r.features.delf_model import build_delf_model

    image = _test_image(args.max_side)
    height, width = image.shape[:2]
    keras.utils.set_random_seed(0)
    model = build_delf_model()
    rng = np.random.default_rng(0)
    pca = learn_pca(rng.normal(size=(4096, 1024)).astype(np.float32), dim=128)
    delf = DelfExtractor.from_model(model, score_threshold=0.0, max_features=1000, pca=pca, pca_dim=128)
    sift = RootSiftExtractor(max_features=1000)

    t = time.perf_counter()
    n_delf = len(delf.extract(image))  # traces the graph
    warmup = time.perf_counter() - t
    delf_s = _best_time(lambda: delf.extract(image), args.images)
    sift_s = _best_time(lambda: sift.extract(image), max(args.images, 5))
    n_sift = len(sift.extract(image))

    levels = [(max(1, round(height * s)), max(1, round(width * s))) for s in DEFAULT_SCALES]
    macs = [_conv_macs(model, h, w) for h, w in levels]
    np_rate, tf_rate = _matmul_gflops(args.matmul_size, repeats=5)
    peak = max(np_rate, tf_rate)
    achieved = 2 * sum(macs) / delf_s / 1e9

    figures = {
        "machine": {"cpu_count": os.cpu_count(), "tensorflow": tf.__version__, "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads()},
        "image": [width, height],
        "delf": {
            "s_per_image": delf_s, "images_per_s": 1 / delf_s, "first_call_s": warmup, "features": n_delf,
            "scales": list(DEFAULT_SCALES), "weights": "random",
            "gmacs_per_level": [m / 1e9 for m in macs], "gmacs_total": sum(macs) / 1e9,
            "achieved_gflops": achieved, "fraction_of_matmul_rate": achieved / peak,
        },
        "rootsift": {"s_per_image": sift_s, "images_per_s": 1 / sift_s, "features": n_sift},
        "matmul_gflops": {"numpy": np_rate, "tensorflow": tf_rate, "n": args.matmul_size},
        "delf_over_rootsift_time": delf_s / sift_s,
    }
    print(f"image {width}x{height}, best of {args.images} timed extractions, {os.cpu_count()} CPUs")
    print(f"DELF (random weights, 7 scales): {delf_s:.2f} s/image = {1 / delf_s:.3f} images/s, "
          f"{n_delf} features, first call (trace) {warmup:.1f} s")
    print(f"  conv work {sum(macs) / 1e9:.1f} GMAC (per level: "
          + ", ".join(f"{h}x{w} {m / 1e9:.2f}" for (h, w), m in zip(levels, macs)) + ")")
    print(f"  achieved {achieved:.1f} GFLOP/s = {achieved / peak:.0%} of the measured matmul rate")
    print(f"RootSIFT: {sift_s * 1000:.0f} ms/image = {1 / sift_s:.1f} images/s, {n_sift} features")
    print(f"matmul {args.matmul_size}^3 float32: numpy {np_rate:.1f} GFLOP/s, tf {tf_rate:.1f} GFLOP/s")
    print(f"DELF / RootSIFT time ratio: {delf_s / sift_s:.0f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    return figures


if __name__ == "__main__":
    main()
