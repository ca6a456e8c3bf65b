"""DELF local features: multi-scale attention keypoints with L2 -> PCA -> L2 descriptors.

Pipeline (the DELF reference's ``ExtractKeypointDescriptor`` + ``DelfFeaturePostProcessing``):

1. optional downscale so the longer side is at most ``max_image_side``;
2. for every pyramid scale ``s`` (default 0.25 ... 2.0, seven levels): resize the
   normalized image to ``round(H s) x round(W s)`` (bilinear), run the network, keep
   the cells whose attention is ``>= score_threshold`` (default 100), place each at
   its receptive-field centre divided by ``s``, with scale ``1 / s``;
3. over all levels keep the ``max_features`` (default 1000) highest attention scores,
   best first (the reference's NMS with IoU 1.0, i.e. a top-k);
4. descriptors: L2-normalize, then with PCA: project to ``pca_dim`` (default 128),
   optionally whiten, L2-normalize again.

Images whose side is below 10 pixels (after step 1) give zero features, as in the
reference.  Locations are (x, y) pixels of the input image (pixel centres at
integers); ``scales`` are the reference's ``1 / s`` (the ``max_image_side`` resize is
not folded in, so stored scales match features extracted by the reference).

Models (steps 2-3 run inside TensorFlow, behind one signature):

* the package's Keras model (:mod:`d2r.features.delf_model`), in memory or from Keras
  weights (:meth:`DelfExtractor.from_model`, :meth:`DelfExtractor.from_weights`);
* SavedModels with the reference signature -- the released TF1 models such as
  ``delf_gld_20190411/model`` (looked up by tensor name) and TF2 SavedModels written
  by :func:`export_delf_savedmodel` (``serving_default`` signature):

  ==========================  ==========================================================
  ``input_image``             (H, W, 3) uint8 RGB
  ``input_scales``            (S,) float32 pyramid scales
  ``input_max_feature_num``   () int32
  ``input_abs_thres``         () float32 attention threshold
  ``boxes``                   (N, 4) float32 receptive boxes (ymin, xmin, ymax, xmax) in
                              input-image pixels (already divided by the scale)
  ``features``                (N, D) float32 raw descriptors
  ``scales``                  (N,) float32, 1 / pyramid scale
  ``scores``                  (N, 1) float32 attention, descending
  ==========================  ==========================================================

* TF-Hub DELF modules (``google/delf/1``) from a local directory
  (:meth:`DelfExtractor.from_hub`), whose ``default`` signature takes ``image``
  (H, W, 3) float32 in [0, 1], ``image_scales``, ``score_threshold``,
  ``max_feature_num`` and returns ``locations`` (y, x), ``descriptors`` (already
  PCA-reduced), ``scales`` and ``attention``.

TensorFlow is imported only when a model is built or loaded.

One module over 500 lines on purpose: one extractor, whose three model sources
share the image pyramid, the attention selection and the PCA/whitening path that
makes its features equal the reference's (its network is in ``delf_model.py``).
"""

from __future__ import annotations

import hashlib
import logging
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal, NamedTuple, Optional, Sequence

import numpy as np

from d2r.checks import check_positive_int
from d2r.config import feature_section
from d2r.features.base import BaseExtractor
from d2r.features.pca import PCA, postprocess_descriptors
from d2r.features.receptive_field import ReceptiveField, centers_from_yxyx
from d2r.features.registry import register_extractor
from d2r.types import LocalFeatures

__all__ = [
    "DelfConfig",
    "DEFAULT_SCALES",
    "MIN_IMAGE_SIDE",
    "SIGNATURE_INPUTS",
    "SIGNATURE_OUTPUTS",
    "RawDelf",
    "DelfExtractor",
    "make_delf_module",
    "export_delf_savedmodel",
    "load_delf",
]

logger = logging.getLogger(__name__)

