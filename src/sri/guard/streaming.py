"""The streaming guard: compute σ_t while the model generates and stop a sequence at the step it is flagged.

At every step the guard pools the step's state exactly as :mod:`sri.pooling` does (AR: running mean of the
per-forward states, accumulated in float64 like ``torch.cumsum`` on the CPU; diffusion: the step's pooled state
as is), turns it into σ_t with the guard's anchors (:func:`sri.signal.sri_signal`), scores the prefix
σ_1 … σ_t with the prefix-t detector and flags the sequence once the score exceeds τ_t. A flagged sequence is
stopped (or only marked, with ``stop=False``) and its answer replaced by the guard's refusal text.

Two ways in:

- :class:`GuardObserver` — a :class:`~sri.sampling.StepObserver` for this package's samplers
  (``sri trace --guard DIR``).
- :class:`GuardedGeneration` — for a user's own ``model.generate``: a forward hook on the guard's layer plus a
  ``StoppingCriteria`` (stops after the flagged token) and/or a ``LogitsProcessor`` (turns the flagged step's
  token into EOS). Greedy or sampled decoding alike; the guard reads states generation already computes.

A sequence that ends (EOS) before it is flagged is still checked on the remaining prefixes at the end — its φ
is extended there by the pooling's ``after_end`` rule, as in the traces — so the streaming verdict over a whole
generation equals :meth:`Guard.first_flag` on the stored signal; such late flags are marked ``when='after'``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import LogitsProcessor, StoppingCriteria

from ..errors import IncompatibleError, SriError
from ..models.adapter import ModelAdapter, folder_fingerprint
from ..models.causal import detect_family
from ..pooling import POOLINGS, Pooling
from ..sampling.base import GenerationResult, StepEvent, StepObserver
from ..signal import sri_signal
from .detectors import single_thread
from .guard import Guard, StepAnchors

STOP_REASON = "sri-guard"


@dataclass
class Verdict:
    """The streaming guard's decision for one sequence.

    ``flag_step``: signal step t at which the prefix was flagged (None: never). ``sampler_step``: the sampler
    step at which that happened while the sequence was still generating (None: only after it ended).
    ``stop_step``: the sampler step at which it was stopped (None: not stopped, e.g. monitor mode).
    ``when``: ``during`` generation or ``after`` it ended.
    """

    flagged: bool = False
    flag_step: int | None = None
    sampler_step: int | None = None
    stop_step: int | None = None
    when: str | None = None
    score: float | None = None
    threshold: float | None = None

    def to_row(self, refusal_text: str) -> dict[str, Any]:
        return {**asdict(self), "refusal_text": refusal_text if self.flagged else None}


class OnlineSignal:
    """σ_t for a batch, one forward at a time, identical to pooling all states first and applying the formula.

    For forward ``s`` a row contributes when ``s > offset`` and it was still generating at sampler step
    ``s − offset``; its signal step is then ``t = s − offset`` and
    φ_t = float32(Σ_{u≤t} h_{u+offset}) / t (running mean, sum kept in float64) or φ_t = h_{t+offset}.
    Each step only updates φ; σ is computed when a decision needs it (:meth:`sigma_through`), for all pending
    steps in one call, so a guard that decides every k steps pays the formula once per k steps.
    """

    def __init__(self, anchors: StepAnchors, pooling: Pooling, batch_size: int, steps: int) -> None:
        if anchors.harmless.shape[0] != steps:
            raise IncompatibleError(f"guard anchors have {anchors.harmless.shape[0]} steps, the guard {steps}")
        self.anchors = anchors
        self.pooling = pooling
        self.steps = steps
        dim = anchors.harmless.shape[1]
        self.sum = torch.zeros(batch_size, dim, dtype=torch.float64)
        self.phi = torch.zeros(batch_size, dim, dtype=torch.float32)
        self.last = torch.zeros(batch_size, dim, dtype=torch.float32)  # each row's newest raw state h
        self.phi_steps = torch.zeros(batch_size, steps, dim, dtype=torch.float32)
        self.count = torch.zeros(batch_size, dtype=torch.long)
        self.done = torch.zeros(batch_size, dtype=torch.long)  # σ is computed through this step
        self.sigma = torch.full((batch_size, steps), float("nan"), dtype=torch.float64)

    def push(self, state: torch.Tensor, rows: torch.Tensor) -> int | None:
        """Add this forward's ``[B, D]`` state for the boolean ``rows``; return the signal step they reached."""
        idx = rows.nonzero().flatten()
        if len(idx) == 0:
            return None
        h = state.detach().to("cpu", torch.float32)[idx]
        if h.shape[1] != self.sum.shape[1]:
            raise IncompatibleError(f"hidden size {h.shape[1]} differs from the guard's {self.sum.shape[1]}; "
                                    "use a guard fitted on this model")
        self.count[idx] += 1
        t = int(self.count[idx[0]])
        if t > self.steps:
            return None
        self.last[idx] = h
        if self.pooling.running_mean:
            self.sum[idx] += h.double()
            self.phi[idx] = self.sum[idx].float() / torch.tensor(float(t), dtype=torch.float32)
        else:
            self.phi[idx] = h
        self.phi_steps[idx, t - 1] = self.phi[idx]
        return t

    def sigma_through(self, t: int) -> torch.Tensor:
        """``[B, T]`` σ, computed for every row through step min(t, its last step); later entries are NaN."""
        limit = self.count.clamp(max=min(t, self.steps))
        pending = (self.done < limit).nonzero().flatten()
        if len(pending):
            lo, hi = int(self.done[pending].min()), int(limit[pending].max())
            a = self.anchors
            block = sri_signal(self.phi_steps[pending, lo:hi], a.harmless[lo:hi], a.harmful[lo:hi], a.tau, a.eps)
            step = torch.arange(lo, hi).view(1, -1)
            keep = (step >= self.done[pending].view(-1, 1)) & (step < limit[pending].view(-1, 1))
            self.sigma[pending, lo:hi] = torch.where(keep, block, self.sigma[pending, lo:hi])
            self.done[pending] = limit[pending]
        return self.sigma

    def extend(self, row: int) -> int:
        """Fill φ (and σ) after the row's end by the pooling's ``after_end`` rule, exactly as the traces do
        (:func:`sri.pooling.pool_steps`); return the row's last real step.

        ``repeat-state``: the last raw state h_e keeps being added to the running sum, φ_t = (Σ_{s≤e} h_s +
        (t − e)·h_e) / t; ``hold-mean`` (and non-running-mean poolings): φ_t = φ_e.
        """
        last = int(self.count[row].clamp(max=self.steps))
        self.sigma_through(self.steps)
        if last < self.steps:
            if self.pooling.running_mean and self.pooling.after_end == "repeat-state":
                h = self.last[row].double()
                for t in range(last + 1, self.steps + 1):
                    self.sum[row] += h
                    self.phi_steps[row, t - 1] = self.sum[row].float() / torch.tensor(float(t), dtype=torch.float32)
            else:
                self.phi_steps[row, last:] = self.phi[row]
            self.count[row] = self.steps
            self.sigma_through(self.steps)
            self.count[row] = last
        return last


