"""The XFeat network (Potje et al., CVPR 2024) as a Keras model, loaded from the published weights.

Architecture (the reference's ``XFeatModel``, verlab/accelerated_features); a *basic
layer* is conv (no bias) -> batch norm without affine parameters (eval mode, eps 1e-5)
-> ReLU, and its 3x3 convs pad one pixel of zeros on every side, as PyTorch does (TF's
``same`` padding would pad only after the image at stride 2):

* input (B, H, W, 1): the grayscale image, instance-normalized; H and W multiples of 32;
* ``block1``: basic 3x3 layers 4, 8 (stride 2), 8, 24 (stride 2) -> H/4, plus ``skip1``:
  4x4 average pooling and a 1x1 conv to 24 (with bias) of the input;
* ``block2``: two basic 3x3 layers 24 (H/4); ``block3``: 3x3 64 (stride 2), 3x3 64, 1x1 64
  (H/8); ``block4``: 3x3 64 (stride 2), two 3x3 64 (H/16); ``block5``: 3x3 128 (stride 2),
  two 3x3 128, 1x1 64 (H/32);
* ``block_fusion``: block3 + block4 + block5, the last two resized bilinearly to H/8 with
  half-pixel centres (PyTorch's ``align_corners=False``), then two basic 3x3 layers 64 and
  a 1x1 conv 64 (with bias): the dense descriptor map;
* ``heatmap_head``: two basic 1x1 layers 64, a 1x1 conv 1 (with bias), sigmoid: the
  reliability map;
* ``keypoint_head``: the input's 8x8 cells as 64 channels (row-major within a cell),
  three basic 1x1 layers 64, a 1x1 conv 65 (with bias): logits of the cell's 64 pixels
  and of a "no keypoint" bin.

Outputs ``[descriptors (B, H/8, W/8, 64), keypoint logits (B, H/8, W/8, 65),
reliability (B, H/8, W/8, 1)]``.  Keras layers carry the PyTorch module names
(``block1.0.layer.0`` is a conv, ``block1.0.layer.1`` its batch norm), so the state dict
maps onto them by name; PyTorch's OIHW conv kernels become Keras' HWIO.  The reference's
``fine_matcher`` MLP (semi-dense matching) is not part of sparse extraction: its weights
are ignored.  TensorFlow and Keras are imported inside the functions.
"""

from __future__ import annotations

import os
from typing import Mapping

import numpy as np

from d2r.io.torch_checkpoint import CheckpointError, load_state_dict

__all__ = ["XFEAT_DIM", "CELL", "build_xfeat_model", "load_xfeat_weights", "load_xfeat_model"]

XFEAT_DIM = 64
CELL = 8
"""Side of the keypoint head's cells (the descriptor map's stride), pixels."""
_BLOCKS = {  # torch module -> basic layers (filters, kernel, stride)
    "block1": ((4, 3, 1), (8, 3, 2), (8, 3, 1), (24, 3, 2)),
    "block2": ((24, 3, 1), (24, 3, 1)),
    "block3": ((64, 3, 2), (64, 3, 1), (64, 1, 1)),
    "block4": ((64, 3, 2), (64, 3, 1), (64, 3, 1)),
    "block5": ((128, 3, 2), (128, 3, 1), (128, 3, 1), (64, 1, 1)),
}
_IGNORED = ("fine_matcher.",)