DEFAULT_SCALES = (0.25, 0.3536, 0.5, 0.7071, 1.0, 1.4142, 2.0)
MIN_IMAGE_SIDE = 10
SIGNATURE_INPUTS = ("input_image", "input_scales", "input_max_feature_num", "input_abs_thres")
SIGNATURE_OUTPUTS = ("boxes", "features", "scales", "scores")
HUB_INPUTS = ("image", "image_scales", "score_threshold", "max_feature_num")
_MODEL_FORMATS = ("auto", "tf1_savedmodel", "tf2_savedmodel", "hub", "keras")


class RawDelf(NamedTuple):
    """Model output before descriptor post-processing.

    locations (N, 2) float32 (x, y) input-image pixels; descriptors (N, D) float32;
    scales (N,) float32; scores (N,) float32.
    """

    locations: np.ndarray
    descriptors: np.ndarray
    scales: np.ndarray
    scores: np.ndarray


# --------------------------------------------------------------------------- TF graph


def make_delf_module(model, *, receptive_field: ReceptiveField | None = None):
    """Wrap a DELF Keras model in a ``tf.Module`` whose ``extract`` has the reference signature.

    ``model`` maps (1, h, w, 3) normalized pixels to ``[attention (1, h', w', 1),
    features (1, h', w', C)]`` (see :func:`~d2r.features.delf_model.build_delf_model`);
    ``receptive_field`` locates its cells (default: the package model's).
    ``module.extract(input_image=..., input_scales=..., input_max_feature_num=...,
    input_abs_thres=...)`` returns the dict described in this module's docstring.
    """
    import tensorflow as tf

    from d2r.features.delf_model import DELF_RECEPTIVE_FIELD, normalize_pixels

    rf = DELF_RECEPTIVE_FIELD if receptive_field is None else receptive_field
    channels = int(model.outputs[1].shape[-1])
    size, stride, padding = (float(v) for v in (rf.size, rf.stride, rf.padding))

    def level(i, arrays, image, image_hw, input_scales, input_abs_thres):
        """Cells of pyramid level ``i`` whose attention passes the threshold."""
        scale = input_scales[i]
        new_hw = tf.maximum(tf.cast(tf.round(image_hw * scale), tf.int32), 1)
        attention, features = model(tf.image.resize(image, new_hw), training=False)
        width = tf.cast(tf.shape(features)[2], tf.int64)
        attention = tf.reshape(attention, [-1])
        keep = tf.where(attention >= input_abs_thres)[:, 0]
        rows = tf.cast(keep // width, tf.float32)
        cols = tf.cast(keep % width, tf.float32)
        y1, x1 = stride * rows - padding, stride * cols - padding
        selected = tf.gather(attention, keep)
        values = (
            tf.stack([y1, x1, y1 + size - 1.0, x1 + size - 1.0], axis=1) / scale,
            tf.gather(tf.reshape(features, [-1, channels]), keep),
            tf.ones_like(selected) / scale,
            selected,
        )
        return tuple(a.write(i, v) for a, v in zip(arrays, values))

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None, 3], tf.uint8, name="input_image"),
            tf.TensorSpec([None], tf.float32, name="input_scales"),
            tf.TensorSpec([], tf.int32, name="input_max_feature_num"),
            tf.TensorSpec([], tf.float32, name="input_abs_thres"),
        ],
        autograph=False,
    )
    def extract(input_image, input_scales, input_max_feature_num, input_abs_thres):
        image = normalize_pixels(input_image)[tf.newaxis]
        image_hw = tf.cast(tf.shape(input_image)[:2], tf.float32)
        num_scales = tf.shape(input_scales)[0]
        arrays = tuple(tf.TensorArray(tf.float32, size=num_scales, infer_shape=False) for _ in range(4))
        _, arrays = tf.while_loop(
            lambda i, _: i < num_scales,
            lambda i, a: (i + 1, level(i, a, image, image_hw, input_scales, input_abs_thres)),
            (tf.constant(0), arrays),
        )
        boxes = tf.reshape(arrays[0].concat(), [-1, 4])
        features = tf.reshape(arrays[1].concat(), [-1, channels])
        scales = tf.reshape(arrays[2].concat(), [-1])
        scores = tf.reshape(arrays[3].concat(), [-1])
        k = tf.minimum(tf.maximum(input_max_feature_num, 0), tf.shape(scores)[0])
        top = tf.math.top_k(scores, k=k, sorted=True).indices
        return {
            "boxes": tf.gather(boxes, top),
            "features": tf.gather(features, top),
            "scales": tf.gather(scales, top),
            "scores": tf.gather(scores, top)[:, tf.newaxis],
        }

    module = tf.Module(name="delf_extractor")
    module.model = model
    module.extract = extract
    return module