class _Decider:
    """Scores prefixes with the guard's per-prefix detectors and keeps each row's verdict."""

    def __init__(self, guard: Guard, batch_size: int) -> None:
        if not guard.stream_thresholds:
            raise SriError("this guard has no streaming detectors; refit it with `sri guard fit --stream union`")
        self.guard = guard
        self.verdicts = [Verdict() for _ in range(batch_size)]

    def check(self, sigma: torch.Tensor, rows: list[int], t: int) -> list[int]:
        """Rows (of ``rows``, not yet flagged) whose prefix σ_1..σ_t is flagged now."""
        thr = self.guard.stream_thresholds.get(t)
        rows = [b for b in rows if not self.verdicts[b].flagged]
        if thr is None or not rows:
            return []
        scores = self.guard.detectors[t].score(sigma[rows, :t].numpy())
        hits = []
        for b, s in zip(rows, scores, strict=True):
            if s > thr:
                self.verdicts[b] = Verdict(True, t, score=float(s), threshold=thr)
                hits.append(b)
        return hits


def _check_pooling(guard: Guard) -> Pooling:
    if guard.anchors is None:
        streaming = "" if guard.stream_thresholds else " and no streaming detectors"
        raise SriError(f"this guard has no anchors{streaming}, so it cannot decide during generation; refit it with "
                       f"`sri guard fit --anchors FILE{' --stream union' if streaming else ''}`")
    name = guard.key.get("pooling")
    if name not in POOLINGS:
        raise IncompatibleError(f"guard pooling {name!r} is unknown to this version of sri")
    return POOLINGS[name]