def build_xfeat_model():
    """The XFeat network with untrained (random) weights: ``keras.Model`` as in the module doc."""
    import keras
    import tensorflow as tf

    layers = keras.layers

    def basic(x, name: str, filters: int, kernel: int = 3, stride: int = 1):
        if kernel == 3:
            x = layers.ZeroPadding2D(1, name=f"{name}.pad")(x)
        x = layers.Conv2D(filters, kernel, strides=stride, use_bias=False, name=f"{name}.layer.0")(x)
        x = layers.BatchNormalization(epsilon=1e-5, center=False, scale=False, name=f"{name}.layer.1")(x)
        return layers.ReLU(name=f"{name}.layer.2")(x)

    def sequence(x, module: str, specs):
        for i, (filters, kernel, stride) in enumerate(specs):
            x = basic(x, f"{module}.{i}", filters, kernel, stride)
        return x

    image = keras.Input((None, None, 1), name="image")
    skip = layers.AveragePooling2D(4, name="skip1.0")(image)
    skip = layers.Conv2D(24, 1, name="skip1.1")(skip)
    x1 = sequence(image, "block1", _BLOCKS["block1"])
    x2 = sequence(layers.Add(name="block2.input")([x1, skip]), "block2", _BLOCKS["block2"])
    x3 = sequence(x2, "block3", _BLOCKS["block3"])
    x4 = sequence(x3, "block4", _BLOCKS["block4"])
    x5 = sequence(x4, "block5", _BLOCKS["block5"])
    upsample = layers.Lambda(lambda t: tf.image.resize(t[0], tf.shape(t[1])[1:3], method="bilinear"))
    fused = layers.Add(name="block_fusion.input")([x3, upsample([x4, x3]), upsample([x5, x3])])
    fused = sequence(fused, "block_fusion", ((64, 3, 1), (64, 3, 1)))
    descriptors = layers.Conv2D(XFEAT_DIM, 1, name="block_fusion.2")(fused)

    heat = sequence(descriptors, "heatmap_head", ((64, 1, 1), (64, 1, 1)))
    reliability = layers.Conv2D(1, 1, activation="sigmoid", name="heatmap_head.2")(heat)

    cells = layers.Lambda(lambda t: tf.nn.space_to_depth(t, CELL), name="keypoint_head.input")(image)
    logits = sequence(cells, "keypoint_head", ((64, 1, 1),) * 3)
    logits = layers.Conv2D(CELL * CELL + 1, 1, name="keypoint_head.3")(logits)
    return keras.Model(image, [descriptors, logits, reliability], name="xfeat")


def load_xfeat_weights(model, state: Mapping[str, np.ndarray], source: str) -> None:
    """Set ``model``'s (:func:`build_xfeat_model`) weights from a PyTorch XFeat state dict.

    Refuses (:class:`~d2r.io.torch_checkpoint.CheckpointError` naming ``source``) a state
    dict that lacks a tensor the network needs, holds one of another shape, or holds
    tensors no XFeat module has.
    """
    import keras

    used = set()

    def tensor(key: str, shape: tuple[int, ...]) -> np.ndarray:
        if key not in state:
            raise CheckpointError(f"{source}: not an XFeat checkpoint (no tensor {key})")
        value = np.asarray(state[key], dtype=np.float32)
        if value.shape != shape:
            raise CheckpointError(f"{source}: tensor {key} has shape {value.shape}, XFeat needs {shape}")
        used.add(key)
        return value

    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            h, w, cin, cout = layer.kernel.shape
            weights = [tensor(f"{layer.name}.weight", (cout, cin, h, w)).transpose(2, 3, 1, 0)]
            if layer.use_bias:
                weights.append(tensor(f"{layer.name}.bias", (cout,)))
            layer.set_weights(weights)
        elif isinstance(layer, keras.layers.BatchNormalization):
            channels = (int(layer.moving_mean.shape[0]),)
            layer.set_weights([tensor(f"{layer.name}.running_mean", channels),
                               tensor(f"{layer.name}.running_var", channels)])
            used.add(f"{layer.name}.num_batches_tracked")
    unknown = sorted(k for k in state if k not in used and not k.startswith(_IGNORED))
    if unknown:
        raise CheckpointError(f"{source}: not an XFeat checkpoint (unknown tensors "
                              f"{', '.join(unknown[:3])}{' ...' if len(unknown) > 3 else ''})")


def load_xfeat_model(path: str | os.PathLike, *, sha256: str | None):
    """The XFeat network with the weights of the PyTorch checkpoint at ``path``
    (refused unless its sha256 is ``sha256``, when given)."""
    model = build_xfeat_model()
    load_xfeat_weights(model, load_state_dict(path, sha256=sha256), str(path))
    return model