def export_delf_savedmodel(
    model, path: str | os.PathLike, *, receptive_field: ReceptiveField | None = None
) -> Path:
    """Save ``model`` as a TF2 SavedModel whose ``serving_default`` has the reference signature.

    The result loads with :meth:`DelfExtractor.from_savedmodel` (and with the reference's
    TF2 extractor, ``is_tf2_exported: true``).  Refuses to overwrite an existing ``path``.
    """
    import tensorflow as tf

    out = Path(path)
    if out.exists():
        raise FileExistsError(f"{out}: export path already exists")
    module = make_delf_module(model, receptive_field=receptive_field)
    tf.saved_model.save(module, str(out), signatures={"serving_default": module.extract})
    logger.info("exported DELF SavedModel to %s", out)
    return out


# --------------------------------------------------------------------------- runners


class _Runner(ABC):
    """Runs one model: ``runner(image, scales, max_features, threshold) -> RawDelf``.

    ``fn`` is the model's signature function; ``source`` describes the model for
    :meth:`DelfExtractor.config`; ``owner`` keeps the loaded SavedModel (or module)
    alive; ``model`` is the Keras model when there is one (its weights are
    fingerprinted for provenance).  ``raw_dim`` None: found by running the model once.
    """

    def __init__(
        self, fn: Callable[..., dict], raw_dim: int | None, source: dict[str, Any], *, owner=None, model=None
    ) -> None:
        self._fn = fn
        self.source = source
        self.owner = owner
        self.model = model
        self.raw_dim = raw_dim if raw_dim is not None else _probe_dim(self)

    @abstractmethod
    def __call__(self, image: np.ndarray, scales: Sequence[float], max_features: int, threshold: float) -> RawDelf:
        """Raw features of a (H, W, 3) uint8 image."""


class _SignatureRunner(_Runner):
    """The reference signature: keyword inputs ``input_*``, dict outputs with boxes."""

    def __call__(self, image: np.ndarray, scales: Sequence[float], max_features: int, threshold: float) -> RawDelf:
        import tensorflow as tf

        out = self._fn(
            input_image=tf.constant(image, tf.uint8),
            input_scales=tf.constant(scales, tf.float32),
            input_max_feature_num=tf.constant(max_features, tf.int32),
            input_abs_thres=tf.constant(threshold, tf.float32),
        )
        boxes = np.asarray(out["boxes"], dtype=np.float32).reshape(-1, 4)
        return RawDelf(
            locations=centers_from_yxyx(boxes),
            descriptors=_rows(out["features"], boxes.shape[0], self.source),
            scales=np.asarray(out["scales"], dtype=np.float32).reshape(-1),
            scores=np.asarray(out["scores"], dtype=np.float32).reshape(-1),
        )


class _HubRunner(_Runner):
    """A TF-Hub DELF signature: float image in [0, 1], (y, x) locations."""

    def __call__(self, image: np.ndarray, scales: Sequence[float], max_features: int, threshold: float) -> RawDelf:
        import tensorflow as tf

        out = self._fn(
            image=tf.constant(image.astype(np.float32) / 255.0),
            image_scales=tf.constant(scales, tf.float32),
            score_threshold=tf.constant(threshold, tf.float32),
            max_feature_num=tf.constant(max_features, tf.int32),
        )
        yx = np.asarray(out["locations"], dtype=np.float32).reshape(-1, 2)
        return RawDelf(
            locations=np.ascontiguousarray(yx[:, ::-1]),
            descriptors=_rows(out["descriptors"], yx.shape[0], self.source),
            scales=np.asarray(out["scales"], dtype=np.float32).reshape(-1),
            scores=np.asarray(out["attention"], dtype=np.float32).reshape(-1),
        )