class GuardObserver(StepObserver):
    """A step observer for :mod:`sri.sampling` samplers that flags (and by default stops) sequences.

    After a batch, ``verdicts`` holds one :class:`Verdict` per sequence, ``signals`` the online σ ``[B, T]`` and
    ``seconds`` the time the guard itself took; the same verdicts go into
    ``result.extra['row_fields'][b]['guard']`` so that the tracer writes them into the trace rows.
    """

    def __init__(self, guard: Guard, layer: int | None = None, stop: bool = True) -> None:
        self.guard = guard
        self.pooling = _check_pooling(guard)
        self.layer = int(guard.key["layer"]) if layer is None else layer
        self.stop = stop
        self.seconds = 0.0
        self.verdicts: list[Verdict] = []
        self.signals = torch.zeros(0)

    def check_compatible(self, adapter: ModelAdapter, sampler: Any, pooling: str, layers: list[int]) -> None:
        """One-line errors unless the run matches the guard's key (:data:`sri.tracing.store.KEY_FIELDS`) and
        captures its layer."""
        from ..tracing.store import check_compatible
        from ..tracing.tracer import trace_key

        check_compatible(trace_key(adapter, sampler, layers, pooling), self.guard.key, "this run", "the guard")
        if self.layer not in layers:
            raise IncompatibleError(f"the guard reads layer {self.layer} but the run captures {layers}; "
                                    f"add it, e.g. --layers {','.join(map(str, [*layers, self.layer]))}")

    def on_start(self, batch_size: int, prompt_lengths: list[int]) -> None:
        t0 = time.perf_counter()
        self.online = OnlineSignal(self.guard.anchors, self.pooling, batch_size, self.guard.steps)  # type: ignore[arg-type]
        self.decider = _Decider(self.guard, batch_size)
        self.done_after: list[torch.Tensor] = [torch.zeros(batch_size, dtype=torch.bool)]
        self._events: list[StepEvent] = []
        self.seconds = time.perf_counter() - t0

    def on_step(self, event: StepEvent) -> None:
        t0 = time.perf_counter()
        with single_thread():
            self._on_step(event)
        self.seconds += time.perf_counter() - t0

    def _on_step(self, event: StepEvent) -> None:
        if self._events:  # the previous step's stops are final now that every observer has seen it
            prev = self._events[-1]
            done = prev.finished.cpu() | self.done_after[-1]
            if prev.stop is not None:
                done |= prev.stop.cpu()
            self.done_after.append(done)
        self._events.append(event)
        s = event.step
        offset = self.pooling.offset
        if s > offset:
            rows = ~self.done_after[s - offset - 1]  # still generating at sampler step s − offset
            t = self.online.push(event.states[self.layer], rows)
            if t is not None and t in self.guard.stream_thresholds:
                alive = rows.nonzero().flatten().tolist()
                for b in self.decider.check(self.online.sigma_through(t), alive, t):
                    v = self.decider.verdicts[b]
                    live = not event.trailing and not bool(event.finished[b])
                    v.when = "during" if live else "after"
                    v.sampler_step = s if live else None
                    if live and self.stop:
                        event.request_stop([b], STOP_REASON)
                        v.stop_step = s

    def on_end(self, result: GenerationResult) -> None:
        t0 = time.perf_counter()
        with single_thread():
            self._finish()
        self.seconds += time.perf_counter() - t0
        fields = result.extra.setdefault("row_fields", [{} for _ in self.verdicts])
        for b, v in enumerate(self.verdicts):
            fields[b]["guard"] = {**v.to_row(self.guard.refusal_text), "seconds_batch": self.seconds}

    def _finish(self) -> None:
        finish_rows(self.online, self.decider, self.guard.steps)
        self.verdicts = self.decider.verdicts
        self.signals = self.online.sigma_through(self.guard.steps).clone()


def finish_rows(online: OnlineSignal, decider: _Decider, steps: int, rows: list[int] | None = None) -> None:
    """After generation: extend every row that ended early (all, or ``rows``) by the pooling's ``after_end``
    rule and check its remaining prefixes, so the verdicts equal :meth:`Guard.first_flag` on the stored signal
    (late flags are marked ``when='after'``)."""
    for b in range(len(decider.verdicts)) if rows is None else rows:
        last = online.extend(b)
        if last == 0 or decider.verdicts[b].flagged:
            continue
        for t in range(last + 1, steps + 1):
            if decider.check(online.sigma, [b], t):
                decider.verdicts[b].when = "after"
                break


# ------------------------------------------------------------------------------------------ transformers
def model_fingerprint(model: torch.nn.Module) -> str:
    """The fingerprint :func:`sri.models.load_model` gives this model (local folder or Hub id)."""
    source = str(getattr(model, "name_or_path", "") or getattr(model.config, "_name_or_path", ""))
    if source and Path(source).is_dir():
        return folder_fingerprint(Path(source))
    return f"hub:{source}@{getattr(model.config, '_commit_hash', None) or 'unknown'}"


