"""What every sampler shares: per-step events for observers, pooled hidden-state capture, the result.

A sampler runs generation for a batch of rendered prompts and, after every forward pass, hands a
:class:`StepEvent` to each :class:`StepObserver` (the tracer, a streaming guard, …). Hidden states never leave
the forward pass whole: :class:`HiddenCapture` pools each requested layer's output to one vector per sequence
inside the module hook, so nothing of size ``layers × sequence × D`` is ever kept.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import SriError


@dataclass
class StepEvent:
    """One sampler step.

    ``states[layer]`` is ``[B, D]``: for AR, the hidden state at the position fed in this forward (the one that
    *produces* this step's token); for diffusion, the response slots pooled under the trace's convention.
    ``finished[b]`` is True once sequence ``b`` has ended (EOS or stopped) at or before this step.
    ``trailing`` marks the AR sampler's extra forward after the last step (no new token), which the
    ``generated`` pooling needs. Observers end sequences early with :meth:`request_stop`.
    """

    step: int
    tokens: torch.Tensor | None
    states: dict[int, torch.Tensor]
    finished: torch.Tensor
    trailing: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    stop: torch.Tensor | None = None
    stop_reason: dict[int, str] = field(default_factory=dict)

    def request_stop(self, rows: torch.Tensor | list[int], reason: str = "observer") -> None:
        """Ask the sampler to end the given sequences after this step."""
        if self.stop is None:
            self.stop = torch.zeros_like(self.finished)
        rows_t = torch.as_tensor(rows)
        idx = rows_t.nonzero().flatten() if rows_t.dtype == torch.bool else rows_t.long().flatten()
        for i in idx.tolist():
            if not bool(self.finished[i]) and not bool(self.stop[i]):
                self.stop[i] = True
                self.stop_reason[i] = reason


@dataclass
class GenerationResult:
    """Outcome of one batch. ``tokens`` is ``[B, n]`` generated ids (pad after the end of each sequence)."""

    tokens: torch.Tensor
    end_step: list[int]  # last step that belongs to the sequence (1-based; = steps if it never ended early)
    ended_by: list[str]  # "length", "eos" or an observer's stop reason
    timings: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)


class StepObserver:
    """Base class for things that watch generation step by step. Override what you need."""

    def on_start(self, batch_size: int, prompt_lengths: list[int]) -> None:
        """Called once per batch, before the first forward."""

    def on_step(self, event: StepEvent) -> None:
        """Called after every forward with that step's pooled states."""

    def on_end(self, result: GenerationResult) -> None:
        """Called once per batch when generation is over."""


class HiddenCapture:
    """Forward hooks that pool requested hidden states as each forward pass happens.

    For a forward over ``h ∈ R^{B×S×D}`` the hook stores ``pooled[b] = Σ_s w[b, s] · h[b, s]`` where ``w`` was set
    with :meth:`set_weights` before the call; ``w=None`` selects the last position. Only ``[B, D]`` per layer
    is kept (float32, detached).
    """

    def __init__(self, modules: dict[int, nn.Module]) -> None:
        self.modules = modules
        self.weights: torch.Tensor | None = None
        self.pooled: dict[int, torch.Tensor] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> HiddenCapture:
        for layer, module in self.modules.items():
            self._handles.append(module.register_forward_hook(self._hook(layer)))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def set_weights(self, weights: torch.Tensor | None) -> None:
        self.weights = weights

    def _hook(self, layer: int):
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            hidden = output[0] if isinstance(output, tuple) else output
            with torch.no_grad():
                if self.weights is None:
                    pooled = hidden[:, -1, :].float()
                else:
                    w = self.weights.to(hidden.device, torch.float32)
                    pooled = torch.bmm(w.unsqueeze(1), hidden.float()).squeeze(1)
            self.pooled[layer] = pooled.detach()

        return hook

    def pop(self) -> dict[int, torch.Tensor]:
        out, self.pooled = self.pooled, {}
        return out


def notify_step(observers: list[StepObserver], event: StepEvent) -> None:
    for obs in observers:
        obs.on_step(event)


def check_finite(config: Any) -> None:
    """One-line :class:`SriError` for a non-finite number (nan, inf) in a sampler config's fields, before any
    other check (``nan < 0`` is false, so range checks alone let it through)."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise SriError(f"{f.name.replace('_', '-')} must be a finite number (got {value}); give an ordinary "
                           "number (nan and inf are not settings)")