def _rows(values, n: int, source: dict[str, Any]) -> np.ndarray:
    """Model descriptors as (n, D) float32, or a ValueError naming the model."""
    arr = np.asarray(values, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[0] != n:
        raise ValueError(f"model {source} returned descriptors of shape {arr.shape} for {n} keypoints")
    return arr


def _probe_dim(runner) -> int:
    """Descriptor dimension of a model whose output shape is not static: run it once."""
    probe = np.full((64, 64, 3), 128, np.uint8)
    raw = runner(probe, (1.0,), 1, -np.finfo(np.float32).max)
    if raw.descriptors.shape[0] == 0:
        raise ValueError(f"cannot determine the descriptor dimension of {runner.source}")
    return int(raw.descriptors.shape[1])


def _static_dim(shape) -> int | None:
    dim = shape[-1] if shape is not None and len(shape) else None
    return None if dim is None else int(dim)


def _signature_names(fn) -> tuple[set[str], set[str]]:
    _, kwargs = fn.structured_input_signature
    outputs = fn.structured_outputs
    return set(kwargs), set(outputs) if isinstance(outputs, dict) else set()


def _savedmodel_runner(path: Path, mode: str) -> _SignatureRunner:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    signatures = dict(getattr(loaded, "signatures", {}) or {})
    if mode in ("auto", "tf2_savedmodel"):
        for key, fn in signatures.items():
            inputs, outputs = _signature_names(fn)
            if set(SIGNATURE_INPUTS) <= inputs and set(SIGNATURE_OUTPUTS) <= outputs:
                dim = _static_dim(fn.structured_outputs["features"].shape)
                source = {"format": "tf2_savedmodel", "path": str(path), "signature": key}
                return _SignatureRunner(fn, dim, source, owner=loaded)
        if mode == "tf2_savedmodel":
            raise ValueError(
                f"{path}: no signature with inputs {SIGNATURE_INPUTS} and outputs {SIGNATURE_OUTPUTS} "
                f"(signatures: {sorted(signatures)})"
            )
    if not hasattr(loaded, "prune"):
        raise ValueError(
            f"{path}: a TF2 SavedModel without the DELF signature (signatures: {sorted(signatures)})"
        )
    feed_names = ("input_image", "input_scales", "input_abs_thres", "input_max_feature_num")
    try:
        pruned = loaded.prune(
            feeds=[f"{n}:0" for n in feed_names], fetches=[f"{n}:0" for n in SIGNATURE_OUTPUTS]
        )
    except (KeyError, ValueError) as exc:
        raise ValueError(
            f"{path}: TF1 SavedModel lacks the DELF tensors {feed_names} -> {SIGNATURE_OUTPUTS} ({exc})"
        ) from exc
    dtypes = [t.dtype for t in pruned.inputs[: len(feed_names)]]

    def call(**inputs):
        args = [tf.cast(inputs[n], dt) for n, dt in zip(feed_names, dtypes)]
        return dict(zip(SIGNATURE_OUTPUTS, pruned(*args)))

    source = {"format": "tf1_savedmodel", "path": str(path)}
    return _SignatureRunner(call, _static_dim(pruned.outputs[1].shape), source, owner=loaded)


def _hub_runner(path: Path, signature: str) -> _HubRunner:
    import tensorflow_hub as hub

    loaded = hub.load(str(path))
    signatures = dict(getattr(loaded, "signatures", {}) or {})
    if signature not in signatures:
        raise ValueError(f"{path}: TF-Hub module has no signature {signature!r} (has {sorted(signatures)})")
    fn = signatures[signature]
    inputs, outputs = _signature_names(fn)
    missing = (set(HUB_INPUTS) - inputs) | ({"locations", "descriptors", "scales", "attention"} - outputs)
    if missing:
        raise ValueError(f"{path}: TF-Hub signature {signature!r} lacks DELF inputs/outputs {sorted(missing)}")
    source = {"format": "hub", "path": str(path), "signature": signature}
    return _HubRunner(fn, _static_dim(fn.structured_outputs["descriptors"].shape), source, owner=loaded)


# --------------------------------------------------------------------------- extractor


def _weights_sha256(model) -> str:
    h = hashlib.sha256()
    for w in model.weights:
        h.update(np.asarray(w.numpy()).tobytes())
    return h.hexdigest()


@feature_section("delf")
@dataclass
class DelfConfig:
    """DELF extraction (Noh et al.), field names after the reference's DelfConfig."""

    model_path: Optional[str] = None
    """SavedModel / TF-Hub directory / Keras weights; None means no DELF model."""
    model_format: Literal["auto", "tf1_savedmodel", "tf2_savedmodel", "hub", "keras"] = "auto"
    scales: tuple[float, ...] = DEFAULT_SCALES
    score_threshold: float = 100.0
    """Absolute attention threshold (reference: ``abs_thres``)."""
    max_features: int = 1000
    use_pca: bool = True
    pca_dim: int = 128
    use_whitening: bool = False
    pca_path: Optional[str] = None
    """Directory with learned PCA parameters (ours or the reference's datum files)."""

    RANGES: ClassVar[dict[str, str]] = {
        "scales": "(0, 16]",
        "score_threshold": "[0, inf)",
        "max_features": "[1, inf)",
        "pca_dim": "[1, 2048]",
    }


@register_extractor
class DelfExtractor(BaseExtractor):
    """DELF extractor; implements :class:`~d2r.features.base.LocalFeatureExtractor`.

    Build it with :meth:`from_model`, :meth:`from_weights`, :meth:`from_savedmodel`,
    :meth:`from_hub` or :func:`load_delf`.  Keyword parameters shared by all of them:

    Args:
        scales: image pyramid scales.
        score_threshold: minimum attention of a kept feature (reference ``abs_thres``).
        max_features: keep at most this many features, highest attention first.
        pca: PCA parameters applied to the raw descriptors (e.g. the reference's
            ``delf_gld_20190411/pca`` via :func:`~d2r.features.pca.load_pca`), or None.
        pca_dim: output dimension with PCA (default ``min(128, components)``).
        whiten: divide PCA projections by the square root of their variances.
        max_image_side: downscale larger images first (locations still refer to the input).
    """

    def __init__(
        self,
        runner,
        *,
        scales: Sequence[float] = DEFAULT_SCALES,
        score_threshold: float = 100.0,
        max_features: int = 1000,
        pca: PCA | None = None,
        pca_dim: int | None = None,
        whiten: bool = False,
        max_image_side: int | None = None,
    ) -> None:
        super().__init__(max_image_side=max_image_side)
        scales = tuple(float(s) for s in scales)
        if not scales or not all(np.isfinite(s) and s > 0 for s in scales):
            raise ValueError(f"scales must be a non-empty sequence of positive numbers, got {scales!r}")
        check_positive_int("max_features", max_features)
        if not np.isfinite(score_threshold):
            raise ValueError(f"score_threshold must be finite, got {score_threshold!r}")
        self._runner = runner
        self.scales = scales
        self.score_threshold = float(score_threshold)
        self.max_features = int(max_features)
        self.raw_dim = int(runner.raw_dim)
        if pca is None and (pca_dim is not None or whiten):
            raise ValueError("pca_dim / whiten need PCA parameters (pca=...)")
        if pca is not None and pca.input_dim != self.raw_dim:
            raise ValueError(
                f"PCA takes {pca.input_dim}-D descriptors but the model {runner.source} gives {self.raw_dim}-D"
            )
        self.pca = pca
        self.whiten = bool(whiten)
        self.pca_dim = None
        if pca is not None:
            default = min(128, pca.num_components)
            self.pca_dim = pca.check_dim(default if pca_dim is None else pca_dim, whiten=self.whiten)

    # -- constructors -------------------------------------------------------

    @classmethod
    def from_model(
        cls, model, *, receptive_field: ReceptiveField | None = None, weights_path: str | None = None, **params
    ) -> "DelfExtractor":
        """Extractor around an in-memory DELF Keras model (see :func:`make_delf_module`).

        ``weights_path`` is only recorded in :meth:`config` (where the weights came from).
        """
        from d2r.features.delf_model import DELF_RECEPTIVE_FIELD

        rf = DELF_RECEPTIVE_FIELD if receptive_field is None else receptive_field
        module = make_delf_module(model, receptive_field=rf)
        source = {"format": "keras", "model": model.name, "path": weights_path, "receptive_field": rf.to_dict()}
        runner = _SignatureRunner(
            module.extract, int(model.outputs[1].shape[-1]), source, owner=module, model=model
        )
        return cls(runner, **params)

    @classmethod
    def from_weights(
        cls, path: str | os.PathLike, *, use_autoencoder: bool = False, reduced_dimension: int = 128,
        attention_channels: int = 512, **params,
    ) -> "DelfExtractor":
        """Extractor around the package model with Keras weights loaded from ``path``."""
        from d2r.features.delf_model import load_delf_weights

        model = load_delf_weights(
            path, use_autoencoder=use_autoencoder, reduced_dimension=reduced_dimension,
            attention_channels=attention_channels,
        )
        return cls.from_model(model, weights_path=str(Path(path)), **params)

    @classmethod
    def from_savedmodel(
        cls, path: str | os.PathLike, *, model_format: str = "auto", **params
    ) -> "DelfExtractor":
        """Extractor around a SavedModel with the reference signature (TF1 or TF2).

        ``model_format``: ``"auto"`` (a matching TF2 signature, else TF1 tensor names),
        ``"tf2_savedmodel"`` or ``"tf1_savedmodel"``.
        """
        if model_format not in ("auto", "tf1_savedmodel", "tf2_savedmodel"):
            raise ValueError(f"model_format must be auto, tf1_savedmodel or tf2_savedmodel, got {model_format!r}")
        directory = _existing_dir(path, "saved_model.pb")
        return cls(_savedmodel_runner(directory, model_format), **params)

    @classmethod
    def from_hub(cls, path: str | os.PathLike, *, signature: str = "default", **params) -> "DelfExtractor":
        """Extractor around a TF-Hub DELF module stored in the local directory ``path``.

        The module applies its own PCA (40-D for ``google/delf/1``); ``pca`` here would
        be applied on top of that.
        """
        directory = _existing_dir(path, "saved_model.pb")
        return cls(_hub_runner(directory, signature), **params)

    name = "delf"
    extra = "tf"
    output_type = LocalFeatures
    record_type = "delf"
    method_key = "aggregation.method"
    """The config key naming the retrieval method that takes this extractor's output."""

    @classmethod
    def from_config(cls, config: DelfConfig, **params) -> "DelfExtractor":
        """Extractor described by a :class:`DelfConfig` (``features.delf``).

        ``params`` add keyword parameters the config does not hold (``max_image_side``,
        and ``use_autoencoder`` / ``reduced_dimension`` for Keras weights).
        """
        from d2r.features.pca import load_pca

        if not config.model_path:
            raise ValueError("features.delf.model_path is not set: DELF needs a model (SavedModel, TF-Hub or Keras weights)")
        pca = None
        if config.use_pca:
            if not config.pca_path:
                raise ValueError(
                    "features.delf.use_pca is true but features.delf.pca_path is not set "
                    "(set use_pca: false for models that reduce the dimension themselves, "
                    "e.g. TF-Hub modules or autoencoder models)"
                )
            pca = load_pca(config.pca_path)
        return load_delf(
            config.model_path,
            model_format=config.model_format,
            scales=tuple(config.scales),
            score_threshold=config.score_threshold,
            max_features=config.max_features,
            pca=pca,
            pca_dim=config.pca_dim if pca is not None else None,
            whiten=bool(config.use_whitening) if pca is not None else False,
            **params,
        )

    def replace(self, **params) -> "DelfExtractor":
        """A new extractor sharing this one's loaded model, with some keyword parameters changed.

        ``params`` are the constructor's (``scales``, ``score_threshold``, ``pca``, ...);
        the others keep their current values.
        """
        current = {
            "scales": self.scales,
            "score_threshold": self.score_threshold,
            "max_features": self.max_features,
            "pca": self.pca,
            "pca_dim": self.pca_dim,
            "whiten": self.whiten,
            "max_image_side": self.max_image_side,
        }
        unknown = set(params) - set(current)
        if unknown:
            raise TypeError(f"unknown DelfExtractor parameters: {sorted(unknown)}")
        if "pca" in params:
            current["pca_dim"] = None
            if params["pca"] is None:
                current["whiten"] = False
        return DelfExtractor(self._runner, **{**current, **params})

    # -- LocalFeatureExtractor ----------------------------------------------

    @property
    def dim(self) -> int:
        return self.raw_dim if self.pca_dim is None else self.pca_dim

    def config(self) -> dict[str, Any]:
        source = dict(self._runner.source)
        if self._runner.model is not None:
            source["weights_sha256"] = _weights_sha256(self._runner.model)
        return {
            "type": "delf",
            "dim": self.dim,
            "raw_dim": self.raw_dim,
            "source": source,
            "scales": list(self.scales),
            "score_threshold": self.score_threshold,
            "max_features": self.max_features,
            "max_image_side": self.max_image_side,
            "min_image_side": MIN_IMAGE_SIDE,
            "pca": None
            if self.pca is None
            else {"dim": self.pca_dim, "whiten": self.whiten, "sha256": self.pca.fingerprint()},
        }

    def extract_raw(self, image: np.ndarray) -> RawDelf:
        """Model output for a whole (H, W, 3) uint8 image, before descriptor post-processing."""
        return self._runner(image, self.scales, self.max_features, self.score_threshold)

    def _extract_full(self, image: np.ndarray) -> LocalFeatures:
        size = (int(image.shape[1]), int(image.shape[0]))
        if min(image.shape[:2]) < MIN_IMAGE_SIDE:
            return LocalFeatures.empty(self.dim, size)
        raw = self.extract_raw(image)
        order = np.argsort(-raw.scores, kind="stable")[: self.max_features]
        desc = postprocess_descriptors(raw.descriptors[order], self.pca, dim=self.pca_dim, whiten=self.whiten)
        return LocalFeatures(
            locations=raw.locations[order],
            descriptors=desc.reshape(len(order), self.dim),
            scales=raw.scales[order],
            scores=raw.scores[order],
            image_size=size,
        )


def _existing_dir(path: str | os.PathLike, marker: str) -> Path:
    directory = Path(path)
    if not (directory / marker).is_file():
        raise FileNotFoundError(f"{directory}: not a model directory (no {marker})")
    return directory


def load_delf(
    path: str | os.PathLike, *, model_format: str = "auto", use_autoencoder: bool = False,
    reduced_dimension: int = 128, **params,
) -> DelfExtractor:
    """Load a DELF extractor from ``path``, detecting the format unless ``model_format`` names it.

    ``model_format``: ``auto``, ``tf1_savedmodel``, ``tf2_savedmodel``, ``hub`` (a
    directory with ``tfhub_module.pb``) or ``keras`` (a ``.weights.h5`` file; the
    architecture comes from ``use_autoencoder`` / ``reduced_dimension``).  ``params``
    are :class:`DelfExtractor`'s keyword parameters.
    """
    if model_format not in _MODEL_FORMATS:
        raise ValueError(f"model_format must be one of {_MODEL_FORMATS}, got {model_format!r}")
    p = Path(path)
    if model_format == "auto":
        if p.is_file():
            model_format = "keras"
        elif (p / "tfhub_module.pb").is_file():
            model_format = "hub"
        elif (p / "saved_model.pb").is_file():
            model_format = "auto_savedmodel"
        else:
            raise FileNotFoundError(f"{p}: neither a Keras weights file nor a SavedModel / TF-Hub directory")
    if model_format == "keras":
        return DelfExtractor.from_weights(p, use_autoencoder=use_autoencoder, reduced_dimension=reduced_dimension, **params)
    if model_format == "hub":
        return DelfExtractor.from_hub(p, **params)
    return DelfExtractor.from_savedmodel(
        p, model_format="auto" if model_format == "auto_savedmodel" else model_format, **params
    )
