"""Pooling conventions: how per-forward hidden states become the step representation φ_t ∈ R^D.

Both conventions of the authors' code are available and every trace records which one it used:

- ``producing`` (AR, authors' AR code): φ_t = mean_{s≤t} h(position that produces token s); step 1 is the last
  prompt token.
- ``generated`` (AR, the paper's text "mean over generated tokens"): φ_t = mean_{s≤t} h(position of token s).
- ``all-slots`` (diffusion, authors' diffusion code): φ_t = mean over every response slot at forward t,
  still-masked slots included.
- ``committed`` (diffusion): φ_t = mean over the response slots already committed at forward t (all slots at a
  step where none is committed yet).

After a sequence ends (EOS or a guard stop) at step e < T, the remaining steps follow one of two rules (the
``after_end`` field of every pooling, recorded in the compatibility key):

- ``repeat-state`` (default; the SRI authors' ``LlamaWrapper._collectActivationsAndRefusals`` @ 87ebc59): the raw
  last state h_e is appended for the T − e remaining steps *before* the running mean, so for t > e
  φ_t = (Σ_{s≤e} h_s + (t − e)·h_e) / t — φ keeps moving towards h_e. This produced the paper's numbers.
- ``hold-mean`` (poolings ``producing-hold`` / ``generated-hold``): φ_t = φ_e for t > e. φ then summarises only
  the tokens actually generated and does not depend on T, which suits comparing responses of different lengths;
  it is not what the paper measured.

For the diffusion poolings (φ_t = h_t, no running mean) both rules give φ_t = h_e.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import SriError
from .registry import Registry
from .sampling.base import StepEvent, StepObserver


@dataclass(frozen=True)
class Pooling:
    name: str
    sampler_kinds: tuple[str, ...]
    description: str
    offset: int  # which forward holds the first state: 0 → forward 1, 1 → forward 2 (AR 'generated')
    running_mean: bool
    after_end: str = "repeat-state"  # or "hold-mean": see the module docstring


POOLINGS: Registry[Pooling] = Registry("pooling")
for _p in (
        Pooling("producing", ("ar",), "running mean of the state that produces each token (authors' AR code)", 0,
                True),
        Pooling("generated", ("ar",), "running mean of the states of the generated tokens (paper's text)", 1, True),
        Pooling("producing-hold", ("ar",), "as 'producing', but φ is held at its value at the end of the sequence",
                0, True, "hold-mean"),
        Pooling("generated-hold", ("ar",), "as 'generated', but φ is held at its value at the end of the sequence",
                1, True, "hold-mean"),
        Pooling("all-slots", ("diffusion",), "mean over all response slots, masked included (authors' code)", 0,
                False),
        Pooling("committed", ("diffusion",), "mean over the committed response slots only", 0, False),
):
    POOLINGS.add(_p.name, _p)

DEFAULT_POOLING = {"ar": "producing", "diffusion": "all-slots"}


def get_pooling(name: str | None, sampler_kind: str) -> Pooling:
    """The pooling convention ``name`` (or the sampler's default), checked against the sampler kind."""
    pooling = POOLINGS[name or DEFAULT_POOLING[sampler_kind]]
    if sampler_kind not in pooling.sampler_kinds:
        ok = [p for p, v in POOLINGS.items() if sampler_kind in v.sampler_kinds]
        raise SriError(f"pooling '{name}' does not apply to the {sampler_kind} sampler; use one of {', '.join(ok)}")
    return pooling


def pool_steps(forwards: torch.Tensor, end_step: list[int], steps: int, pooling: Pooling) -> torch.Tensor:
    """φ ``[B, T, D]`` (float32) from per-forward states ``[F, B, D]`` under ``pooling``.

    With h_t = ``forwards[t − 1 + offset]`` and e_b = ``end_step[b]``:

    - running mean, ``repeat-state`` (authors' AR code): h̃_t = h_{min(t, e_b)}, φ_t = (1/t) Σ_{s≤t} h̃_s;
    - running mean, ``hold-mean``: φ_t = (1/min(t, e_b)) Σ_{s≤min(t, e_b)} h_s;
    - otherwise (diffusion): φ_t = h_{min(t, e_b)}.

    Sums run through ``torch.cumsum`` (float64 accumulation on the CPU), so :class:`sri.guard.OnlineSignal`
    reproduces them bit for bit. Raises ``RuntimeError`` if fewer than ``max(end_step)`` states were collected.
    """
    states = forwards[pooling.offset:]
    need = max(end_step)
    if states.shape[0] < need:
        raise RuntimeError(f"pooling '{pooling.name}' needs {need} states, got {states.shape[0]}")
    states = states[:need]
    t = torch.arange(1, steps + 1).view(-1, 1)  # [T, 1]
    idx = torch.minimum(t, torch.tensor(end_step).view(1, -1)) - 1  # [T, B]: step whose state is used at t
    if pooling.running_mean and pooling.after_end == "repeat-state":
        padded = _gather_steps(states, idx)  # [T, B, D]: h_{min(t, e)}
        counts = torch.arange(1, steps + 1, dtype=states.dtype).view(-1, 1, 1)
        return (padded.cumsum(0) / counts).transpose(0, 1).contiguous()
    if pooling.running_mean:
        counts = torch.arange(1, need + 1, dtype=states.dtype).view(-1, 1, 1)
        states = states.cumsum(0) / counts
    return _gather_steps(states, idx).transpose(0, 1).contiguous()


def _gather_steps(states: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``out[t, b] = states[idx[t, b], b]`` for states ``[F, B, D]`` and indices ``[T, B]`` → ``[T, B, D]``."""
    return states.gather(0, idx.unsqueeze(-1).expand(-1, -1, states.shape[-1]))


class StateCollector(StepObserver):
    """Keeps each forward's pooled ``[B, D]`` states (on the CPU) for the layers being traced."""

    def __init__(self, layers: list[int]) -> None:
        self.layers = list(dict.fromkeys(layers))
        self.forwards: dict[int, list[torch.Tensor]] = {}

    def on_start(self, batch_size: int, prompt_lengths: list[int]) -> None:
        self.forwards = {layer: [] for layer in self.layers}

    def on_step(self, event: StepEvent) -> None:
        for layer in self.layers:
            self.forwards[layer].append(event.states[layer].cpu())

    def pooled(self, end_step: list[int], steps: int, pooling: Pooling) -> dict[int, torch.Tensor]:
        return {layer: pool_steps(torch.stack(h), end_step, steps, pooling) for layer, h in self.forwards.items()}
