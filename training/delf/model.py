"""The DELF network as trained: backbone, attention head, optional autoencoder, two classifiers.

Training follows the DELF paper and the reference's TF2 trainer (with DELG's
gradient stop):

* **descriptor (backbone) loss** — the last backbone stage (ResNet-50 conv5) is
  pooled globally (average or GeM) and classified (dense softmax, or cosine /
  ArcFace logits); its gradients train the backbone;
* **attention loss** — the local feature map (ResNet-50 conv4, gradients stopped)
  is L2-normalized per cell, weighted by the attention scores, averaged over the
  cells, and classified by a dense softmax layer; its gradients train the attention
  head (and, with the autoencoder, the autoencoder feeding it);
* **reconstruction loss** (``use_autoencoder``) — mean squared error between the
  autoencoder's re-expanded features and the local feature map; trains the
  autoencoder, whose bottleneck gives the ``reduced_dimension``-D descriptors.

Layer names follow :func:`d2r.features.delf_model.build_delf_model` (Keras
ResNet-50 names, ``attention_conv1`` ... ``attention``, ``autoencoder_conv1/2``), so
:meth:`DelfNetwork.inference_model` of a ResNet-50 network is the package's own
model with the trained weights copied in.  The ``tiny`` backbone (five stride-2
stages of two 3x3 convs, local features after the fourth: stride 16) exists for
tests and CPU runs; its receptive field is computed exactly (explicit padding).
"""

from __future__ import annotations

import logging
import math
from typing import Any, NamedTuple

from training.delf.config import ModelConfig

__all__ = [
    "TINY_RECEPTIVE_FIELD_LAYERS",
    "DelfNetwork",
    "ForwardOutputs",
    "cosine_classifier",
    "count_parameters",
    "describe",
    "receptive_field",
]

logger = logging.getLogger(__name__)

#: (kernel, stride, padding) of the tiny backbone's layers up to its local features.
TINY_RECEPTIVE_FIELD_LAYERS = ((3, 2, 1), (3, 1, 1)) * 4


def receptive_field(config: ModelConfig):
    """Receptive field of the local features of ``config``'s backbone."""
    from d2r.features.delf_model import DELF_RECEPTIVE_FIELD
    from d2r.features.receptive_field import receptive_field_of

    if config.backbone == "resnet50":
        return DELF_RECEPTIVE_FIELD
    return receptive_field_of(TINY_RECEPTIVE_FIELD_LAYERS)


class ForwardOutputs(NamedTuple):
    """One forward pass: logits (B, C) of both classifiers, attention (B, h, w, 1),
    local feature map (B, h, w, C_local), descriptors (B, h, w, D), and the
    autoencoder's re-expanded features (B, h, w, C_local) or None."""

    desc_logits: Any
    attention_logits: Any
    attention: Any
    local_features: Any
    descriptors: Any
    expanded: Any


def _resnet50_backbone(config: ModelConfig):
    import keras

    from d2r.features.delf_model import BACKBONE_OUTPUT

    weights = config.backbone_weights
    if weights is not None:
        from pathlib import Path

        if not Path(weights).is_file():
            raise FileNotFoundError(f"model.backbone_weights: {weights} does not exist")
    full = keras.applications.ResNet50(include_top=False, weights=weights, input_shape=(None, None, 3))
    if weights is not None:
        logger.info("ResNet-50 backbone initialized from %s", weights)
    return keras.Model(full.input, [full.get_layer(BACKBONE_OUTPUT).output, full.output], name="backbone")


def _tiny_backbone(config: ModelConfig):
    import keras

    inputs = keras.Input((None, None, 3), name="image")
    x, local = inputs, None
    for stage, channels in enumerate(config.tiny_channels, 1):
        for conv, stride in ((1, 2), (2, 1)):
            name = f"tiny{stage}_{conv}"
            x = keras.layers.ZeroPadding2D(1, name=f"{name}_pad")(x)
            x = keras.layers.Conv2D(int(channels), 3, strides=stride, use_bias=False, name=f"{name}_conv")(x)
            x = keras.layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
            x = keras.layers.ReLU(name=f"{name}_relu")(x)
        if stage == 4:
            local = x
    return keras.Model(inputs, [local, x], name="backbone")


