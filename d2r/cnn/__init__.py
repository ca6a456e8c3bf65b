"""CNN global-descriptor baselines: MAC, R-MAC, integral max-pooling, AML, QE; multi-resolution /
multi-layer R-MAC with PFA and CAM masks; regional first/second-order pooling.

Everything here except :mod:`d2r.cnn.backbones` is numpy / scipy / scikit-image;
the backbones import TensorFlow only when one is built.  The names below are loaded
from their modules on first use (importing ``d2r.cnn`` loads nothing else).
"""

import importlib

_WHERE = {
    "aml_rerank": "d2r.cnn.aml",
    "localize": "d2r.cnn.aml",
    "localize_exhaustive": "d2r.cnn.aml",
    "IntegralMaxPool": "d2r.cnn.integral",
    "PFA": "d2r.cnn.pfa",
    "learn_pfa": "d2r.cnn.pfa",
    "gem": "d2r.cnn.pooling",
    "generalized_mean": "d2r.cnn.pooling",
    "l2_normalize": "d2r.cnn.pooling",
    "mac": "d2r.cnn.pooling",
    "spoc": "d2r.cnn.pooling",
    "average_query_expansion": "d2r.cnn.qe",
    "rerank_top": "d2r.cnn.qe",
    "rmac_regions": "d2r.regions.grids",
    "sliding_regions": "d2r.regions.grids",
    "mac_descriptor": "d2r.cnn.rmac",
    "rmac": "d2r.cnn.rmac",
    "Whitening": "d2r.cnn.whitening",
    "learn_whitening": "d2r.cnn.whitening",
    "load_whitening": "d2r.cnn.whitening",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'd2r.cnn' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
