"""Where traced batches run: ``local`` (this process, one batch after another) or ``ray`` (a Ray Data actor pool).

The tracer plans (render, length checks, store, length-sorted batches), an executor yields finished batches, and
the tracing process writes them — the only writer of the run folder. Execution settings are not part of a run's
key: a run started on one backend may be resumed on the other. Ray is an optional extra (``sri[ray]``) imported
only when the ray backend is used.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ...errors import SriError
from ...models.adapter import DEFAULT_SYSTEM_PROMPT

if TYPE_CHECKING:
    from ...models import ModelAdapter
    from ...sampling import StepObserver
    from ..tracer import BatchOutcome, TracePlan

__all__ = ["BACKENDS", "Execution", "Executor", "ModelSpec", "load_for_execution", "make_executor",
           "parse_workers"]

BACKENDS = ("local", "ray")
_WORKERS = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


#: the most Ray workers one run may ask for (one model copy each)
MAX_WORKERS = 1024


def parse_workers(spec: str | int | Sequence[int]) -> tuple[int, int]:
    """``"2"`` → (2, 2), ``"1-4"`` → (1, 4) (an autoscaling pool), with one-line errors."""
    if isinstance(spec, int):
        spec = str(spec)
    elif not isinstance(spec, str):
        spec = "-".join(str(int(v)) for v in spec)
    m = _WORKERS.match(spec)
    if not m:
        raise SriError(f"--workers '{spec}' is not understood; give N or MIN-MAX, e.g. 2 or 1-4")
    lo = int(m.group(1))
    hi = int(m.group(2)) if m.group(2) is not None else lo
    if lo < 1 or hi < lo:
        raise SriError(f"--workers '{spec}' needs 1 ≤ MIN ≤ MAX; give e.g. 2 or 1-4")
    if hi > MAX_WORKERS:
        raise SriError(f"--workers '{spec}' asks for more than {MAX_WORKERS} workers; give at most {MAX_WORKERS}")
    return lo, hi


@dataclass(frozen=True)
class ModelSpec:
    """How to load the traced model in another process (a Ray worker): the ``--model`` spec and load options.

    ``device``/``dtype`` are as given (``auto``); the executor resolves them for the workers' hardware.
    """

    name: str
    diffusion: bool = False
    device: str = "auto"
    dtype: str = "auto"
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT
    options: dict[str, Any] = field(default_factory=dict)  # trust_remote_code, stop_tokens, family, mask_id …

    def load(self, device: str | None = None, dtype: str | None = None) -> ModelAdapter:
        from ...models import load_diffusion_model, load_model

        loader = load_diffusion_model if self.diffusion else load_model
        return loader(self.name, device=device or self.device, dtype=dtype or self.dtype,
                      system_prompt=self.system_prompt, **self.options)


@dataclass
class Execution:
    """How to run a trace. ``workers``, ``gpus_per_worker``, ``address`` and ``num_cpus`` apply to ``ray`` only.

    ``address``: ``local`` starts a private single-node cluster (loopback, private temp dir, shut down at the end),
    ``auto`` joins the cluster of ``ray start`` on this machine, ``HOST:PORT`` a given head node.
    ``max_failed_batches``: failing batches skipped before the run stops (0: the first one stops it).
    ``max_retries``: restarts of a worker process that died (and retries of its batch) before the batch fails.
    ``model``: how workers load the model (the ray backend needs it).
    """

    backend: str = "local"
    workers: tuple[int, int] = (1, 1)
    gpus_per_worker: float = 0.0
    address: str = "local"
    max_failed_batches: int = 0
    max_retries: int = 2
    num_cpus: int | None = None  # CPUs of a private local cluster (default: all)
    model: ModelSpec | None = None
    log: Callable[[str], None] | None = None

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise SriError(f"backend '{self.backend}' is unknown; use local or ray")
        self.workers = parse_workers(self.workers)
        if self.gpus_per_worker < 0:
            raise SriError(f"--gpus-per-worker must be ≥ 0 (got {self.gpus_per_worker})")
        if self.max_failed_batches < 0:
            raise SriError(f"--max-failed-batches must be ≥ 0 (got {self.max_failed_batches})")
        if self.max_retries < 0:
            raise SriError(f"max_retries must be ≥ 0 (got {self.max_retries})")
        ray_only = [name for name, given in (("--workers", self.workers != (1, 1)),
                                             ("--gpus-per-worker", self.gpus_per_worker != 0),
                                             ("--ray-address", self.address != "local"),
                                             ("num_cpus", self.num_cpus is not None)) if given]
        if self.backend == "local" and ray_only:  # silently ignoring them would hide a forgotten --backend ray
            raise SriError(f"{', '.join(ray_only)} appl{'ies' if len(ray_only) == 1 else 'y'} to --backend ray "
                           "only; add --backend ray or drop them")

    @classmethod
    def from_config(cls, data: dict[str, Any] | None, **extra: Any) -> Execution:
        """From a run config's ``execution:`` section (keys as the dataclass fields; ``workers`` may be "1-4")."""
        data = dict(data or {})
        known = {"backend", "workers", "gpus_per_worker", "address", "max_failed_batches", "max_retries", "num_cpus"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SriError(f"execution: unknown key(s) {', '.join(unknown)}; use {', '.join(sorted(known))}")
        return cls(**data, **extra)


class Executor(Protocol):
    def run(self, adapter: ModelAdapter, plan: TracePlan,
            observers: Sequence[StepObserver]) -> Iterator[BatchOutcome]: ...


def make_executor(execution: Execution) -> Executor:
    if execution.backend == "ray":
        from .ray import RayExecutor

        return RayExecutor(execution)
    from .local import LocalExecutor

    return LocalExecutor()


def load_for_execution(spec: ModelSpec, execution: Execution) -> ModelAdapter:
    """The adapter the tracing process needs: the loaded model (local), or for ray a planning adapter built from
    tokenizer, config and fingerprint without loading weights (autoregressive models; a diffusion model is loaded
    on the CPU here), which describes the device and dtype the workers will use."""
    if execution.backend != "ray":
        return spec.load()
    from .planning import planning_adapter

    return planning_adapter(spec, execution)
