"""Feature extractors registered by name (``features.backend``).

An extractor class declares ``name`` (its ``features.backend`` value and its config
section ``features.<name>``, a dataclass registered with
:func:`d2r.config.feature_section` in the same module), ``output_type`` (:class:`~d2r.types.LocalFeatures` or
:class:`~d2r.types.GlobalDescriptors`), ``record_type`` (the ``"type"`` of its
``config()`` description), ``method_key`` (the config key naming the retrieval
method that takes its output, e.g. ``aggregation.method``), optionally ``extra`` (the
pip extra of d2r it needs, e.g. ``"tf"``: checked before any work) and one classmethod
``from_config(section)``; it registers with ``@register_extractor``.  Built-in
extractors are imported only when looked up, so TensorFlow loads only for an
extractor that needs it::

    extractor = make_extractor(config)            # unknown backend: ConfigError naming it
    extractor_class("delf").output_type           # LocalFeatures, TensorFlow not imported
"""

from __future__ import annotations

from typing import Any, Mapping

from d2r.config import BUILTIN_EXTRACTORS, Config, upgrade_record
from d2r.registry import Registry

__all__ = [
    "register_extractor",
    "extractor_class",
    "extractor_names",
    "make_extractor",
    "comparable_extractor_config",
]

EXTRACTORS = Registry("extractor", "name", BUILTIN_EXTRACTORS, required=("output_type", "record_type", "method_key", "from_config"),
    prefix="features.backend: ")
"""The feature extractors by ``features.backend`` (built-ins: name -> their module)."""

register_extractor = EXTRACTORS.register
extractor_names = EXTRACTORS.names
extractor_class = EXTRACTORS.get


def make_extractor(config: Config):
    """The extractor ``config.features`` describes (models load here, TensorFlow lazily)."""
    cls = extractor_class(config.features.backend)
    return cls.from_config(getattr(config.features, cls.name, None))


def comparable_extractor_config(description: Mapping[str, Any]) -> dict[str, Any]:
    """An extractor's ``config()`` as stores and indexes compare it: keys its section gained
    since an older d2r filled in (:func:`d2r.config.upgrade_record`)."""
    for name in extractor_names():
        cls = extractor_class(name)
        if cls.record_type == description.get("type"):
            return upgrade_record(description, f"features.{cls.name}")
    return dict(description)
