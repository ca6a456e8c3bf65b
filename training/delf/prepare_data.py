"""Google Landmarks CSVs + images (or the synthetic benchmark) → DELF training TFRecords.

Google Landmarks v2, clean subset (the reference recipe)::

    python -m training.delf.prepare_data --gld-clean-csv gldv2/train/train_clean.csv \
        --images gldv2/train --out DATA --validation-fraction 0.2 --num-shards 128 --workers 8

Google Landmarks v1 / full v2 (``id,url,landmark_id``)::

    python -m training.delf.prepare_data --gld-csv gld/train.csv --images gld/images --out DATA

Synthetic benchmark (its own train/val split from ``labels.csv``)::

    python -m training.delf.prepare_data --synthetic SYNTH --out DATA

Writes ``DATA/train-SSSSS-of-NNNNN.tfrecord``, ``DATA/validation-...``,
``DATA/relabeling.csv`` (``label,landmark_id,num_train,num_validation``),
``DATA/dataset.json`` (source, number of classes, counts, shards), and
``DATA/missing.txt`` / ``DATA/skipped.tsv`` listing ids without an image file and
unreadable images (both are left out and counted, never silently).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from training.delf import data as D

__all__ = ["DATASET_INFO", "load_dataset_info", "main", "prepare"]

logger = logging.getLogger(__name__)

DATASET_INFO = "dataset.json"


def prepare(
    out_dir: str | os.PathLike,
    *,
    gld_csv: str | None = None,
    gld_clean_csv: str | None = None,
    images: str | None = None,
    synthetic: str | None = None,
    validation_fraction: float | None = None,
    num_shards: int = 16,
    workers: int = 1,
    seed: int = 0,
    on_error: str = "skip",
    overwrite: bool = False,
) -> dict:
    """Build the TFRecords; returns the ``dataset.json`` contents.

    Exactly one source: ``gld_csv`` / ``gld_clean_csv`` (with ``images``), or
    ``synthetic``.  ``validation_fraction`` splits per class (default 0.2 for GLD;
    for the synthetic benchmark None keeps its ``labels.csv`` split).  Validation
    shards get ``max(1, num_shards // 8)`` files.
    """
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out}: output directory is not empty (use overwrite)")
    sources = [s for s in (gld_csv, gld_clean_csv, synthetic) if s]
    if len(sources) != 1:
        raise ValueError("give exactly one of gld_csv, gld_clean_csv or synthetic")
    missing: list[str] = []
    if synthetic:
        items = D.read_synthetic(synthetic)
        source = {"kind": "synthetic", "path": str(synthetic)}
        if validation_fraction is not None or any(it.split is None for it in items):
            items = D.split_per_class(items, validation_fraction=validation_fraction or 0.0, seed=seed)
    else:
        if not images:
            raise ValueError("GLD CSVs need images (the image directory)")
        items = D.read_gld_clean_csv(gld_clean_csv) if gld_clean_csv else D.read_gld_csv(gld_csv)
        source = {"kind": "gld_clean" if gld_clean_csv else "gld", "csv": str(gld_clean_csv or gld_csv),
                  "images": str(images)}
        items, missing = D.locate_images(items, images)
        if missing:
            logger.warning("%d of %d images not found in %s (listed in missing.txt)",
                           len(missing), len(missing) + len(items), images)
        if not items:
            raise FileNotFoundError(f"none of the CSV's images was found in {images}")
        items = D.split_per_class(
            items, validation_fraction=0.2 if validation_fraction is None else validation_fraction, seed=seed
        )
    items, mapping = D.relabel(items)
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("*.tfrecord"), out / "missing.txt", out / "skipped.tsv", out / DATASET_INFO]:
        old.unlink(missing_ok=True)
    if missing:
        (out / "missing.txt").write_text("".join(f"{m}\n" for m in missing))
    train = [it for it in items if it.split == D.TRAIN]
    val = [it for it in items if it.split == D.VALIDATION]
    shards, counts, skipped = {}, {}, []
    for prefix, subset, n in ((D.TRAIN, train, num_shards), (D.VALIDATION, val, max(1, num_shards // 8))):
        if not subset:
            shards[prefix], counts[prefix] = [], 0
            continue
        paths, written, bad = D.write_shards(
            subset, out, prefix, num_shards=n, seed=seed, workers=workers, on_error=on_error
        )
        shards[prefix] = [p.name for p in paths]
        counts[prefix] = written
        skipped += bad
    if skipped:
        from d2r.io.images import write_skipped

        write_skipped(skipped, out / "skipped.tsv")
        logger.warning("%d unreadable images left out (listed in skipped.tsv)", len(skipped))
    per_class = {s: Counter(it.label for it in items if it.split == s) for s in (D.TRAIN, D.VALIDATION)}
    with open(out / "relabeling.csv", "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["label", "landmark_id", "num_train", "num_validation"])
        for landmark, label in sorted(mapping.items(), key=lambda kv: kv[1]):
            writer.writerow([label, landmark, per_class[D.TRAIN][label], per_class[D.VALIDATION][label]])
    info = {
        "format": "d2r-delf-tfrecords",
        "version": 1,
        "source": source,
        "num_classes": len(mapping),
        "num_train": counts[D.TRAIN],
        "num_validation": counts[D.VALIDATION],
        "num_missing": len(missing),
        "num_skipped": len(skipped),
        "validation_fraction": validation_fraction,
        "seed": seed,
        "shards": shards,
    }
    tmp = out / (DATASET_INFO + ".tmp")
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    os.replace(tmp, out / DATASET_INFO)
    logger.info("wrote %s: %d classes, %d train / %d validation images",
                out, info["num_classes"], info["num_train"], info["num_validation"])
    return info


def load_dataset_info(directory: str | os.PathLike) -> dict:
    """``dataset.json`` of a directory written by :func:`prepare`."""
    path = Path(directory) / DATASET_INFO
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise FileNotFoundError(f"{path}: cannot read ({exc}); was the directory written by prepare_data?") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m training.delf.prepare_data",
        description="Google Landmarks / synthetic benchmark → DELF training TFRecords.",
    )
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--gld-csv", help="GLD v1/v2 train.csv (id,url,landmark_id)")
    src.add_argument("--gld-clean-csv", help="GLDv2 train_clean.csv (landmark_id,images)")
    src.add_argument("--synthetic", help="synthetic benchmark directory (labels.csv + jpg/)")
    parser.add_argument("--images", help="image directory for the GLD CSVs (<id>.jpg or a/b/c/<id>.jpg)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--validation-fraction", type=float, default=None,
                        help="per-class validation fraction (GLD default 0.2; synthetic: keep labels.csv split)")
    parser.add_argument("--num-shards", type=int, default=16, help="training shards (default 16)")
    parser.add_argument("--workers", type=int, default=1, help="parallel shard writers (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--on-error", choices=("skip", "raise"), default="skip",
                        help="unreadable images: skip and list them (default) or stop")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    info = prepare(
        args.out, gld_csv=args.gld_csv, gld_clean_csv=args.gld_clean_csv, images=args.images,
        synthetic=args.synthetic, validation_fraction=args.validation_fraction,
        num_shards=args.num_shards, workers=args.workers, seed=args.seed, on_error=args.on_error,
        overwrite=args.overwrite,
    )
    print(f"{args.out}: {info['num_classes']} classes, {info['num_train']} train, "
          f"{info['num_validation']} validation images")
    return info


if __name__ == "__main__":
    main()
