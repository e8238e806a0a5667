"""Masked-diffusion sampling in the style of LLaDA's ``generate``, traced at every denoising step.

One step is one forward pass over the whole canvas ``[prompt | response slots]``; the pooled hidden states of
the response slots go to the observers, then some masked slots are committed and never change again.
The same loop gives *AR-order* sampling on the same weights (``remasking="leftmost"``, one token per step).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch

from ..errors import SriError
from ..models.masked import DiffusionAdapter
from .base import GenerationResult, HiddenCapture, StepEvent, StepObserver, notify_step

#: how a still-masked slot is shown in per-step texts
MASK_SYMBOL = "░"
#: remasking strategies: which masked slots to commit at a step (highest score first)
REMASKING = ("low_confidence", "random", "margin", "entropy", "leftmost")
DIFFUSION_POOLINGS = ("all-slots", "committed")


@dataclass(frozen=True)
class DiffusionConfig:
    """Settings of the diffusion sampler (paper defaults: 32 steps, 128 slots, one block, low confidence).

    ``block_length`` (default ``gen_length``) splits the response into semi-autoregressive blocks denoised left
    to right, ``steps / (gen_length / block_length)`` steps each. ``temperature`` adds Gumbel noise (float64) to
    the logits before the argmax; ``cfg_scale`` > 0 turns on classifier-free guidance. ``remasking="leftmost"``
    is AR order: one token per step at the leftmost masked slot, so ``steps == gen_length`` (see
    :meth:`ar_order`); its trace key names the sampler ``diffusion-ar``.
    """

    steps: int = 32
    gen_length: int = 128
    block_length: int | None = None
    remasking: str = "low_confidence"
    temperature: float = 0.0
    cfg_scale: float = 0.0
    seed: int = 0

    kind = "diffusion"  # family of pooling conventions

    def __post_init__(self) -> None:
        if self.block_length is None:
            object.__setattr__(self, "block_length", self.gen_length)
        if self.gen_length <= 0:
            raise SriError(f"gen-length must be positive (got {self.gen_length}); use e.g. --gen-length 128")
        if self.steps <= 0:
            raise SriError(f"steps must be positive (got {self.steps}); use e.g. --steps 32")
        bl = self.block_length
        if bl <= 0 or self.gen_length % bl:
            raise SriError(f"block-length {bl} must be positive and divide gen-length {self.gen_length}; "
                           f"use e.g. --block-length {self.gen_length}")
        if self.steps % self.num_blocks:
            raise SriError(f"steps {self.steps} must be a multiple of the number of blocks {self.num_blocks} "
                           f"(gen-length {self.gen_length} / block-length {bl}); change --steps or --block-length")
        if self.remasking not in REMASKING:
            raise SriError(f"remasking '{self.remasking}' is unknown; use one of {', '.join(REMASKING[:-1])}")
        if self.remasking == "leftmost" and self.steps != self.gen_length:
            raise SriError(f"AR order commits one token per step, so steps ({self.steps}) must equal gen-length "
                           f"({self.gen_length}); drop --gen-length or set it to --steps")
        if self.temperature < 0:
            raise SriError(f"temperature must be ≥ 0 (got {self.temperature}); 0 means greedy")
        if self.cfg_scale < 0:
            raise SriError(f"cfg-scale must be ≥ 0 (got {self.cfg_scale}); 0 turns guidance off")

    @classmethod
    def ar_order(cls, steps: int = 32, *, temperature: float = 0.0, cfg_scale: float = 0.0,
                 seed: int = 0) -> DiffusionConfig:
        """AR order on diffusion weights: ``steps`` tokens, one per step, left to right."""
        return cls(steps=steps, gen_length=steps, block_length=steps, remasking="leftmost",
                   temperature=temperature, cfg_scale=cfg_scale, seed=seed)

    @property
    def name(self) -> str:
        """What the compatibility key records: ``diffusion`` or ``diffusion-ar``."""
        return "diffusion-ar" if self.remasking == "leftmost" else "diffusion"

    @property
    def num_blocks(self) -> int:
        return self.gen_length // self.block_length  # type: ignore[operator]

    @property
    def steps_per_block(self) -> int:
        return self.steps // self.num_blocks

    def params(self) -> dict:
        return {"name": self.name, **asdict(self), "num_blocks": self.num_blocks,
                "steps_per_block": self.steps_per_block}


def transfer_schedule(mask_count: torch.Tensor, steps: int) -> torch.Tensor:
    """How many slots to commit at each of ``steps`` steps, per row: ``[B] → [B, steps]``.

    With n masked slots, every step commits ⌊n / steps⌋ and the first ``n mod steps`` steps one more
    (LLaDA's ``get_num_transfer_tokens``), so each row commits exactly n in total.
    """
    base = mask_count.long() // steps
    remainder = mask_count.long() % steps
    schedule = base.unsqueeze(1).repeat(1, steps)
    schedule += (torch.arange(steps, device=mask_count.device).unsqueeze(0) < remainder.unsqueeze(1)).long()
    return schedule


def slot_scores(logits: torch.Tensor, x0: torch.Tensor, remasking: str, positions: torch.Tensor,
                generator: torch.Generator | None) -> torch.Tensor:
    """Score of each candidate slot (higher = commit first) from its logits ``[N, V]`` and prediction ``x0 [N]``.

    With p = softmax(logits): ``low_confidence`` p(x0); ``margin`` p_(1) − p_(2) (top-1 minus top-2);
    ``entropy`` Σ_v p_v log p_v (negative entropy); ``random`` u ~ U(0, 1); ``leftmost`` −position.
    """
    if remasking == "random":
        return torch.rand(x0.shape, generator=generator, device=x0.device, dtype=torch.float64).float()
    if remasking == "leftmost":
        return -positions.float()
    probs = torch.softmax(logits.float(), dim=-1)
    if remasking == "low_confidence":
        return probs.gather(-1, x0.unsqueeze(-1)).squeeze(-1)
    if remasking == "margin":
        top2 = probs.topk(2, dim=-1).values
        return top2[:, 0] - top2[:, 1]
    if remasking == "entropy":
        return -torch.special.entr(probs).sum(-1)
    raise SriError(f"remasking '{remasking}' is unknown; use one of {', '.join(REMASKING)}")


def pick_top(scores: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Boolean ``[B, S]``: the ``k[b]`` highest finite scores of each row (ties: the leftmost slot first)."""
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(scores.shape[1], device=scores.device).expand_as(order))
    return (rank < k.unsqueeze(1)) & torch.isfinite(scores)


