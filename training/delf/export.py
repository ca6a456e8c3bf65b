"""Export a trained DELF as a SavedModel with the reference signature, plus PCA.

::

    python -m training.delf.export --checkpoint RUN --out MODEL \\
        [--pca-from-dataset DIR] [--pca-out MODEL/pca] [--scales 0.5,1.0] [--score-threshold 0]

``--checkpoint`` is a training run directory (its latest checkpoint), its
``checkpoints/`` folder or one checkpoint prefix (``RUN/checkpoints/ckpt-N``).

``MODEL`` is written by :func:`d2r.features.delf.export_delf_savedmodel`: its
``serving_default`` signature takes ``input_image`` (H, W, 3) uint8,
``input_scales``, ``input_max_feature_num``, ``input_abs_thres`` and returns
``boxes``, ``features``, ``scales``, ``scores``, so
:meth:`d2r.features.delf.DelfExtractor.from_savedmodel` (and the DELF reference's TF2
extractor) loads it.  ``MODEL/d2r_delf.json`` records the run, checkpoint, step,
architecture and receptive field.  A ResNet-50 network is also saved as Keras
weights, ``MODEL/delf.weights.h5`` (``features.delf.model_format: keras``).

With ``--pca-from-dataset DIR`` (a synthetic / revisitop dataset directory — its
``jpg/`` — or any image directory), raw descriptors are extracted with the exported
model from up to ``--pca-max-images`` images and PCA is learned on them
(:func:`d2r.features.pca.learn_pca`, all components kept) and written with
``PCA.save`` to ``--pca-out`` (default ``MODEL/pca``).  Then::

    python -m d2r.build_index --dataset-dir DATA --out INDEX --config delf-asmk-star \\
        --set features.delf.model_path=MODEL --set features.delf.pca_path=MODEL/pca
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

__all__ = ["EXPORT_INFO", "export_model", "learn_pca_from_images", "main", "restore_network"]

logger = logging.getLogger(__name__)

EXPORT_INFO = "d2r_delf.json"
KERAS_WEIGHTS = "delf.weights.h5"


def restore_network(checkpoint: str | os.PathLike):
    """(network, run config, checkpoint prefix, step) restored from a run / checkpoint."""
    import tensorflow as tf

    from training.delf.model import DelfNetwork
    from training.delf.train import latest_checkpoint, load_run_config

    run_dir, prefix = latest_checkpoint(checkpoint)
    config = load_run_config(run_dir)
    if config.data.num_classes is None:
        raise ValueError(f"{run_dir}/config.yaml lacks data.num_classes")
    # ImageNet weights are overwritten by the checkpoint: do not need the file any more.
    network = DelfNetwork(replace(config.model, backbone_weights=None), config.data.num_classes)
    status = tf.train.Checkpoint(weights=network.weights_by_name()).restore(prefix)
    status.expect_partial()
    status.assert_existing_objects_matched()
    try:
        step = int(tf.train.load_variable(prefix, "step/.ATTRIBUTES/VARIABLE_VALUE"))
    except (ValueError, tf.errors.NotFoundError):
        step = -1
    logger.info("restored %s (step %d)", prefix, step)
    return network, config, prefix, step


def export_model(checkpoint: str | os.PathLike, out: str | os.PathLike) -> dict:
    """Write the SavedModel (and Keras weights for ResNet-50) to ``out``; returns the export record."""
    from d2r.features.delf import export_delf_savedmodel
    from training.delf.config import train_config_to_dict
    from training.delf.model import describe

    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out}: export path already exists")
    network, config, prefix, step = restore_network(checkpoint)
    model = network.inference_model()
    export_delf_savedmodel(model, out, receptive_field=network.receptive_field)
    info = {
        "format": "d2r-delf-export",
        "version": 1,
        "checkpoint": str(prefix),
        "step": step,
        "network": describe(network),
        "model": train_config_to_dict(config)["model"],
        "keras_weights": None,
    }
    if config.model.backbone == "resnet50":
        model.save_weights(str(out / KERAS_WEIGHTS))
        info["keras_weights"] = KERAS_WEIGHTS
    (out / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n")
    logger.info("exported %s (step %d) to %s", prefix, step, out)
    return info


def _dataset_images(directory: str | os.PathLike) -> list[Path]:
    from d2r.io.images import list_images

    root = Path(directory)
    if not root.is_dir():
        raise NotADirectoryError(f"--pca-from-dataset: {root} is not a directory")
    folder = root / "jpg" if (root / "jpg").is_dir() else root
    names = list_images(folder)
    if not names:
        raise ValueError(f"--pca-from-dataset: no images in {folder}")
    return [folder / n for n in names]


def learn_pca_from_images(
    model_dir: str | os.PathLike,
    images: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    scales: Sequence[float] = (0.25, 0.3536, 0.5, 0.7071, 1.0, 1.4142, 2.0),
    score_threshold: float = 100.0,
    max_features: int = 1000,
    max_image_side: int | None = 1024,
    max_images: int = 1000,
    seed: int = 0,
):
    """Extract raw descriptors with the SavedModel in ``model_dir`` from (up to
    ``max_images``, chosen at random) ``images``, learn PCA, save it to ``out``; returns the PCA."""
    from d2r.features.delf import DelfExtractor
    from d2r.features.pca import learn_pca
    from d2r.io.images import ImageError, load_image

    if max_images < 1:
        raise ValueError(f"max_images must be >= 1, got {max_images}")
    paths = [Path(p) for p in images]
    if len(paths) > max_images:
        pick = np.sort(np.random.default_rng(seed).choice(len(paths), max_images, replace=False))
        paths = [paths[i] for i in pick]
    extractor = DelfExtractor.from_savedmodel(
        model_dir, scales=tuple(scales), score_threshold=score_threshold, max_features=max_features
    )
    chunks, skipped = [], 0
    for i, path in enumerate(paths, 1):
        try:
            image = load_image(path, max_side=max_image_side)
        except ImageError as exc:
            logger.warning("skipping %s: %s", path, exc)
            skipped += 1
            continue
        chunks.append(extractor.extract_raw(image).descriptors)
        if i % 100 == 0:
            logger.info("PCA: extracted %d / %d images", i, len(paths))
    descriptors = np.concatenate(chunks) if chunks else np.zeros((0, extractor.raw_dim), np.float32)
    if len(descriptors) < 2:
        raise ValueError(
            f"only {len(descriptors)} descriptors from {len(paths)} images: lower --score-threshold "
            f"({score_threshold}) or give more images"
        )
    pca = learn_pca(descriptors)
    pca.save(out)
    logger.info("learned PCA on %d descriptors of %d images (%d skipped) -> %s",
                len(descriptors), len(paths) - skipped, skipped, out)
    return pca


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.replace("[", "").replace("]", "").split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers separated by commas, got {text!r}")
    return values


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m training.delf.export",
        description="Export a trained DELF as a SavedModel (reference signature) and learn its PCA.",
    )
    parser.add_argument("--checkpoint", required=True, help="run directory, its checkpoints/ or a checkpoint prefix")
    parser.add_argument("--out", required=True, help="SavedModel directory to write (must not exist)")
    parser.add_argument("--pca-from-dataset", help="dataset / image directory to learn PCA on")
    parser.add_argument("--pca-out", help="PCA directory (default OUT/pca)")
    parser.add_argument("--pca-max-images", type=int, default=1000)
    parser.add_argument("--scales", type=_floats, default=(0.25, 0.3536, 0.5, 0.7071, 1.0, 1.4142, 2.0),
                        help="pyramid scales for the PCA features, e.g. 0.5,1.0")
    parser.add_argument("--score-threshold", type=float, default=100.0,
                        help="attention threshold for the PCA features (default 100, the reference's)")
    parser.add_argument("--max-features", type=int, default=1000)
    parser.add_argument("--max-image-side", type=int, default=1024)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    info = export_model(args.checkpoint, args.out)
    if args.pca_from_dataset:
        pca_out = Path(args.pca_out) if args.pca_out else Path(args.out) / "pca"
        pca = learn_pca_from_images(
            args.out, _dataset_images(args.pca_from_dataset), pca_out, scales=args.scales,
            score_threshold=args.score_threshold, max_features=args.max_features,
            max_image_side=args.max_image_side, max_images=args.pca_max_images,
        )
        info["pca"] = {"path": str(pca_out), "num_samples": pca.num_samples, "input_dim": pca.input_dim,
                       "dataset": str(args.pca_from_dataset), "scales": list(args.scales),
                       "score_threshold": args.score_threshold}
        (Path(args.out) / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n")
        print(f"{args.out}: step {info['step']}; use --set features.delf.model_path={args.out} "
              f"--set features.delf.pca_path={pca_out}")
    else:
        print(f"{args.out}: step {info['step']}; use --set features.delf.model_path={args.out}")
    return info


if __name__ == "__main__":
    main()
