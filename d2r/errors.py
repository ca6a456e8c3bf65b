"""The errors a user's input can cause, reported by the CLIs in one line.

:class:`InputError` is the base of every error about what the user gave (a
path, an image, a setting, a box, a damaged or mismatched index, a dataset
file); :class:`MissingExtraError` says which optional dependency a setting
needs and the ``pip`` command that installs it; :class:`DiskFullError` says
which output did not fit.  Anything else that escapes a command is a bug and
keeps its traceback.
"""

from __future__ import annotations

import errno
import os
import signal

__all__ = ["InputError", "MissingExtraError", "DiskFullError", "USER_ERRORS", "disk_full",
           "INTERRUPTED"]


class InputError(ValueError):
    """Bad user input: the message names the input (a path, a key, a value) and the problem."""


class MissingExtraError(ImportError):
    """An optional dependency (a pip extra of d2r) that a setting or command needs is missing."""


class DiskFullError(InputError):
    """No space left on the device of an output: ``no space left on device writing TARGET
    (DETAIL)``."""

    def __init__(self, target: object, detail: str) -> None:
        super().__init__(f"no space left on device writing {target} ({detail})")


USER_ERRORS = (InputError, MissingExtraError, FileNotFoundError, NotADirectoryError,
               IsADirectoryError, PermissionError)
"""What a user's input can cause; the CLIs print these as ``d2r CMD: error: MESSAGE``."""

INTERRUPTED = 128 + signal.SIGINT
"""Exit status of a command stopped by Ctrl-C (SIGINT), as a shell reports it."""

_ENOSPC_TEXT = (os.strerror(errno.ENOSPC), f"errno = {errno.ENOSPC},")
"""How HDF5 reports a full disk inside the message of the error h5py raises."""


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc``, or an exception it was raised from or while handling, reports a full
    disk: an ``OSError`` with errno ``ENOSPC``, or an h5py error whose HDF5 message names it."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno == errno.ENOSPC:
            return True
        if isinstance(current, (OSError, RuntimeError)) \
                and any(text in str(current) for text in _ENOSPC_TEXT):
            return True
        current = current.__cause__ or current.__context__
    return False