def pooling_weights(x: torch.Tensor, prompt_len: int, mask_id: int, pooling: str) -> torch.Tensor:
    """Weights ``w [B, S]`` so that φ = Σ_s w_s h_s is the mean over response slots under ``pooling``.

    ``all-slots``: every response slot, masked or not (the authors' code); ``committed``: the slots already
    committed when this forward runs (every slot while none is).
    """
    slots = torch.ones_like(x[:, prompt_len:], dtype=torch.float32)
    if pooling == "committed":
        committed = (x[:, prompt_len:] != mask_id).float()
        slots = torch.where(committed.sum(1, keepdim=True) > 0, committed, slots)
    w = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    w[:, prompt_len:] = slots / slots.sum(1, keepdim=True)
    return w


def sample_diffusion(
    adapter: DiffusionAdapter,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    config: DiffusionConfig,
    layers: list[int],
    observers: list[StepObserver] = (),  # type: ignore[assignment]
    pooling: str = "all-slots",
) -> GenerationResult:
    """Denoise ``gen_length`` masked slots after a left-padded prompt batch in ``steps`` forward passes.

    The canvas starts as ``x = [prompt | M … M]`` (M = mask id). Block b (slots ``[b·L_b, (b+1)·L_b)``) gets
    ``steps / num_blocks`` steps and its own :func:`transfer_schedule`. At every step:

    1. ℓ = logits of ``x`` (Dream-style models: ℓ_i taken from position i−1). With guidance, also ℓ^u for ``x``
       with every prompt token masked, and ℓ ← ℓ^u + (s + 1)(ℓ − ℓ^u), s = ``cfg_scale``.
    2. x̂_i = argmax_v (ℓ_iv + τ·g_iv), g = −log(−log u), u ~ U(0, 1) in float64 (τ = temperature; this is
       LLaDA's argmax of exp(ℓ) / (−log u)^τ, written in log space).
    3. Every masked slot up to the end of the current block (masks inside the prompt included, as in LLaDA) gets
       a score (:func:`slot_scores`); the ``schedule[step]`` best are set to x̂ and never change again.

    Before each forward the hooks are told to pool the response slots (:func:`pooling_weights`); only the
    conditional half of a guided batch is traced. Observers get a :class:`StepEvent` per step with the pooled
    states, the response canvas after the step (``tokens``) and, in ``extra``, the slots committed at that step
    and the model's prediction x̂ at every slot. An observer may stop a row; it commits nothing afterwards.
    """
    if pooling not in DIFFUSION_POOLINGS:
        raise SriError(f"pooling '{pooling}' does not apply to the diffusion sampler; use one of "
                       f"{', '.join(DIFFUSION_POOLINGS)}")
    model_mask = adapter.mask_token_id
    device = input_ids.device
    B, P = input_ids.shape
    G, S = config.gen_length, input_ids.shape[1] + config.gen_length
    x = torch.cat([input_ids, torch.full((B, G), model_mask, dtype=input_ids.dtype, device=device)], dim=1)
    attn = torch.cat([attention_mask, attention_mask.new_ones(B, G)], dim=1)
    given = x != model_mask  # prompt (and padding) positions known from the start
    committed_at = torch.where(given, 0, -1)  # step at which each position got its token; −1 = still masked
    guided = config.cfg_scale > 0
    generator = torch.Generator(device=device).manual_seed(config.seed)
    active = torch.ones(B, dtype=torch.bool, device=device)
    end_step, ended_by = [config.steps] * B, [""] * B
    predicted_steps: list[torch.Tensor] = []
    for obs in observers:
        obs.on_start(B, attention_mask.sum(-1).tolist())

    capture = HiddenCapture({layer: adapter.layer_module(layer) for layer in layers})
    step = 0
    t0 = time.perf_counter()
    with capture, torch.inference_mode():
        for block in range(config.num_blocks):
            block_end = P + (block + 1) * config.block_length
            schedule = transfer_schedule((x[:, block_end - config.block_length:block_end] == model_mask).sum(1),
                                         config.steps_per_block)
            for i in range(config.steps_per_block):
                step += 1
                masked = x == model_mask
                weights = pooling_weights(x, P, model_mask, pooling)
                if guided:
                    unconditional = torch.where(given, model_mask, x)
                    batch, batch_attn = torch.cat([x, unconditional]), torch.cat([attn, attn])
                    weights = torch.cat([weights, torch.zeros_like(weights)])
                else:
                    batch, batch_attn = x, attn
                capture.set_weights(weights)
                raw = adapter.logits(batch, batch_attn)
                states = {layer: h[:B] for layer, h in capture.pop().items()}

                rows, cols = masked.nonzero(as_tuple=True)
                source = (cols - 1).clamp(min=0) if adapter.logit_shift else cols  # Dream: ℓ_i sits at i−1
                logits = raw[rows, source].float()
                if guided:
                    uncond = raw[rows + B, source].float()
                    logits = uncond + (config.cfg_scale + 1) * (logits - uncond)
                if config.temperature > 0:
                    u = torch.rand(logits.shape, generator=generator, device=device, dtype=torch.float64)
                    x0 = (logits.double() - config.temperature * torch.log(-torch.log(u))).argmax(-1)
                else:
                    x0 = logits.argmax(-1)
                scores = torch.full((B, S), float("-inf"), device=device)
                scores[rows, cols] = slot_scores(logits, x0, config.remasking, cols, generator)
                scores[:, block_end:] = float("-inf")
                predicted = x.clone()
                predicted[rows, cols] = x0.to(x.dtype)
                commit = pick_top(scores, schedule[:, i]) & active.unsqueeze(1)
                x = torch.where(commit, predicted, x)
                committed_at[commit] = step
                predicted_steps.append(predicted[:, P:].to("cpu", torch.int32))

                event = StepEvent(step=step, tokens=x[:, P:].clone(), states=states, finished=~active.clone(),
                                  extra={"committed": commit[:, P:], "predicted": predicted[:, P:],
                                         "block": block})
                notify_step(list(observers), event)
                if event.stop is not None:
                    for b in (event.stop & active).nonzero().flatten().tolist():
                        end_step[b], ended_by[b] = step, event.stop_reason.get(b, "observer")
                    active &= ~event.stop
                if not bool(active.any()):
                    break
            if not bool(active.any()):
                break
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    total = time.perf_counter() - t0

    stops = torch.tensor(adapter.stop_token_ids, device=device)
    for b in range(B):
        if not ended_by[b]:
            ended_by[b] = "eos" if bool(torch.isin(x[b, P:], stops).any()) else "length"
    result = GenerationResult(
        tokens=x[:, P:].cpu(),
        end_step=end_step,
        ended_by=ended_by,
        timings={"total_s": total, "forwards": step, "forward_batch": 2 * B if guided else B},
        extra={"committed_at": committed_at[:, P:].cpu(), "predicted": torch.stack(predicted_steps),
               "prompt_committed_at": committed_at[:, :P].cpu(), "prompt_lengths": attention_mask.sum(-1).tolist(),
               "mask_token_id": model_mask},
    )
    for obs in observers:
        obs.on_end(result)
    return result


