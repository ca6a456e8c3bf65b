"""Landmark detector training with TF Model Garden (``official.vision``).

Modules, in the order a run uses them:

* ``prepare_data``  Google Landmark Boxes / synthetic ``boxes.csv`` → TFRecords.
* ``train``         train (checkpoints, resume) and evaluate a Model Garden experiment.
* ``export``        SavedModel with the TF Object Detection serving convention.
* ``evaluate``      AP@0.5 of an exported detector on held-out TFRecords.
* ``od_api_config`` TF Object Detection API ``pipeline.config`` → experiment YAML.

The ``d2r`` package never imports this package.
"""