def _head(config: ModelConfig, channels: int):
    """block3 features -> [attention, descriptors, attention input], layer names as the package model."""
    import keras

    inputs = keras.Input((None, None, channels), name="local_features")
    descriptors = attention_input = inputs
    if config.use_autoencoder:
        descriptors = keras.layers.Conv2D(int(config.reduced_dimension), 1, name="autoencoder_conv1")(inputs)
        attention_input = keras.layers.Conv2D(channels, 1, activation="relu", name="autoencoder_conv2")(descriptors)
    x = keras.layers.Conv2D(int(config.attention_channels), 1, name="attention_conv1")(attention_input)
    x = keras.layers.BatchNormalization(name="attention_bn")(x)
    x = keras.layers.ReLU(name="attention_relu")(x)
    x = keras.layers.Conv2D(1, 1, name="attention_conv2")(x)
    attention = keras.layers.Activation("softplus", name="attention")(x)
    return keras.Model(inputs, [attention, descriptors, attention_input], name="delf_head")


def cosine_classifier(num_classes: int, *, scale: float, margin: float = 0.0, name: str = "desc_fc"):
    """Keras layer: ``scale * cos(theta)`` logits of L2-normalized inputs and class weights;
    with ``margin`` > 0 and labels given, the target class gets ``scale * cos(theta + margin)``
    (ArcFace).  Call as ``layer(x)`` or ``layer(x, labels)``."""
    import keras
    import tensorflow as tf

    class CosineClassifier(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(name=name, **kwargs)

        def build(self, input_shape):
            self.kernel = self.add_weight(
                name="kernel", shape=(int(input_shape[-1]), int(num_classes)), initializer="glorot_uniform",
            )

        def call(self, x, labels=None):
            cos = tf.matmul(tf.nn.l2_normalize(x, axis=-1), tf.nn.l2_normalize(self.kernel, axis=0))
            if labels is not None and margin > 0:
                eps = 1e-6
                theta = tf.acos(tf.clip_by_value(cos, -1.0 + eps, 1.0 - eps))
                # Past pi - margin the angle would wrap around; keep cos monotonic there.
                target = tf.where(theta + margin < math.pi, tf.cos(theta + margin), cos - margin * math.sin(margin))
                onehot = tf.one_hot(tf.cast(labels, tf.int32), int(num_classes)) > 0.5
                cos = tf.where(onehot, target, cos)
            return float(scale) * cos

    return CosineClassifier()


class DelfNetwork:
    """Backbone + head + classifiers, built for ``num_classes`` classes (inside the
    distribution strategy's scope when there is one)."""

    def __init__(self, config: ModelConfig, num_classes: int) -> None:
        import keras

        if int(num_classes) < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.config = config
        self.num_classes = int(num_classes)
        self.backbone = _resnet50_backbone(config) if config.backbone == "resnet50" else _tiny_backbone(config)
        local_channels = int(self.backbone.outputs[0].shape[-1])
        global_channels = int(self.backbone.outputs[1].shape[-1])
        self.local_channels = local_channels
        self.head = _head(config, local_channels)
        if config.classifier == "softmax":
            self.desc_classifier = keras.layers.Dense(self.num_classes, name="desc_fc")
        else:
            margin = config.margin if config.classifier == "arcface" else 0.0
            self.desc_classifier = cosine_classifier(self.num_classes, scale=config.scale, margin=margin)
        self.attention_classifier = keras.layers.Dense(self.num_classes, name="attention_fc")
        self.desc_classifier.build((None, global_channels))
        self.attention_classifier.build((None, local_channels))
        self.receptive_field = receptive_field(config)

    # -- variables ----------------------------------------------------------

    @property
    def descriptor_variables(self) -> list:
        """Trained by the descriptor loss: backbone + descriptor classifier."""
        return list(self.backbone.trainable_variables) + list(self.desc_classifier.trainable_variables)

    @property
    def head_variables(self) -> list:
        """Trained by the attention and reconstruction losses: head + attention classifier."""
        return list(self.head.trainable_variables) + list(self.attention_classifier.trainable_variables)

    def weights_by_name(self) -> dict[str, Any]:
        """Every weight (trainable or not) keyed by its unique Keras path, for checkpoints."""
        out: dict[str, Any] = {}
        for part in (self.backbone, self.head, self.desc_classifier, self.attention_classifier):
            for w in part.weights:
                if w.path in out:
                    raise RuntimeError(f"two weights named {w.path!r}; please report this bug")
                out[w.path] = w
        return out

    # -- forward ------------------------------------------------------------

    def _pool(self, x):
        import tensorflow as tf

        if self.config.pooling == "avg":
            return tf.reduce_mean(x, axis=[1, 2])
        p = float(self.config.gem_power)
        return tf.pow(tf.reduce_mean(tf.pow(tf.maximum(x, 1e-6), p), axis=[1, 2]), 1.0 / p)

    def forward(self, images, labels=None, *, training: bool) -> ForwardOutputs:
        """Both branches on (B, H, W, 3) normalized images; ``labels`` feed the ArcFace margin."""
        import tensorflow as tf

        local, last = self.backbone(images, training=training)
        pooled = self._pool(last)
        if self.config.classifier == "softmax":
            desc_logits = self.desc_classifier(pooled)
        else:
            desc_logits = self.desc_classifier(pooled, labels if training else None)
        local = tf.stop_gradient(local)
        attention, descriptors, attention_input = self.head(local, training=training)
        weighted = tf.nn.l2_normalize(local, axis=-1) * attention
        attention_logits = self.attention_classifier(tf.reduce_mean(weighted, axis=[1, 2]))
        expanded = attention_input if self.config.use_autoencoder else None
        return ForwardOutputs(desc_logits, attention_logits, attention, local, descriptors, expanded)

    # -- export -------------------------------------------------------------

    def inference_model(self):
        """Keras model (B, H, W, 3) normalized pixels -> ``[attention, descriptors]``.

        ResNet-50: the package's :func:`~d2r.features.delf_model.build_delf_model` with
        the trained weights copied in by layer name; tiny: the trained layers themselves.
        """
        import keras

        if self.config.backbone == "tiny":
            inputs = keras.Input((None, None, 3), name="image")
            local_model = keras.Model(self.backbone.input, self.backbone.outputs[0], name="tiny_backbone")
            attention, descriptors, _ = self.head(local_model(inputs))
            return keras.Model(inputs, [attention, descriptors], name="delf_tiny")
        from d2r.features.delf_model import build_delf_model

        model = build_delf_model(
            use_autoencoder=self.config.use_autoencoder,
            reduced_dimension=self.config.reduced_dimension,
            attention_channels=self.config.attention_channels,
        )
        sources = {layer.name: layer for part in (self.backbone, self.head) for layer in part.layers}
        copied = 0
        for layer in model.layers:
            if not layer.weights:
                continue
            source = sources.get(layer.name)
            if source is None or len(source.weights) != len(layer.weights):
                raise RuntimeError(f"trained network has no layer matching {layer.name!r}; please report this bug")
            layer.set_weights(source.get_weights())
            copied += 1
        logger.debug("copied the weights of %d layers into the DELF model", copied)
        return model


def count_parameters(network: DelfNetwork) -> int:
    """Number of trainable parameters of the backbone + head (classifiers excluded)."""
    import numpy as np

    return int(sum(np.prod(v.shape) for v in network.backbone.trainable_variables + network.head.trainable_variables))


def describe(network: DelfNetwork) -> dict[str, Any]:
    """A small dict describing the network, for logs and export records."""
    rf = network.receptive_field
    return {
        "backbone": network.config.backbone,
        "num_classes": network.num_classes,
        "local_channels": network.local_channels,
        "descriptor_dim": network.config.reduced_dimension if network.config.use_autoencoder else network.local_channels,
        "receptive_field": rf.to_dict(),
        "parameters": count_parameters(network),
    }