class GuardedGeneration:
    """Attach a guard to ``model.generate``::

        with GuardedGeneration(guard, model) as watch:
            out = model.generate(**batch, max_new_tokens=64, stopping_criteria=[watch.stopping_criteria])
        texts = watch.apply(decoded_texts)     # flagged rows → the guard's refusal text

    The guard's layer is hooked for the duration of the block; each ``generate`` call (recognised by its prefill
    forward) is watched for its first T steps. Greedy or sampled decoding, with or without a KV cache; not beam
    search. The model must be the one the guard was fitted on (same fingerprint and hidden size) and the
    guard's pooling an AR one.
    """

    def __init__(self, guard: Guard, model: torch.nn.Module | ModelAdapter, *, stop: bool = True,
                 eos_token_id: int | list[int] | None = None, check_fingerprint: bool = True) -> None:
        self.guard = guard
        self.pooling = _check_pooling(guard)
        if guard.key.get("sampler") != "ar":
            raise IncompatibleError(f"the guard was fitted on {guard.key.get('sampler')!r} traces; `generate` is "
                                    "autoregressive — fit a guard on AR traces")
        if isinstance(model, ModelAdapter):  # what sri.models.load_model returns: guard the model inside it
            model = model.model
        family = detect_family(model)
        if family is None:
            raise SriError(f"{type(model).__name__} has no known layer layout; add a Family in sri/models/causal.py")
        fingerprint = model_fingerprint(model)
        if check_fingerprint and fingerprint != guard.key.get("fingerprint"):
            raise IncompatibleError(f"this model ({fingerprint}) is not the one the guard was fitted on "
                                    f"({guard.key.get('fingerprint')}); fit a guard for it")
        adapter = ModelAdapter(model=model, tokenizer=None, family=family, name="", fingerprint=fingerprint)
        if adapter.hidden_size != guard.key.get("hidden_size"):
            raise IncompatibleError(f"model hidden size {adapter.hidden_size} differs from the guard's "
                                    f"{guard.key.get('hidden_size')}")
        self.module = adapter.layer_module(int(guard.key["layer"]))
        eos = eos_token_id if eos_token_id is not None else model.generation_config.eos_token_id
        self.eos = torch.tensor([eos] if isinstance(eos, int) else list(eos or []), dtype=torch.long)
        self.stop = stop
        self.seconds = 0.0
        self._verdicts: list[Verdict] = []
        self._ended: torch.Tensor | None = None  # rows that ended (EOS or stopped by us) in the newest generate
        self._pending = False  # the newest generate's ended rows are not yet extended past their end
        self.stopping_criteria = GuardStoppingCriteria(self)
        self.logits_processor = GuardLogitsProcessor(self)
        self._handle = self.module.register_forward_hook(self._hook)
        self._states: list[torch.Tensor] = []
        self._processed = 0

    # context manager ------------------------------------------------------------------------------
    def __enter__(self) -> GuardedGeneration:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._handle.remove()

    # per forward ----------------------------------------------------------------------------------
    def _hook(self, module: torch.nn.Module, inputs: Any, output: Any) -> None:
        t0 = time.perf_counter()
        hidden = output[0] if isinstance(output, tuple) else output
        with single_thread():
            continuing = self._states and hidden.shape[1] in (1, self.prompt_len + len(self._states))
            if not continuing:  # a prefill: a new generate call (without a KV cache every forward is whole)
                self._start(hidden.shape[0], hidden.shape[1])
            self._states.append(hidden[:, -1, :].detach().to("cpu", torch.float32))
        self.seconds += time.perf_counter() - t0

    def _start(self, batch_size: int, prompt_len: int) -> None:
        self.online = OnlineSignal(self.guard.anchors, self.pooling, batch_size, self.guard.steps)  # type: ignore[arg-type]
        self.decider = _Decider(self.guard, batch_size)
        self._verdicts = self.decider.verdicts
        self._ended = torch.zeros(batch_size, dtype=torch.bool)
        self._pending = True
        self.prompt_len = prompt_len
        self._states = []
        self._processed = 0

    def _advance(self, input_ids: torch.Tensor) -> list[int]:
        """Process the newest forward (once); return rows flagged by it that are still generating."""
        t0 = time.perf_counter()
        with single_thread():
            hits = self._process(input_ids)
        self.seconds += time.perf_counter() - t0
        return hits

    def _process(self, input_ids: torch.Tensor) -> list[int]:
        s = len(self._states)
        hits: list[int] = []
        if s > self._processed:
            self._processed = s
            generated = input_ids[:, self.prompt_len:].cpu()

            def alive_at(step: int) -> torch.Tensor:  # no EOS among tokens 1 … step−1 and not stopped by us
                before = generated[:, :step - 1]
                return ~(torch.isin(before, self.eos).any(1) | self.ended_before(step))

            self._ended = ~alive_at(generated.shape[1] + 1)
            offset = self.pooling.offset
            if s > offset:
                rows = alive_at(s - offset)
                t = self.online.push(self._states[-1], rows)
                if t is not None and t in self.guard.stream_thresholds:
                    live = alive_at(s)
                    for b in self.decider.check(self.online.sigma_through(t), rows.nonzero().flatten().tolist(), t):
                        v = self._verdicts[b]
                        v.when, v.sampler_step = ("during", s) if bool(live[b]) else ("after", None)
                        if bool(live[b]):
                            hits.append(b)
        return hits

    def ended_before(self, step: int) -> torch.Tensor:
        return torch.tensor([v.stop_step is not None and v.stop_step < step for v in self._verdicts])

    @property
    def verdicts(self) -> list[Verdict]:
        """One :class:`Verdict` per row of the newest ``generate`` call, final once it has returned: rows that
        ended (EOS or a guard stop) are then extended past their end by the pooling's ``after_end`` rule and
        checked on the remaining prefixes, as :class:`GuardObserver` does."""
        if self._pending and self._ended is not None:
            self._pending = False
            with single_thread():
                finish_rows(self.online, self.decider, self.guard.steps, self._ended.nonzero().flatten().tolist())
        return self._verdicts

    def apply(self, texts: list[str]) -> list[str]:
        """``texts`` with every flagged row replaced by the guard's refusal text."""
        return [self.guard.refusal_text if v.flagged else t for t, v in zip(texts, self.verdicts, strict=True)]


