"""Learn the post-processing of CNN global descriptors on another data set.

``python -m d2r.global_.learn --dataset-dir OTHER --config rmac-vgg16 --out W``
learns the PCA-whitening of MAC / R-MAC vectors (the R-MAC paper learns it on
Paris for Oxford and vice versa), or with ``--pfa DIM`` the Principal Feature
Analysis selection of multi-resolution descriptors, from the database images
of ``OTHER``.  Use the result with ``--set features.cnn.whitening_path=W`` (or
``features.cnn.pfa_path=W/pfa.json``).
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from tqdm import tqdm

from d2r import cli
from d2r.config import Config
from d2r.global_.extractor import make_global_extractor
from d2r.global_.pfa import learn_pfa
from d2r.global_.rmac import mac_descriptor, rmac_training_vectors
from d2r.global_.whitening import learn_whitening
from d2r.io.images import iter_images

__all__ = ["learn", "main"]

logger = logging.getLogger(__name__)


def learn(config: Config, source: cli.ImageSource, out: str | Path, *,
          dim: Optional[int] = None, pfa_dim: Optional[int] = None) -> Path:
    """Learn whitening (``mac`` / ``rmac``) or PFA (``multires``, ``pfa_dim``) into ``out``."""
    cnn = config.features.cnn
    if cnn.method not in ("mac", "rmac", "multires"):
        raise ValueError(f"features.cnn.method={cnn.method!r} has nothing to learn")
    if cnn.method == "multires" and pfa_dim is None:
        raise ValueError("multires descriptors learn a PFA selection: give pfa_dim")
    describer = make_global_extractor(replace(cnn, whitening_path=None, pfa_path=None)).describer
    images = iter_images(source.paths, max_side=config.images.max_side,
                         max_pixels=config.images.max_pixels, on_error="skip")
    rows = []
    for _, loaded in tqdm(images, total=len(source), desc="learn", unit="img", disable=None):
        if cnn.method == "multires":
            rows.append(describer.describe(loaded.pixels)[None])
            continue
        amap = next(iter(describer.maps(loaded.pixels).values()))[0]
        rows.append(rmac_training_vectors([amap], levels=cnn.levels) if cnn.method == "rmac"
                    else mac_descriptor(amap)[None])
    vectors = np.concatenate(rows).astype(np.float32)
    out = Path(out)
    if cnn.method == "multires":
        out.mkdir(parents=True, exist_ok=True)
        target = out / "pfa.json"
        learn_pfa(vectors, dim=pfa_dim).save(target)
    else:
        target = out
        learn_whitening(vectors, dim=dim).save(target)
    logger.info("learned from %d vectors of %d images -> %s", len(vectors), len(rows), target)
    return target


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m d2r.global_.learn", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_source_args(parser)
    parser.add_argument("--out", required=True, metavar="DIR")
    parser.add_argument("--dim", type=int, help="whitening output dimension (default: all)")
    parser.add_argument("--pfa", type=int, metavar="DIM", help="multires: PFA target dimension")
    cli.add_config_args(parser, default_preset="rmac-vgg16")
    cli.add_common_args(parser)
    args = cli.parse(parser, argv)
    target = learn(cli.config_from_args(args), cli.source_from_args(args), args.out,
                   dim=args.dim, pfa_dim=args.pfa)
    print(f"learned -> {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
