"""One bootstrap for every interval sri reports, and its result type.

Percentile bootstrap (Efron): resample the prompts with replacement ``resamples`` times, recompute the
statistic, and take the (1 − level)/2 and (1 + level)/2 quantiles of the resampled values. ``paired=True``
resamples the rows of all arrays together (one prompt = one row of each array: rates, conditional shares);
``paired=False`` resamples each array on its own (stratified: AUROC and TPR of attack vs benign scores).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

LEVEL = 0.95
RESAMPLES = 1000
#: the most resamples accepted: the percentile interval is stable to ~0.1 point long before; more only costs time
MAX_RESAMPLES = 100_000
#: the fewest resamples of a percentile interval: below 1 / ((1 − LEVEL) / 2) = 40 its 2.5 % tail holds no resample,
#: so "low" and "high" are just the extremes of a handful of draws (with 1 resample, low = high)
MIN_RESAMPLES = 40


@dataclass(frozen=True)
class Estimate:
    """A statistic with its bootstrap interval; ``n`` is the size of the population it is a share of (or the
    number of prompts). ``None`` where undefined (an empty population, no defined resample)."""

    value: float | None
    low: float | None
    high: float | None
    n: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fmt(self, percent: bool = True) -> str:
        if self.value is None:
            return "–"
        k, unit = (100.0, "%") if percent else (1.0, "")
        ci = "" if self.low is None else f" [{k * self.low:.0f}–{k * self.high:.0f}]" if percent else \
            f" [{self.low:.2f}–{self.high:.2f}]"
        return f"{k * self.value:.1f}{unit}{ci}" if percent else f"{self.value:.2f}{ci}"


def bootstrap(arrays: Sequence[np.ndarray], statistic: Callable[..., float | None], *, resamples: int = RESAMPLES,
              level: float = LEVEL, seed: int = 0, paired: bool = True) -> tuple[float | None, float | None]:
    """Percentile-bootstrap interval ``(low, high)`` of ``statistic(*arrays)`` (see the module docstring).

    Resamples where the statistic is undefined (``None``/NaN, e.g. an empty denominator) are dropped; with no
    defined resample, or an empty array, the interval is ``(None, None)``.
    """
    arrays = [np.asarray(a) for a in arrays]
    if resamples <= 0 or any(len(a) == 0 for a in arrays):
        return None, None
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        if paired:
            idx = rng.integers(0, len(arrays[0]), size=len(arrays[0]))
            v = statistic(*(a[idx] for a in arrays))
        else:
            v = statistic(*(a[rng.integers(0, len(a), size=len(a))] for a in arrays))
        if v is not None and not np.isnan(v):
            values.append(v)
    if not values:
        return None, None
    alpha = (1 - level) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha])
    return float(low), float(high)


def share(flags: Sequence[bool] | np.ndarray, *, resamples: int = RESAMPLES, seed: int = 0) -> Estimate:
    """Mean of boolean ``flags`` with its bootstrap interval."""
    x = np.asarray(flags, dtype=bool)
    if x.size == 0:
        return Estimate(None, None, None, 0)
    low, high = bootstrap([x], lambda a: float(a.mean()), resamples=resamples, seed=seed)
    return Estimate(float(x.mean()), low, high, int(x.size))


def conditional_share(event: Sequence[bool] | np.ndarray, given: Sequence[bool] | np.ndarray, *,
                      resamples: int = RESAMPLES, seed: int = 0) -> Estimate:
    """#{event ∧ given} / #{given} with its bootstrap interval (resampling all prompts); ``None`` if no ``given``."""
    e, g = np.asarray(event, dtype=bool), np.asarray(given, dtype=bool)

    def ratio(ev: np.ndarray, gv: np.ndarray) -> float | None:
        return float((ev & gv).sum() / gv.sum()) if gv.any() else None

    value = ratio(e, g)
    if value is None:
        return Estimate(None, None, None, 0)
    low, high = bootstrap([e, g], ratio, resamples=resamples, seed=seed)
    return Estimate(value, low, high, int(g.sum()))


def ci_label(settings: dict | None) -> str:
    """How an analysis's intervals are described: ``95% bootstrap CIs``, or ``no CIs: bootstrap off`` for an
    analysis run with 0 resamples (whose estimates carry no interval)."""
    resamples = (settings or {}).get("bootstrap_resamples", RESAMPLES)
    level = (settings or {}).get("ci_level", LEVEL)
    return f"{level:.0%} bootstrap CIs" if resamples else "no CIs: bootstrap off"
