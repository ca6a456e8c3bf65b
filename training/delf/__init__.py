"""DELF training on Google Landmarks (or the synthetic benchmark), and export.

Modules, in the order a run uses them:

* ``prepare_data``  GLD v1/v2 CSVs + images (or the synthetic benchmark's
  ``labels.csv`` + ``jpg/``) → TFRecord shards with a per-class train/validation split.
* ``config``        the training configuration (YAML, dataclass defaults, ``--set``).
* ``data``          reading and writing the TFRecords; ``tf.data`` input with augmentation.
* ``model``         ResNet-50 (or tiny) backbone, attention head, autoencoder, classifiers.
* ``train``         the training loop (``tf.distribute``, checkpoints, resume, TensorBoard).
* ``export``        SavedModel with the DELF reference signature + PCA learned on a dataset.

The ``d2r`` package never imports this package.  See ``training/delf/README.md``.
"""
