"""CNN backbones for the global baselines: VGG16, ResNet-50, ResNet-101 conv layers (TensorFlow / Keras).

TensorFlow and Keras are imported when a :class:`Backbone` is built, not when this
module is imported.  Nothing is downloaded: the Keras architectures are built with
``weights=None`` and weights come only from a local file (``model.save_weights``
output or the Keras-applications ``.h5`` files).  Without a file the weights are
random (for tests and shape checks; retrieval numbers need real weights).

Inputs are (H, W, 3) RGB images of any size and aspect ratio (uint8, or float in
[0, 255]), preprocessed as the Keras ImageNet models expect ("caffe": BGR, ImageNet
mean subtracted).  Outputs are ReLU'd (H', W', C) float32 activation maps.

Layer aliases (any Keras layer name also works):

=============  ==============  ==================  ===================
alias          vgg16           resnet50            resnet101
=============  ==============  ==================  ===================
last           block5_conv3    conv5_block3_out    conv5_block3_out
penultimate    block5_conv2    conv5_block2_out    conv5_block2_out
previous_block block4_conv3    conv4_block6_out    conv4_block23_out
=============  ==============  ==================  ===================

``last`` + ``previous_block`` are the "last two conv blocks" of multi-layer R-MAC.
"""

from __future__ import annotations

import logging
import os
from typing import Sequence

import numpy as np

from d2r.checks import check_positive_int
from d2r.cnn.pooling import l2_normalize

__all__ = ["Backbone", "ARCHITECTURES", "LAYER_ALIASES", "preprocess", "resize_image"]

logger = logging.getLogger(__name__)

ARCHITECTURES = {"vgg16": "VGG16", "resnet50": "ResNet50", "resnet101": "ResNet101"}
"""Supported architectures -> ``keras.applications`` builder names."""

LAYER_ALIASES = {
    "vgg16": {"last": "block5_conv3", "penultimate": "block5_conv2", "previous_block": "block4_conv3"},
    "resnet50": {"last": "conv5_block3_out", "penultimate": "conv5_block2_out",
                 "previous_block": "conv4_block6_out"},
    "resnet101": {"last": "conv5_block3_out", "penultimate": "conv5_block2_out",
                  "previous_block": "conv4_block23_out"},
}

_CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], np.float32)


def _check_image(image) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or min(img.shape[:2]) == 0:
        raise ValueError(f"image must be a non-empty (H, W, 3) RGB array, got shape {img.shape}")
    if img.dtype.kind not in "fiu":
        raise TypeError(f"image must be numeric, got dtype {img.dtype}")
    return img


def resize_image(image, max_side: int) -> np.ndarray:
    """Resize (H, W, 3) so its longer side is ``max_side`` (up or down, aspect kept): float32."""
    import cv2

    img = _check_image(image).astype(np.float32)
    check_positive_int("max_side", max_side)
    h, w = img.shape[:2]
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if size == (w, h):
        return img
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(img, size, interpolation=interp)


def preprocess(image) -> np.ndarray:
    """(H, W, 3) RGB in [0, 255] -> (1, H, W, 3) float32 BGR minus the ImageNet mean (Keras "caffe" mode)."""
    img = _check_image(image).astype(np.float32)
    return (img[..., ::-1] - _CAFFE_MEAN_BGR)[None]


