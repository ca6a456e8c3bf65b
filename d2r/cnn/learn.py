"""Learn the post-processing of CNN global descriptors on another data set (the library
behind ``d2r learn``, whose help describes the outputs): PCA-whitening of MAC / R-MAC
vectors, the PFA selection of multi-resolution descriptors, or the local PCA and region
whitening of regional second-order pooling.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import numpy as np

from d2r.config import Config
from d2r.errors import InputError
from d2r.cnn.extractor import make_global_extractor
from d2r.cnn.pfa import learn_pfa
from d2r.cnn.rmac import mac_descriptor, rmac_training_vectors
from d2r.cnn.whitening import learn_whitening
from d2r.io.images import iter_images
from d2r.progress import track

__all__ = ["learn"]

logger = logging.getLogger("d2r.cnn.learn")


_CELLS_PER_IMAGE = 256


def learn(config: Config, source: Any, out: str | Path, *,
          dim: Optional[int] = None, pfa_dim: Optional[int] = None,
          reduction_dim: int = 128) -> Path:
    """Learn whitening (``mac`` / ``rmac``), PFA (``multires``, ``pfa_dim``) or the local
    reduction + region whitening (``regional``) into ``out``, from the images of ``source``
    (an :class:`~d2r.pipeline.sources.ImageSource`: its ``paths`` and ``rotation(i)``)."""
    cnn = config.features.cnn
    if cnn.method not in ("mac", "rmac", "multires", "regional"):
        raise InputError(f"features.cnn.method={cnn.method!r} has nothing to learn")
    if cnn.method == "multires" and pfa_dim is None:
        raise InputError("multires descriptors learn a PFA selection: give --pfa DIM")
    plain = replace(cnn, whitening_path=None, pfa_path=None, reduction_path=None, cam=False)
    if cnn.method == "regional":
        return _learn_regional(config, source, Path(out), plain, dim=dim, reduction_dim=reduction_dim)
    describer = make_global_extractor(plain).describer
    rows = []
    for loaded in _images(config, source):
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


def _images(config: Config, source: Any):
    """The decoded images of ``source`` turned upright (unreadable ones skipped), with a progress bar."""
    rotation = {path: source.rotation(i) for i, path in enumerate(source.paths)}
    images = iter_images(source.paths, max_side=config.images.max_side,
                         max_pixels=config.images.max_pixels, on_error="skip")
    for path, loaded in track(images, total=len(source), desc="learn", unit="img"):
        yield loaded.rotated(rotation[path])


def _learn_regional(config: Config, source: Any, out: Path, plain, *,
                    dim: Optional[int], reduction_dim: int) -> Path:
    """Pass 1: PCA of sampled local features -> ``out/reduction``; pass 2: region whitening -> ``out``."""
    extractor = make_global_extractor(plain)
    describer = extractor.describer
    rng = np.random.default_rng(config.features.cnn.seed)
    cells = []
    for loaded in _images(config, source):
        amap = next(iter(describer.maps(loaded.pixels).values()))[0]
        flat = amap.reshape(-1, amap.shape[2])
        cells.append(flat[rng.permutation(flat.shape[0])[:_CELLS_PER_IMAGE]])
    if not cells:
        raise InputError(f"none of the {len(source)} images could be read")
    local = np.concatenate(cells)
    reduction = learn_whitening(local, dim=min(reduction_dim, local.shape[1]), whiten=False)
    reduction.save(out / "reduction")
    logger.info("local PCA to %d from %d cells of %d images -> %s", reduction.dim, len(local),
                len(cells), out / "reduction")
    describer.reduction = reduction
    regions = np.concatenate([describer.describe_rows(loaded.pixels)
                              for loaded in _images(config, source)])
    learn_whitening(regions, dim=dim).save(out)
    logger.info("region whitening from %d regions -> %s", len(regions), out)
    return out
