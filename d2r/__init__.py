"""d2r: Detect-to-Retrieve landmark and particular-object image retrieval.

The core (types, config, codebook, aggregation, index, verification,
evaluation, datasets, storage) depends on numpy/scipy/faiss only; TensorFlow
models are imported lazily by the modules that need them.
"""

__version__ = "0.1.0"
