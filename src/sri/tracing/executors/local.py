"""The local executor: every batch in this process, one after another (the tracer's original loop)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from ...models import ModelAdapter
from ...sampling import StepObserver
from ..tracer import BatchOutcome, TracePlan, run_batch


class LocalExecutor:
    def run(self, adapter: ModelAdapter, plan: TracePlan,
            observers: Sequence[StepObserver]) -> Iterator[BatchOutcome]:
        for k in range(len(plan.batches)):
            try:
                output = run_batch(adapter, plan.job, plan.texts(k), observers)
            except Exception as e:  # the writer decides: stop (re-raise) or skip
                yield BatchOutcome(k, error=f"{type(e).__name__}: {e}", exc=e)
                continue
            yield BatchOutcome(k, output=output)