class Backbone:
    """Conv layers of an ImageNet CNN, any input size.

    Args:
        architecture: ``"vgg16"``, ``"resnet50"`` or ``"resnet101"``.
        weights_path: local weights file (None: random weights, with a warning).
        layers: layer aliases or Keras layer names whose maps are returned (first = default).
        classifier: the weights file holds the full ImageNet model (ResNets only); the
            global-average-pooling classifier is kept for class activation maps
            (:attr:`classifier_kernel`, :attr:`classifier_bias`).
        seed: when set, seeds Keras' (and so Python's, numpy's and TensorFlow's global)
            random generators before building, for reproducible random weights.
    """

    def __init__(self, architecture: str, *, weights_path: str | os.PathLike | None = None,
                 layers: Sequence[str] = ("last",), classifier: bool = False, seed: int | None = None) -> None:
        if architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {architecture!r}; expected one of {sorted(ARCHITECTURES)}")
        if isinstance(layers, str) or not layers:
            raise ValueError(f"layers must be a non-empty sequence of layer names, got {layers!r}")
        if classifier and architecture == "vgg16":
            raise ValueError("classifier=True needs a global-average-pooling head (resnet50 / resnet101); "
                             "VGG16's fully connected head has no class activation maps")
        if weights_path is not None and not os.path.isfile(weights_path):
            raise FileNotFoundError(f"weights_path {weights_path} is not a file")
        import keras
        import tensorflow as tf

        self.architecture = architecture
        aliases = LAYER_ALIASES[architecture]
        self.layers = tuple(layers)
        self.layer_names = tuple(aliases.get(name, name) for name in self.layers)
        self.classifier_kernel: np.ndarray | None = None
        self.classifier_bias: np.ndarray | None = None
        builder = getattr(keras.applications, ARCHITECTURES[architecture])
        if seed is not None:
            keras.utils.set_random_seed(int(seed))
        base = builder(include_top=False, weights=None, input_shape=(None, None, 3))
        if classifier:
            full = builder(include_top=True, weights=None)
            self._load(full, weights_path)
            for layer in base.layers:
                if layer.weights:
                    layer.set_weights(full.get_layer(layer.name).get_weights())
            kernel, bias = full.get_layer("predictions").get_weights()
            self.classifier_kernel, self.classifier_bias = np.asarray(kernel), np.asarray(bias)
        else:
            self._load(base, weights_path)
        known = {layer.name for layer in base.layers}
        missing = [n for n in self.layer_names if n not in known]
        if missing:
            raise ValueError(f"{architecture} has no layer(s) {missing}; aliases: {sorted(aliases)}")
        self.channels = tuple(int(base.get_layer(n).output.shape[-1]) for n in self.layer_names)
        self.keras_model = base
        """The Keras conv model (``include_top=False``); its ``save_weights`` file loads back here."""
        model = keras.Model(base.input, [base.get_layer(n).output for n in self.layer_names])
        self._run = tf.function(lambda x: model(x, training=False), reduce_retracing=True,
                                input_signature=[tf.TensorSpec([1, None, None, 3], tf.float32)])
        self.weights_path = None if weights_path is None else str(weights_path)

    @staticmethod
    def _load(model, weights_path) -> None:
        if weights_path is None:
            logger.warning("backbone %s uses RANDOM weights (no weights_path): descriptors are "
                           "meaningless for retrieval", model.name)
            return
        try:
            model.load_weights(str(weights_path))
        except (ValueError, OSError, KeyError) as exc:
            raise ValueError(f"cannot load weights from {weights_path} into {model.name}: {exc}") from exc

    def activations(self, image, *, max_side: int | None = None) -> dict[str, np.ndarray]:
        """ReLU'd maps of every requested layer, keyed by the given alias: {name: (H', W', C) float32}.

        ``max_side`` resizes the image first so its longer side has that many pixels.
        """
        import tensorflow as tf

        img = _check_image(image) if max_side is None else resize_image(image, max_side)
        outputs = self._run(tf.constant(preprocess(img)))
        if not isinstance(outputs, (list, tuple)):
            outputs = [outputs]
        return {name: np.maximum(out.numpy()[0], 0.0).astype(np.float32)
                for name, out in zip(self.layers, outputs)}

    def activation_map(self, image, *, layer: str | None = None, max_side: int | None = None) -> np.ndarray:
        """(H', W', C) float32 map of ``layer`` (default: the first requested layer)."""
        layer = self.layers[0] if layer is None else layer
        if layer not in self.layers:
            raise ValueError(f"layer {layer!r} was not requested; this backbone returns {list(self.layers)}")
        return self.activations(image, max_side=max_side)[layer]

    def describe(self, image, *, max_side: int | None = None) -> np.ndarray:
        """l2-normalized MAC of the first layer: (C,) float32 (see :mod:`d2r.cnn.describe` for others)."""
        return l2_normalize(self.activation_map(image, max_side=max_side).max(axis=(0, 1)))
