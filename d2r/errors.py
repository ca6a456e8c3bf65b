"""The errors a user's input can cause, reported by the CLIs in one line.

:class:`InputError` is the base of every error about what the user gave (a
path, an image, a setting, a box, a damaged or mismatched index, a dataset
file); :class:`MissingExtraError` says which optional dependency a setting
needs and the ``pip`` command that installs it.  Anything else that escapes a
command is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["InputError", "MissingExtraError", "USER_ERRORS"]


class InputError(ValueError):
    """Bad user input: the message names the input (a path, a key, a value) and the problem."""


class MissingExtraError(ImportError):
    """An optional dependency (a pip extra of d2r) that a setting or command needs is missing."""


USER_ERRORS = (InputError, MissingExtraError, FileNotFoundError, NotADirectoryError,
               IsADirectoryError, PermissionError)
"""What a user's input can cause; the CLIs print these as ``d2r CMD: error: MESSAGE``."""
