"""Samplers: autoregressive (KV-cached) and masked diffusion, sharing the step-event interface.

Each sampler kind registers how to run a batch and how to turn its result into trace rows; the tracer only
talks to this registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..registry import Registry
from .ar import ARConfig, ar_rows, sample_ar
from .base import GenerationResult, HiddenCapture, StepEvent, StepObserver
from .diffusion import DiffusionConfig, diffusion_rows, sample_diffusion


@dataclass(frozen=True)
class SamplerKind:
    """``run(adapter, input_ids, attention_mask, config, layers, observers, pooling)`` and
    ``rows(adapter, result, config)`` for one sampler kind."""

    run: Callable[..., GenerationResult]
    rows: Callable[..., list[dict[str, Any]]]


def resolve_sampler(sampler: Any, adapter: Any) -> Any:
    """``sampler`` with every model-dependent default fixed for ``adapter`` (the diffusion schedule of its
    family); configs without such defaults come back unchanged. What provenance and trace keys must record."""
    resolve = getattr(sampler, "resolve", None)
    return resolve(adapter) if callable(resolve) else sampler


SAMPLERS: Registry[SamplerKind] = Registry("sampler kind")
SAMPLERS.add("ar", SamplerKind(run=sample_ar, rows=ar_rows))
SAMPLERS.add("diffusion", SamplerKind(run=sample_diffusion, rows=diffusion_rows))

__all__ = ["SAMPLERS", "ARConfig", "DiffusionConfig", "GenerationResult", "HiddenCapture", "SamplerKind",
           "StepEvent", "StepObserver", "resolve_sampler", "sample_ar", "sample_diffusion"]
