"""SRI Guard behind the defense interface: rows carry their SRI signal (``sri``), the guard scores it.

``streaming=False`` flags with the full-signal detector (the paper's guard); ``streaming=True`` with the
first flagged prefix. The time is the detector's; the per-step σ computation inside generation is timed by
:class:`sri.guard.GuardObserver` where the guard runs live.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..guard.guard import Guard, signal_matrix
from .base import Defense


class SRIGuardDefense(Defense):
    name = "sri-guard"

    def __init__(self, guard: Guard, streaming: bool = False) -> None:
        self.guard = guard
        self.streaming = streaming
        if streaming:
            self.name = "sri-guard-streaming"  # type: ignore[misc]

    def _run(self, rows: Sequence[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, None]:
        x, key = signal_matrix(rows, "rows")
        self.guard.check_key(key, "rows")
        scores = self.guard.score(x)
        flags = self.guard.first_flag(x) > 0 if self.streaming else scores > self.guard.threshold
        return scores, flags, None
