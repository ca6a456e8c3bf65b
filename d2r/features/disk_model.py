"""The DISK network (Tyszkiewicz et al., NeurIPS 2020) as a Keras model, loaded from the published weights.

Architecture (the reference's thin U-Net: cvlab-epfl/disk, as kornia's
``kornia.feature.disk`` ``Unet(in_features=3, size=5, down=[16, 32, 64, 64, 64],
up=[64, 64, 64, 129])``); every conv is 5x5, stride 1, with bias and one-sided zero
padding of 2 (PyTorch's ``padding="same"``, which for an odd kernel is Keras' ``same``):

* input (B, H, W, 3): RGB in [0, 1]; H and W multiples of 16;
* ``path_down.0``: conv 3 -> 16 (no normalization); ``path_down.1`` .. ``.4``: 2x2 average
  pooling, then a *gated conv*: instance normalization without affine parameters (per
  image and channel, biased variance, eps 1e-5; PyTorch's ``InstanceNorm2d`` defaults,
  no running statistics) -> PReLU with one slope per channel -> conv (16 -> 32 -> 64 -> 64 -> 64);
* ``path_up.0`` .. ``.3``: bilinear 2x upsampling of the deeper map (half-pixel centres,
  PyTorch's ``align_corners=False``), concatenated (upsampled first) with the encoder map
  of that resolution, then a gated conv (-> 64, 64, 64, 129).

Output (B, H, W, 129): channels 0-127 the dense descriptors (not normalized), channel
128 the detection heatmap (logits).  Keras layers carry the PyTorch module names
(``unet.path_down.1.1.3`` is a conv, ``unet.path_down.1.1.1`` its PReLU), so the state
dict maps onto them by name; PyTorch's OIHW conv kernels become Keras' HWIO.  The
published ``depth-save.pth`` is a legacy (pre-1.6) checkpoint with the state dict under
``extractor``; both that and a flat zip-format state dict (with or without the
``extractor.`` prefix) are read.  TensorFlow and Keras are imported inside the functions.
"""

from __future__ import annotations

import os
from typing import Mapping

import numpy as np

from d2r.io.torch_checkpoint import CheckpointError, load_state_dict
from d2r.io.torch_legacy import is_legacy_checkpoint, load_legacy_state_dict

__all__ = ["DISK_DIM", "DIVISOR", "build_disk_model", "load_disk_weights", "load_disk_model"]

DISK_DIM = 128
DIVISOR = 16
"""Input sides must be multiples of this (four 2x poolings)."""
KERNEL = 5
_DOWN = (16, 32, 64, 64, 64)
_UP = (64, 64, 64, DISK_DIM + 1)
_PREFIX = "extractor."


def build_disk_model():
    """The DISK U-Net with untrained (random) weights: ``keras.Model`` as in the module doc."""
    import keras
    import tensorflow as tf

    layers = keras.layers

    def instance_norm(x, name: str):
        def norm(t):
            mean, variance = tf.nn.moments(t, axes=[1, 2], keepdims=True)
            return (t - mean) * tf.math.rsqrt(variance + 1e-5)
        return layers.Lambda(norm, name=name)(x)

    def gated_conv(x, name: str, filters: int):
        x = instance_norm(x, f"{name}.0")
        x = layers.PReLU(shared_axes=[1, 2], name=f"{name}.1")(x)
        return layers.Conv2D(filters, KERNEL, padding="same", name=f"{name}.3")(x)

    image = keras.Input((None, None, 3), name="image")
    features = [layers.Conv2D(_DOWN[0], KERNEL, padding="same", name="unet.path_down.0.1.3")(image)]
    for i, filters in enumerate(_DOWN[1:], start=1):
        x = layers.AveragePooling2D(2, name=f"unet.path_down.{i}.0")(features[-1])
        features.append(gated_conv(x, f"unet.path_down.{i}.1", filters))
    upsample = lambda t: tf.image.resize(t, tf.shape(t)[1:3] * 2, method="bilinear")  # noqa: E731
    x = features[-1]
    for j, (filters, horizontal) in enumerate(zip(_UP, features[-2::-1])):
        x = layers.Lambda(upsample, name=f"unet.path_up.{j}.upsample")(x)
        x = layers.Concatenate(name=f"unet.path_up.{j}.cat")([x, horizontal])
        x = gated_conv(x, f"unet.path_up.{j}.conv", filters)
    return keras.Model(image, x, name="disk")


def load_disk_weights(model, state: Mapping[str, np.ndarray], source: str) -> None:
    """Set ``model``'s (:func:`build_disk_model`) weights from a PyTorch DISK state dict.

    Refuses (:class:`~d2r.io.torch_checkpoint.CheckpointError` naming ``source``) a state
    dict that lacks a tensor the network needs, holds one of another shape, or holds
    tensors no DISK module has.
    """
    import keras

    state = {(k[len(_PREFIX):] if k.startswith(_PREFIX) else k): v for k, v in state.items()}
    used = set()

    def tensor(key: str, shape: tuple[int, ...]) -> np.ndarray:
        if key not in state:
            raise CheckpointError(f"{source}: not a DISK checkpoint (no tensor {key})")
        value = np.asarray(state[key], dtype=np.float32)
        if value.shape != shape:
            raise CheckpointError(f"{source}: tensor {key} has shape {value.shape}, DISK needs {shape}")
        used.add(key)
        return value

    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            h, w, cin, cout = layer.kernel.shape
            layer.set_weights([tensor(f"{layer.name}.weight", (cout, cin, h, w)).transpose(2, 3, 1, 0),
                               tensor(f"{layer.name}.bias", (cout,))])
        elif isinstance(layer, keras.layers.PReLU):
            channels = int(layer.alpha.shape[-1])
            layer.set_weights([tensor(f"{layer.name}.weight", (channels,)).reshape(1, 1, channels)])
    unknown = sorted(k for k in state if k not in used)
    if unknown:
        raise CheckpointError(f"{source}: not a DISK checkpoint (unknown tensors "
                              f"{', '.join(unknown[:3])}{' ...' if len(unknown) > 3 else ''})")


def load_disk_model(path: str | os.PathLike, *, sha256: str | None):
    """The DISK network with the weights of the PyTorch checkpoint at ``path`` (legacy or
    zip format; refused unless its sha256 is ``sha256``, when given)."""
    reader = load_legacy_state_dict if is_legacy_checkpoint(path) else load_state_dict
    model = build_disk_model()
    load_disk_weights(model, reader(path, sha256=sha256), str(path))
    return model