class GuardStoppingCriteria(StoppingCriteria):
    """Ends a sequence right after the token of the step at which its prefix is flagged."""

    def __init__(self, watch: GuardedGeneration) -> None:
        self.watch = watch

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        w = self.watch
        step = input_ids.shape[1] - w.prompt_len
        hits = w._advance(input_ids)
        out = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        if w.stop:
            for b in hits:
                w._verdicts[b].stop_step = step
                out[b] = True
        return out  # type: ignore[return-value]


class GuardLogitsProcessor(LogitsProcessor):
    """Replaces the token of the flagged step by EOS, so the sequence ends at that step."""

    def __init__(self, watch: GuardedGeneration) -> None:
        self.watch = watch

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        w = self.watch
        step = input_ids.shape[1] - w.prompt_len + 1
        hits = w._advance(input_ids)
        if w.stop and hits and len(w.eos):
            scores = scores.clone()  # type: ignore[assignment]
            for b in hits:
                scores[b] = torch.finfo(scores.dtype).min
                scores[b, int(w.eos[0])] = 0.0
                w._verdicts[b].stop_step = step
        return scores


def replay(guard: Guard, signals: np.ndarray, end_steps: list[int], ended_by: list[str] | None = None
           ) -> list[Verdict]:
    """What :class:`GuardObserver` decides when it watches a generation whose stored signal is ``signals``.

    The prefix flagged at signal step t is seen at sampler step s = t + offset of the pooling; the sequence is
    stopped there if it was still generating (s before its end, or at its end when that end is the step limit
    rather than EOS). Applied to unguarded traces, ``end_step − sampler_step`` is the generation a stop saves.
    ``stop_step`` stays None: nothing was stopped.
    """
    first = guard.first_flag(signals)
    offset = POOLINGS[guard.key["pooling"]].offset
    ended_by = ended_by or ["length"] * len(end_steps)
    out = []
    for t, end, why in zip(first.tolist(), end_steps, ended_by, strict=True):
        if t == 0:
            out.append(Verdict())
            continue
        s = t + offset
        live = s <= guard.steps and (s < end or (s == end and why != "eos"))
        out.append(Verdict(True, t, s if live else None, None, "during" if live else "after"))
    return out


def attach_guard(folder: str | Path, adapter: ModelAdapter, sampler: Any, layers: str | list[int],
                 pooling: str | None, stop: bool = True) -> tuple[list[StepObserver], dict[str, Any]]:
    """A checked :class:`GuardObserver` for a tracing run, and the settings entry that records it."""
    from ..pooling import get_pooling

    guard = Guard.load(folder)
    observer = GuardObserver(guard, stop=stop)
    observer.check_compatible(adapter, sampler, get_pooling(pooling, sampler.kind).name,
                              adapter.resolve_layers(layers))
    settings = {"guard": {"folder": str(folder), "tensors_sha256": guard.sha256,
                          "detector": guard.kind, "stop": stop}}
    return [observer], settings
