"""Name -> class tables: what the three registries (extractors, retrieval methods, index
kinds) have in common.

A :class:`Registry` is filled by class decorators in the modules that define the
classes.  Built-in entries are listed by name with the module that registers them,
and that module is imported on first lookup (so looking up ``delf`` does not load
TensorFlow).  Plugins register their own entries from modules named in the
``D2R_PLUGINS`` environment variable (comma-separated) or exposed as ``d2r.plugins``
entry points; they are imported once, before the first lookup in any registry.
"""

from __future__ import annotations

import importlib
import os
from importlib import metadata
from typing import Mapping, Sequence

from d2r.config import ConfigError

__all__ = ["Registry", "load_plugins"]

_PLUGINS_LOADED = False


def load_plugins() -> None:
    """Import the plugin modules (``D2R_PLUGINS`` and ``d2r.plugins`` entry points) once."""
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED = True
    for module in filter(None, (m.strip() for m in os.environ.get("D2R_PLUGINS", "").split(","))):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(f"D2R_PLUGINS: cannot import plugin module {module!r}: {exc}") from exc
    for entry in metadata.entry_points(group="d2r.plugins"):
        entry.load()


class Registry:
    """Classes by the value of their class attribute ``key``.

    Args:
        what: what an entry is, for messages ("retrieval method").
        key: the class attribute holding an entry's name ("name", "kind").
        builtins: built-in name -> the module that registers it.
        required: further class attributes every entry must have.
        error: the exception raised for an unknown name (given the message).
        prefix: what the message starts with (e.g. the config key, "features.backend: ").
    """

    def __init__(self, what: str, key: str, builtins: Mapping[str, str], *,
                 required: Sequence[str] = (), error: type[Exception] = ConfigError,
                 prefix: str = "") -> None:
        self.what, self.key, self.builtins = what, key, dict(builtins)
        self.required, self.error, self.prefix = tuple(required), error, prefix
        self._classes: dict[str, type] = {}

    def register(self, cls: type) -> type:
        """Class decorator: serve ``getattr(cls, key)`` with ``cls`` (twice is an error)."""
        name = getattr(cls, self.key, "")
        if not isinstance(name, str) or not name:
            raise TypeError(f"{cls.__name__} needs a non-empty class attribute {self.key!r}")
        missing = [attr for attr in self.required if getattr(cls, attr, None) is None]
        if missing:
            raise TypeError(f"{self.what} class {cls.__name__} lacks {', '.join(missing)}")
        if self._classes.get(name, cls) is not cls:
            raise ValueError(f"{self.what} {name!r} is already registered "
                             f"({self._classes[name].__name__})")
        self._classes[name] = cls
        return cls

    def names(self) -> list[str]:
        """Every known name (built-in or registered)."""
        load_plugins()
        return sorted(set(self.builtins) | set(self._classes))

    def get(self, name: str) -> type:
        """The class registered as ``name``; ``error`` naming it and the known names."""
        load_plugins()
        if name not in self._classes and name in self.builtins:
            importlib.import_module(self.builtins[name])
        cls = self._classes.get(name)
        if cls is None:
            raise self.error(f"{self.prefix}unknown {self.what} {name!r}; known: "
                             f"{', '.join(self.names())}")
        return cls
