"""Progress bars (rich) for long work; silent when ``enabled`` is False."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)


@contextmanager
def progress_bar(description: str, total: int, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``; draws a bar with count, elapsed and remaining time on stderr."""
    if not enabled:
        yield lambda n=1: None
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
    (e.g. the training loss) beside count, elapsed and remaining time."""
    if not enabled:
        yield lambda completed, value: None
        return
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn(f"{metric} {{task.fields[value]}}"), TimeElapsedColumn(), TextColumn("eta"),
               TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(description, total=total, completed=done, value="–")
        yield lambda completed, value: bar.update(task, completed=completed,
                                                  value="–" if value is None else f"{value:.3f}")

