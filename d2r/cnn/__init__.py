"""CNN global-descriptor baselines: MAC, R-MAC, integral max-pooling, AML, QE; multi-resolution /
multi-layer R-MAC with PFA and CAM masks; regional first/second-order pooling.

Everything here except :mod:`d2r.cnn.backbones` is numpy / scipy / scikit-image;
the backbones import TensorFlow only when one is built.
"""

from d2r.cnn.aml import aml_rerank, localize, localize_exhaustive
from d2r.cnn.integral import IntegralMaxPool
from d2r.cnn.pfa import PFA, learn_pfa
from d2r.cnn.pooling import gem, generalized_mean, l2_normalize, mac, spoc
from d2r.cnn.qe import average_query_expansion, rerank_top
from d2r.regions.grids import rmac_regions, sliding_regions
from d2r.cnn.rmac import mac_descriptor, rmac
from d2r.cnn.whitening import Whitening, learn_whitening, load_whitening

__all__ = [
    "IntegralMaxPool",
    "PFA",
    "Whitening",
    "aml_rerank",
    "average_query_expansion",
    "gem",
    "generalized_mean",
    "l2_normalize",
    "learn_pfa",
    "learn_whitening",
    "load_whitening",
    "localize",
    "localize_exhaustive",
    "mac",
    "mac_descriptor",
    "rerank_top",
    "rmac",
    "rmac_regions",
    "sliding_regions",
    "spoc",
]
