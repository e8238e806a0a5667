"""Autoregressive sampling with a KV cache, traced one token per step."""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass

import torch
from transformers import DynamicCache
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from ..errors import SriError
from ..models.adapter import ModelAdapter, left_padded_positions
from .base import GenerationResult, HiddenCapture, StepEvent, StepObserver, check_finite, notify_step


@dataclass(frozen=True)
class ARConfig:
    """Decoding settings. ``temperature == 0`` is greedy; otherwise sample after top-k / top-p filtering."""

    steps: int = 32
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    ignore_eos: bool = False  # always run T steps (fixed-length traces, benchmarks)

    kind = "ar"  # family of pooling conventions
    name = "ar"  # what the compatibility key records

    def __post_init__(self) -> None:
        check_finite(self)
        if self.steps <= 0:
            raise SriError(f"steps must be positive (got {self.steps}); use e.g. --steps 32")
        if self.temperature < 0:
            raise SriError(f"temperature must be ≥ 0 (got {self.temperature}); 0 means greedy")
        if not 0 < self.top_p <= 1:
            raise SriError(f"top-p must be in (0, 1] (got {self.top_p})")
        if self.top_k < 0:
            raise SriError(f"top-k must be ≥ 0 (got {self.top_k}); 0 disables it")

    def params(self) -> dict:
        return {"name": self.kind, **asdict(self)}


def prompt_generators(input_ids: torch.Tensor, attention_mask: torch.Tensor, seed: int) -> list[torch.Generator]:
    """One random generator per row, seeded from ``seed`` and the row's prompt tokens (``[B, S]``, padding
    excluded): a sampled trace of a prompt is the same whatever batch it runs in, so batch size can stay out of
    the compatibility key and a resume with another ``--batch-size`` continues the same streams."""
    out = []
    for ids, mask in zip(input_ids.tolist(), attention_mask.tolist(), strict=True):
        tokens = [t for t, m in zip(ids, mask, strict=True) if m]
        digest = hashlib.sha256(f"{seed}:{tokens}".encode()).digest()
        out.append(torch.Generator(device=input_ids.device).manual_seed(int.from_bytes(digest[:8], "little") >> 1))
    return out


def sample_ar(
    adapter: ModelAdapter,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    config: ARConfig,
    layers: list[int],
    observers: list[StepObserver] = (),  # type: ignore[assignment]
    pooling: str | None = None,
) -> GenerationResult:
    """Decode ``config.steps`` tokens for a left-padded batch, one forward pass per step.

    Step t = 1…T feeds the newest token (t = 1: the whole prompt) and picks
    ``x_t = argmax p(· | x_<t)`` (greedy) or ``x_t ~ softmax(filter(logits) / temperature)``; the hidden state at
    the fed position — the one that *produces* ``x_t`` — goes to the observers. A sequence ends at a stop id
    (``adapter.stop_token_ids``: EOS and end-of-turn ids) or when an observer stops it; afterwards it is fed
    padding and its ``finished`` flag stays set. Under the ``generated`` poolings one more forward runs after
    the last step so that the state of the last token is seen too.
    """
    from ..pooling import get_pooling  # (sri.pooling imports this package)

    trailing_forward = get_pooling(pooling, "ar").offset == 1
    model = adapter.model
    B, T = input_ids.shape[0], config.steps
    eos = torch.tensor([] if config.ignore_eos else adapter.stop_token_ids, dtype=torch.long, device=input_ids.device)
    pad = adapter.pad_token_id
    warpers = _warpers(config)
    generators = prompt_generators(input_ids, attention_mask, config.seed) if warpers else []
    finished = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
    end_step, ended_by = [T] * B, ["length"] * B
    tokens: list[torch.Tensor] = []
    cache = DynamicCache(config=model.config)
    position_ids = left_padded_positions(attention_mask)
    for obs in observers:
        obs.on_start(B, attention_mask.sum(-1).tolist())

    capture = HiddenCapture({layer: adapter.layer_module(layer) for layer in layers})
    with capture, torch.inference_mode():
        t0 = time.perf_counter()
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                    use_cache=True, logits_to_keep=1)
        t_prefill = time.perf_counter() - t0
        n_forwards = 1
        for step in range(1, T + 1):
            logits = out.logits[:, -1, :].float()
            if warpers:
                probs = warpers(None, logits).softmax(-1)  # type: ignore[arg-type]
                nxt = torch.cat([torch.multinomial(probs[b], 1, generator=g) for b, g in enumerate(generators)])
            else:
                nxt = logits.argmax(-1)
            nxt = torch.where(finished, torch.full_like(nxt, pad), nxt)
            hit_eos = ~finished & torch.isin(nxt, eos)
            event = StepEvent(step=step, tokens=nxt, states=capture.pop(), finished=finished | hit_eos)
            notify_step(list(observers), event)
            stopped = hit_eos if event.stop is None else hit_eos | event.stop
            for b in stopped.nonzero().flatten().tolist():
                end_step[b] = step
                ended_by[b] = "eos" if hit_eos[b] else event.stop_reason.get(b, "observer")
            finished |= stopped
            tokens.append(nxt)
            if step == T or (bool(finished.all()) and not trailing_forward):
                break
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(B, 1)], dim=1)
            position_ids = position_ids[:, -1:] + 1
            out = model(input_ids=nxt[:, None], attention_mask=attention_mask, position_ids=position_ids,
                        cache=cache, use_cache=True)
            n_forwards += 1
            if bool(finished.all()):  # everything ended: this forward was the trailing one
                notify_step(list(observers), StepEvent(step=step + 1, tokens=None, states=capture.pop(),
                                                       finished=finished.clone(), trailing=True))
                trailing_forward = False
                break
        if trailing_forward:
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(B, 1)], dim=1)
            model(input_ids=tokens[-1][:, None], attention_mask=attention_mask, position_ids=position_ids[:, -1:] + 1,
                  cache=cache, use_cache=True)
            n_forwards += 1
            notify_step(list(observers), StepEvent(step=len(tokens) + 1, tokens=None, states=capture.pop(),
                                                   finished=finished.clone(), trailing=True))
        if input_ids.device.type == "cuda":
            torch.cuda.synchronize(input_ids.device)
        total = time.perf_counter() - t0

    result = GenerationResult(
        tokens=torch.stack(tokens, dim=1).cpu(),
        end_step=end_step,
        ended_by=ended_by,
        timings={"prefill_s": t_prefill, "total_s": total, "forwards": n_forwards},
    )
    for obs in observers:
        obs.on_end(result)
    return result


def _warpers(config: ARConfig) -> LogitsProcessorList | None:
    if config.temperature == 0:
        return None
    procs = LogitsProcessorList([TemperatureLogitsWarper(config.temperature)])
    if config.top_k:
        procs.append(TopKLogitsWarper(config.top_k))
    if config.top_p < 1:
        procs.append(TopPLogitsWarper(config.top_p))
    return procs


def ar_rows(adapter: ModelAdapter, result: GenerationResult, config: ARConfig) -> list[dict]:
    """Per sequence: response, token ids, and the text decoded so far at every step 1…T."""
    tok = adapter.tokenizer
    rows = []
    for b, end in enumerate(result.end_step):
        ids = result.tokens[b, :end].tolist()
        prefixes = [tok.decode(ids[:t], skip_special_tokens=True) for t in range(1, end + 1)]
        rows.append({
            "response": prefixes[-1],
            "token_ids": ids,
            "step_texts": prefixes + [prefixes[-1]] * (config.steps - end),
            "end_step": end,
            "ended_by": result.ended_by[b],
        })
    return rows
