"""Progress for long work on stderr; silent when ``enabled`` is False.

A terminal gets rich bars. Anything else — a log file, a pipe, CI, ``nohup`` — gets plain lines, one at the start,
one every ``SRI_PROGRESS_INTERVAL`` seconds (default 30) while the work runs, and one at the end::

    tracing: 24/96 (25%), 0.41/s, elapsed 0:00:58, ETA 0:02:55
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from .errors import SriError

console = Console(stderr=True)

#: environment variable: seconds between plain progress lines when stderr is not a terminal
INTERVAL_ENV = "SRI_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 30.0


def progress_interval() -> float:
    """Seconds between plain progress lines: ``$SRI_PROGRESS_INTERVAL`` (unset or empty: 30).

    Raises :class:`~sri.errors.SriError` if it is set to anything but a positive finite number of seconds."""
    raw = os.environ.get(INTERVAL_ENV, "").strip()
    if not raw:
        return DEFAULT_INTERVAL
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise SriError(f"{INTERVAL_ENV} is {raw[:40]!r}; set it to a positive number of seconds between progress "
                       "lines (e.g. 10), or unset it for 30")
    return value


def _clock(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class PlainProgress:
    """Progress as plain text lines on a stream: at :meth:`start`, every ``interval`` seconds from a background
    thread (so a slow step still shows the work is alive), and at :meth:`stop`.

    Rate and ETA count only the work done since the start (work already done when resuming is not timed).
    """

    def __init__(self, description: str, total: int, *, done: int = 0, metric: str | None = None,
                 stream: TextIO | None = None, interval: float | None = None) -> None:
        self.description = description.strip()
        self.total, self.completed, self.initial = total, done, done
        self.metric, self.value = metric, None
        self.stream = stream
        self.interval = progress_interval() if interval is None else interval
        self._t0 = time.monotonic()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def line(self) -> str:
        """The current progress as one line."""
        elapsed = time.monotonic() - self._t0
        done, total = self.completed, self.total
        parts = [f"{self.description}: {done}/{total}" + (f" ({100 * done / total:.0f}%)" if total else "")]
        rate = (done - self.initial) / elapsed if elapsed > 0 else 0.0
        parts.append(f"{rate:.3g}/s" if rate >= 0.01 or rate == 0 else f"{rate * 3600:.3g}/h")
        if self.metric is not None:
            parts.append(f"{self.metric} " + ("–" if self.value is None else f"{self.value:.3f}"))
        parts.append(f"elapsed {_clock(elapsed)}")
        remaining = max(total - done, 0)
        parts.append("ETA " + (_clock(remaining / rate) if rate > 0 else ("0:00:00" if not remaining else "?")))
        return ", ".join(parts)

    def emit(self) -> None:
        with self._lock:
            stream = self.stream or sys.stderr
            stream.write(self.line() + "\n")
            stream.flush()

    def advance(self, n: int = 1) -> None:
        self.completed += n

    def update(self, completed: int, value: float | None = None) -> None:
        self.completed, self.value = completed, value

    def start(self) -> None:
        self._t0 = time.monotonic()
        self.emit()
        self._thread = threading.Thread(target=self._run, name="sri-progress", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.emit()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.emit()


def _plain() -> bool:
    """True when progress goes to something that is not a terminal (a log file, a pipe)."""
    return not console.is_terminal


@contextmanager
def _plain_progress(description: str, total: int, **kwargs) -> Iterator[PlainProgress]:
    plain = PlainProgress(description, total, **kwargs)
    plain.start()
    try:
        yield plain
    finally:
        plain.stop()


@contextmanager
def progress_bar(description: str, total: int, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``; draws a bar with count, elapsed and remaining time on stderr (plain lines at a
    steady interval when stderr is not a terminal)."""
    if not enabled:
        yield lambda n=1: None
        return
    if _plain():
        with _plain_progress(description, total) as plain:
            yield plain.advance
        return
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)


@contextmanager
def metric_bar(description: str, total: int, *, metric: str, done: int = 0,
               enabled: bool = True) -> Iterator[Callable[[int, float | None], None]]:
    """Yield ``update(completed, value)``: a bar that starts at ``done`` and shows the latest ``metric`` value
    (e.g. the training loss) beside count, elapsed and remaining time (plain lines when not a terminal)."""
    if not enabled:
        yield lambda completed, value: None
        return
    if _plain():
        with _plain_progress(description, total, done=done, metric=metric) as plain:
            yield plain.update
        return
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn(f"{metric} {{task.fields[value]}}"), TimeElapsedColumn(), TextColumn("eta"),
               TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(description, total=total, completed=done, value="–")
        yield lambda completed, value: bar.update(task, completed=completed,
                                                  value="–" if value is None else f"{value:.3f}")