def render_canvas(tokenizer, ids: list[int], masked: list[bool], stop_ids: set[int]) -> str:
    """Text of a response canvas up to its first committed stop token, masked slots shown as :data:`MASK_SYMBOL`.

    Runs of committed tokens are decoded together (special tokens skipped), so a fully committed canvas decodes
    exactly as the final response does.
    """
    parts: list[str] = []
    run: list[int] = []
    for token, is_mask in zip(ids, masked, strict=True):
        if is_mask:
            if run:
                parts.append(tokenizer.decode(run, skip_special_tokens=True))
                run = []
            parts.append(MASK_SYMBOL)
        elif token in stop_ids:
            break
        else:
            run.append(token)
    if run:
        parts.append(tokenizer.decode(run, skip_special_tokens=True))
    return "".join(parts)


def response_end(ids: list[int], stop_ids: set[int]) -> int:
    """Index of the first stop token in ``ids`` (``len(ids)`` if none)."""
    return next((i for i, t in enumerate(ids) if t in stop_ids), len(ids))


def diffusion_rows(adapter: DiffusionAdapter, result: GenerationResult, config: DiffusionConfig) -> list[dict]:
    """Per sequence: the response (committed tokens up to the first EOS / end-of-turn, special tokens skipped),
    the full canvas of token ids, and per step t = 1…T: the committed text with masks shown (``step_texts``),
    the model's full prediction x̂ (``predicted_texts``) and the slots committed at t (``committed_positions``)."""
    tok = adapter.tokenizer
    stop_ids = set(adapter.stop_token_ids)
    mask_id = int(result.extra["mask_token_id"])
    committed_at = result.extra["committed_at"]
    predicted = result.extra["predicted"]  # [F, B, G]
    rows = []
    for b, end in enumerate(result.end_step):
        ids = result.tokens[b].tolist()
        at = committed_at[b].tolist()
        step_texts, predicted_texts, positions = [], [], []
        for t in range(1, end + 1):
            masked = [a == -1 or a > t for a in at]
            step_texts.append(render_canvas(tok, ids, masked, stop_ids))
            guess = predicted[t - 1, b].tolist()
            predicted_texts.append(tok.decode(guess[:response_end(guess, stop_ids)], skip_special_tokens=True))
            positions.append([i for i, a in enumerate(at) if a == t])
        pad = config.steps - end
        cut = response_end(ids, stop_ids)
        row = {
            "response": tok.decode([t for t in ids[:cut] if t != mask_id], skip_special_tokens=True),
            "token_ids": ids,
            "response_length": cut,
            "step_texts": step_texts + [step_texts[-1]] * pad,
            "predicted_texts": predicted_texts + [predicted_texts[-1]] * pad,
            "committed_positions": positions + [[] for _ in range(pad)],
            "end_step": end,
            "ended_by": result.ended_by[b],
            "mask_symbol": MASK_SYMBOL,
        }
        prompt_at = result.extra["prompt_committed_at"][b].tolist()
        offset = len(prompt_at) - int(result.extra["prompt_lengths"][b])
        fills = [[i - offset, a] for i, a in enumerate(prompt_at) if a > 0]
        if fills:
            row["prompt_fills"] = fills  # [position in the prompt, step] of mask tokens inside the prompt
        rows.append(row)
    return rows
