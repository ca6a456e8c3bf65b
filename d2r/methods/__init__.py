"""Retrieval methods registered by their config name.

A method (:class:`~d2r.methods.base.RetrievalMethod`) owns what happens between
stored features and a ranking: how a database image becomes index entries, which
index kind holds them, how a query is encoded and searched, and how the top of a
ranking is re-ranked.  The drivers (building, the searcher, ``query``, Ray) look
the method up and call its hooks; they never branch on a method name.

The extractor (``features.backend``) names the config key that selects the method
(``aggregation.method`` for local features, ``features.cnn.method`` for CNN
descriptors).  Built-in methods are imported on first lookup; plugins register
their own with :func:`register_method` from modules listed in the ``D2R_PLUGINS``
environment variable (comma-separated module names) or exposed as ``d2r.plugins``
entry points, which every d2r command imports before it reads a config.
"""

from __future__ import annotations

from d2r.config import Config, ConfigError, check_ranges
from d2r.features.registry import extractor_class
from d2r.extras import require
from d2r.registry import Registry, load_plugins

__all__ = [
    "register_method",
    "method_class",
    "method_names",
    "method_name",
    "make_method",
    "validate",
    "load_plugins",
]

METHODS = Registry("retrieval method", "name", {
    **dict.fromkeys(("vlad", "asmk", "asmk_star", "r_vlad", "naive_r_asmk", "r_asmk",
                     "r_asmk_star"), "d2r.methods.kernels"),
    **dict.fromkeys(("mac", "rmac", "gem", "multires", "regional"), "d2r.methods.cnn"),
}, required=("input_type",))
"""The retrieval methods by config name (built-ins: name -> the module that registers them)."""

register_method = METHODS.register
method_names = METHODS.names
method_class = METHODS.get


def method_name(config: Config) -> str:
    """The method ``config`` selects: the value of its extractor's ``method_key``."""
    node = config
    for part in extractor_class(config.features.backend).method_key.split("."):
        node = getattr(node, part)
    return str(node)


def make_method(config: Config):
    """The method instance of ``config`` (not yet validated)."""
    return method_class(method_name(config))(config)


def validate(config: Config):
    """Refuse a config whose parts do not go together; returns its method.

    Checks every numeric setting against its declared range
    (:func:`d2r.config.setting_ranges`), that the extractor and the method exist, that the method
    takes what the extractor produces, then the method's own rules
    (:meth:`RetrievalMethod.validate`).
    Raises ConfigError naming the offending keys.
    """
    check_ranges(config)
    extractor = extractor_class(config.features.backend)
    if getattr(extractor, "extra", None):
        require(extractor.extra, f"features.backend={config.features.backend}")
    if config.regions.source == "detector":
        require("tf", "regions.source=detector (the landmark detector)")
    method = make_method(config)
    if method.input_type is not extractor.output_type:
        raise ConfigError(
            f"retrieval method {method.name!r} takes {method.input_type.__name__}, but "
            f"features.backend={config.features.backend!r} produces "
            f"{extractor.output_type.__name__}")
    method.validate()
    return method
