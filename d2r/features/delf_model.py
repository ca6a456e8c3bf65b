"""The DELF network as a Keras model: ResNet-50 up to conv4, attention head, optional autoencoder.

Architecture (Noh et al., ICCV 2017; the reference's TF2 ``delf_model.Delf``):

* backbone: Keras ResNet-50 up to ``conv4_block6_out`` -- 1024 channels, stride 16,
  receptive field :data:`~d2r.features.receptive_field.RESNET50_CONV4`;
* optional autoencoder: 1x1 conv to ``reduced_dimension`` (linear; these are the
  descriptors), 1x1 conv back to 1024 channels with ReLU (input of the attention head);
* attention head: 1x1 conv 512 -> batch norm -> ReLU -> 1x1 conv 1 -> softplus.

Input: (B, H, W, 3) float32 pixels already normalized by :func:`normalize_pixels`,
``(rgb - 128) / 128`` as the reference.  Outputs ``[attention (B, h, w, 1),
features (B, h, w, C)]`` with C = 1024, or ``reduced_dimension`` with the autoencoder.

TensorFlow / Keras are imported inside the functions.  Nothing is downloaded: the
backbone starts from random weights, or from a local Keras ImageNet weights file
(``resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5``) given by path.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from d2r.features.receptive_field import RESNET50_CONV4, ReceptiveField

__all__ = [
    "PIXEL_OFFSET",
    "PIXEL_SCALE",
    "BACKBONE_OUTPUT",
    "DELF_RECEPTIVE_FIELD",
    "normalize_pixels",
    "build_delf_model",
    "load_delf_weights",
]

logger = logging.getLogger(__name__)

PIXEL_OFFSET = 128.0
PIXEL_SCALE = 128.0
BACKBONE_OUTPUT = "conv4_block6_out"
BACKBONE_CHANNELS = 1024
DELF_RECEPTIVE_FIELD: ReceptiveField = RESNET50_CONV4


def normalize_pixels(images):
    """``(float(images) - 128) / 128`` as a float32 tensor (uint8 or float input)."""
    import tensorflow as tf

    return (tf.cast(images, tf.float32) - PIXEL_OFFSET) / PIXEL_SCALE


def build_delf_model(
    *,
    use_autoencoder: bool = False,
    reduced_dimension: int = 128,
    attention_channels: int = 512,
    backbone_weights: str | os.PathLike | None = None,
    name: str = "delf",
):
    """Build the DELF Keras model (random weights unless ``backbone_weights`` is given).

    Args:
        use_autoencoder: add the dimensionality-reduction autoencoder; descriptors are
            then its ``reduced_dimension``-D bottleneck.
        reduced_dimension: autoencoder bottleneck size.
        attention_channels: channels of the attention head's hidden 1x1 conv.
        backbone_weights: local path of Keras ResNet-50 ImageNet weights (no-top .h5).
        name: model name.

    Returns:
        ``keras.Model`` mapping (B, H, W, 3) normalized pixels to ``[attention, features]``.
    """
    import keras

    if int(reduced_dimension) < 1 or int(attention_channels) < 1:
        raise ValueError("reduced_dimension and attention_channels must be positive")
    weights = None
    if backbone_weights is not None:
        weights = Path(backbone_weights)
        if not weights.is_file():
            raise FileNotFoundError(f"{weights}: backbone weights file does not exist")
        weights = str(weights)
    resnet = keras.applications.ResNet50(include_top=False, weights=weights, input_shape=(None, None, 3))
    if weights is not None:
        logger.info("loaded ResNet-50 backbone weights from %s", weights)
    block3 = resnet.get_layer(BACKBONE_OUTPUT).output
    attention_input = block3
    features = block3
    if use_autoencoder:
        features = keras.layers.Conv2D(int(reduced_dimension), 1, name="autoencoder_conv1")(block3)
        attention_input = keras.layers.Conv2D(
            BACKBONE_CHANNELS, 1, activation="relu", name="autoencoder_conv2"
        )(features)
    x = keras.layers.Conv2D(int(attention_channels), 1, name="attention_conv1")(attention_input)
    x = keras.layers.BatchNormalization(name="attention_bn")(x)
    x = keras.layers.ReLU(name="attention_relu")(x)
    x = keras.layers.Conv2D(1, 1, name="attention_conv2")(x)
    attention = keras.layers.Activation("softplus", name="attention")(x)
    return keras.Model(resnet.input, [attention, features], name=name)


def load_delf_weights(
    path: str | os.PathLike, *, use_autoencoder: bool = False, reduced_dimension: int = 128,
    attention_channels: int = 512,
):
    """Build the DELF model with the given architecture and load Keras weights from ``path``.

    ``path`` is a file written by ``model.save_weights`` (``.weights.h5``); the
    architecture arguments must match the saved model's.
    """
    weights = Path(path)
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: DELF weights file does not exist")
    model = build_delf_model(
        use_autoencoder=use_autoencoder, reduced_dimension=reduced_dimension,
        attention_channels=attention_channels,
    )
    try:
        model.load_weights(str(weights))
    except (ValueError, KeyError, OSError) as exc:
        raise ValueError(
            f"{weights}: cannot load DELF weights into a model with use_autoencoder={use_autoencoder}, "
            f"reduced_dimension={reduced_dimension}, attention_channels={attention_channels} ({exc})"
        ) from exc
    logger.info("loaded DELF weights from %s", weights)
    return model
