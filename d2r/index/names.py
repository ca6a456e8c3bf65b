"""Entry names of an index by id: every entry added with a name, or none."""

from __future__ import annotations

from typing import Sequence

__all__ = ["EntryNames"]


class EntryNames:
    """The names of an index's entries, refusing a mix of named and unnamed batches.

    Args:
        what: how the index calls its entries in messages (``"items"``, ``"images"``, ...).
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self._names: list[str] = []
        self._named: bool | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._names)

    def check(self, names: Sequence[str] | None, count: int) -> list[str] | None:
        """Validate the names of a batch of ``count`` entries before anything is added."""
        if names is not None:
            names = [str(n) for n in names]
            if len(names) != count:
                raise ValueError(f"names has {len(names)} entries for {count} {self.what}")
        named = names is not None
        if count and self._named is not None and named != self._named:
            raise ValueError(f"{self.what} were previously added "
                             + ("with" if self._named else "without")
                             + " names; pass names consistently")
        return names

    def append(self, names: list[str] | None, count: int) -> None:
        """Record a batch that :meth:`check` accepted."""
        if count:
            self._named = names is not None
            if names is not None:
                self._names.extend(names)

    def restore(self, names: Sequence[str], count: int) -> None:
        """State of a loaded index of ``count`` entries saved with ``names`` (or none)."""
        self._names = list(names)
        self._named = bool(names) if count else None

    def copy(self) -> "EntryNames":
        other = EntryNames(self.what)
        other._names = list(self._names)
        other._named = self._named
        return other
