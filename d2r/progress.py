"""Progress of long steps: a tqdm bar on a terminal, periodic log lines elsewhere.

Every step that can last more than a couple of seconds wraps its loop in
:func:`track` (or updates a :func:`progress` counter).  When stderr is a
terminal the user sees a tqdm bar; when it is not (CI, ``nohup``, a log file)
a plain line ``STEP: DONE/TOTAL UNIT (P%), RATE UNIT/s, ETA 1m05s`` is logged
every :func:`interval` seconds (``D2R_PROGRESS_INTERVAL``, default 10; the
CLIs' ``--progress-interval``), plus one final line.  Log records go through
:class:`TqdmHandler` so they never break a bar.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Iterable, Iterator, Optional, TypeVar

from tqdm import tqdm

__all__ = ["track", "progress", "interval", "set_interval", "TqdmHandler", "Progress"]

logger = logging.getLogger("d2r.progress")

T = TypeVar("T")

INTERVAL_ENV = "D2R_PROGRESS_INTERVAL"
DEFAULT_INTERVAL_S = 10.0
_interval: Optional[float] = None


def interval() -> float:
    """Seconds between two progress lines when stderr is not a terminal."""
    if _interval is not None:
        return _interval
    text = os.environ.get(INTERVAL_ENV, "")
    try:
        value = float(text) if text else DEFAULT_INTERVAL_S
    except ValueError:
        value = DEFAULT_INTERVAL_S
    return value if value > 0 else DEFAULT_INTERVAL_S


def set_interval(seconds: Optional[float]) -> None:
    """Override :func:`interval` for this process (``None``: back to the environment)."""
    global _interval
    _interval = None if seconds is None else float(seconds)


def _on_terminal() -> bool:
    return hasattr(sys.stderr, "isatty") and sys.stderr.isatty()


class Progress:
    """A counter of ``total`` units of work (``None`` if unknown) named ``desc``.

    ``update(n)`` advances it; ``close()`` ends it (a context manager does both
    jobs).  ``show``: None (default) draws a tqdm bar when stderr is a terminal
    and logs periodic lines otherwise; True always draws the bar; False is
    silent.
    """

    def __init__(self, desc: str, total: Optional[int] = None, *, unit: str = "img",
                 show: Optional[bool] = None) -> None:
        self.desc, self.total, self.unit = desc, total, unit
        self.done = 0
        self._start = self._last = time.monotonic()
        self._bar = None
        self._log = False
        if show or (show is None and _on_terminal()):
            self._bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr,
                             dynamic_ncols=True, leave=True)
        elif show is None:
            self._log = True

    def update(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif self._log:
            now = time.monotonic()
            if now - self._last >= interval():
                self._last = now
                logger.info("%s", self.line(now))

    def line(self, now: Optional[float] = None) -> str:
        """``desc: done/total unit (p%), rate unit/s, ETA ...`` as of ``now``."""
        elapsed = max((now or time.monotonic()) - self._start, 1e-9)
        rate = self.done / elapsed
        if self.total:
            left = max(self.total - self.done, 0)
            eta = _duration(left / rate) if rate > 0 else "?"
            return (f"{self.desc}: {self.done}/{self.total} {self.unit} "
                    f"({100 * self.done / self.total:.0f}%), {rate:.3g} {self.unit}/s, ETA {eta}")
        return f"{self.desc}: {self.done} {self.unit}, {rate:.3g} {self.unit}/s"

    def skip(self, n: int = 1) -> None:
        """Take ``n`` units out of the total (inputs found unusable: not work done)."""
        if self.total is not None:
            self.total = max(self.total - n, 0)
            if self._bar is not None:
                self._bar.total = self.total
                self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._log and self._last > self._start:
            self._log = False
            logger.info("%s: %d %s done in %s", self.desc, self.done, self.unit,
                        _duration(time.monotonic() - self._start))

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(desc: str, total: Optional[int] = None, *, unit: str = "img",
             show: Optional[bool] = None) -> Progress:
    """A :class:`Progress` counter (bar on a terminal, periodic lines elsewhere)."""
    return Progress(desc, total, unit=unit, show=show)


def track(iterable: Iterable[T], *, desc: str, total: Optional[int] = None, unit: str = "img",
          show: Optional[bool] = None) -> Iterator[T]:
    """Yield from ``iterable`` while counting it in a :class:`Progress` named ``desc``."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with Progress(desc, total, unit=unit, show=show) as bar:
        for item in iterable:
            yield item
            bar.update()


def _duration(seconds: float) -> str:
    """``65.2`` → ``"1m05s"``; ``3725`` → ``"1h02m"``."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class TqdmHandler(logging.StreamHandler):
    """A stderr log handler that prints through ``tqdm.write`` so a bar is redrawn below
    the message instead of being cut by it."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)
