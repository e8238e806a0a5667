"""Masked-diffusion sampling (LLaDA's ``generate`` or Dream's ``_sample`` schedule), traced at every denoising step.

One step is one forward pass over the whole canvas ``[prompt | response slots]``; the pooled hidden states of
the response slots go to the observers, then some masked slots are committed and never change again.
Two schedules decide how many slots, and which, are committed at a step: ``llada`` (LLaDA's ``generate``:
equal shares per step, semi-autoregressive blocks) and ``dream-native`` (Dream's ``_sample``: a timestep
schedule, one block, top-k / top-p truncation). The same loop gives *AR-order* sampling on the same weights
(``remasking="leftmost"``, one token per step, llada schedule).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from ..errors import SriError
from ..models.masked import DiffusionAdapter
from .base import GenerationResult, HiddenCapture, StepEvent, StepObserver, check_finite, notify_step

#: how a still-masked slot is shown in per-step texts
MASK_SYMBOL = "░"
#: the two schedules: LLaDA's ``generate`` and Dream's ``_sample``
SCHEDULES = ("llada", "dream-native")
#: remasking strategies of the llada schedule: which masked slots to commit at a step (highest score first)
LLADA_REMASKING = ("low_confidence", "random", "margin", "entropy", "leftmost")
#: Dream's algorithms (``alg`` of ``_sample``), the remasking values of the dream-native schedule
DREAM_ALGORITHMS = ("maskgit_plus", "topk_margin", "entropy", "origin")
#: sri's remasking names → Dream's algorithm of the same score, accepted under the dream-native schedule
SRI_TO_DREAM = {"low_confidence": "maskgit_plus", "margin": "topk_margin", "entropy": "entropy"}
#: every accepted remasking value
REMASKING = (*LLADA_REMASKING, *(a for a in DREAM_ALGORITHMS if a not in LLADA_REMASKING))
DIFFUSION_POOLINGS = ("all-slots", "committed")
#: Dream's default ``eps`` (the last timestep of ``linspace(1, eps, steps + 1)``)
DREAM_EPS = 1e-3


@dataclass(frozen=True)
class DiffusionConfig:
    """Settings of the diffusion sampler (paper defaults: 32 steps, 128 slots, one block, low confidence).

    ``schedule`` — how many masked slots are committed at each step, and how they are scored:

    - ``"llada"`` (LLaDA's ``generate``): ``block_length`` (default ``gen_length``) splits the response into
      semi-autoregressive blocks denoised left to right, ``steps / (gen_length / block_length)`` steps each; a
      block's n masked slots are committed in equal shares (:func:`transfer_schedule`). ``temperature`` adds
      Gumbel noise (float64) to the logits before the argmax. ``remasking``: ``low_confidence``, ``random``,
      ``margin``, ``entropy`` or ``leftmost`` — AR order: one token per step at the leftmost masked slot, so
      ``steps == gen_length`` (see :meth:`ar_order`); its trace key names the sampler ``diffusion-ar``.
    - ``"dream-native"`` (Dream's ``_sample``, ``generation_utils.py`` of Dream-org/Dream): one block; step i
      commits n_i slots from the timesteps ``linspace(1, eps, steps + 1)`` (:func:`dream_transfer_count`);
      ``top_p`` then ``top_k`` truncate the logits (also at temperature 0); ``temperature`` > 0 samples the token
      from the tempered, truncated distribution; ``alg_temp`` > 0 samples which slots commit. ``remasking`` is
      Dream's ``alg``: ``maskgit_plus``, ``topk_margin``, ``entropy`` or ``origin``; sri's names map onto
      Dream's explicitly — ``low_confidence`` → ``maskgit_plus``, ``margin`` → ``topk_margin``, ``entropy`` →
      ``entropy`` (stored under Dream's name); ``random`` and ``leftmost`` do not exist there.
    - ``None`` (default): the model family's own — ``dream-native`` for Dream, ``llada`` for LLaDA and generic
      masked LMs — fixed by :meth:`resolve` once the model is known (``leftmost`` always means ``llada``).

    ``cfg_scale`` > 0 turns on classifier-free guidance under either schedule (Dream's sampler has none).
    ``top_k``, ``top_p``, ``eps`` and ``alg_temp`` belong to the dream-native schedule only.

    Raises :class:`SriError` (one line, naming the fix) for any inconsistent setting.
    """

    steps: int = 32
    gen_length: int = 128
    block_length: int | None = None
    remasking: str = "low_confidence"
    temperature: float = 0.0
    cfg_scale: float = 0.0
    seed: int = 0
    schedule: str | None = None
    top_k: int | None = None
    top_p: float | None = None
    eps: float = DREAM_EPS
    alg_temp: float = 0.0

    kind = "diffusion"  # family of pooling conventions

    def __post_init__(self) -> None:
        check_finite(self)
        if self.block_length is None:
            object.__setattr__(self, "block_length", self.gen_length)
        if self.schedule is None and self.remasking == "leftmost":
            object.__setattr__(self, "schedule", "llada")  # AR order exists only under the llada schedule
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
        if self.schedule is not None and self.schedule not in SCHEDULES:
            raise SriError(f"schedule '{self.schedule}' is unknown; use llada or dream-native "
                           "(or leave it unset for the model family's own)")
        if self.remasking not in REMASKING:
            raise SriError(f"remasking '{self.remasking}' is unknown; use one of "
                           f"{', '.join(r for r in REMASKING if r != 'leftmost')}")
        if self.remasking == "leftmost" and self.steps != self.gen_length:
            raise SriError(f"AR order (remasking leftmost) commits one token per step, so steps ({self.steps}) must "
                           f"equal gen-length ({self.gen_length}); set gen-length to {self.steps}, or use the "
                           "diffusion-ar sampler, which does")
        if self.temperature < 0:
            raise SriError(f"temperature must be ≥ 0 (got {self.temperature}); 0 means greedy")
        if self.cfg_scale < 0:
            raise SriError(f"cfg-scale must be ≥ 0 (got {self.cfg_scale}); 0 turns guidance off")
        if self.top_k is not None and (isinstance(self.top_k, bool) or not isinstance(self.top_k, int)
                                       or self.top_k < 1):
            raise SriError(f"top-k must be a positive integer (got {self.top_k!r}); leave it unset to keep every "
                           "token")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise SriError(f"top-p must be in (0, 1] (got {self.top_p}); leave it unset to keep every token")
        if not 0 < self.eps < 1:
            raise SriError(f"eps must be in (0, 1) (got {self.eps}); Dream's default is {DREAM_EPS:g}")
        if self.alg_temp < 0:
            raise SriError(f"alg-temp must be ≥ 0 (got {self.alg_temp}); 0 commits the best-scoring slots")
        if self.schedule == "llada":
            self._check_llada()
        elif self.schedule == "dream-native":
            self._check_dream()

    def _check_llada(self) -> None:
        if self.remasking not in LLADA_REMASKING:
            sri = {v: k for k, v in SRI_TO_DREAM.items()}.get(self.remasking)
            fix = f"use its sri name {sri} or --schedule dream-native" if sri else "use --schedule dream-native"
            raise SriError(f"remasking '{self.remasking}' is Dream's algorithm, not a llada-schedule one; {fix}")
        dream_only = [flag for flag, on in (("--top-k", self.top_k is not None), ("--top-p", self.top_p is not None),
                                            ("--eps", self.eps != DREAM_EPS), ("--alg-temp", self.alg_temp != 0))
                      if on]
        if dream_only:
            verb = "applies" if len(dream_only) == 1 else "apply"
            raise SriError(f"{', '.join(dream_only)} only {verb} to the dream-native schedule; add --schedule "
                           "dream-native or drop them")

    def _check_dream(self) -> None:
        if self.remasking not in DREAM_ALGORITHMS and self.remasking not in SRI_TO_DREAM:
            raise SriError(f"remasking '{self.remasking}' has no dream-native counterpart; use one of "
                           f"{', '.join(DREAM_ALGORITHMS)} or --schedule llada")
        object.__setattr__(self, "remasking", SRI_TO_DREAM.get(self.remasking, self.remasking))
        if self.block_length != self.gen_length:
            raise SriError(f"Dream's sampler denoises the whole response as one block, so block-length "
                           f"({self.block_length}) must equal gen-length ({self.gen_length}); drop --block-length "
                           "or use --schedule llada")
        if self.alg_temp > 0 and self.remasking == "origin":
            raise SriError("alg-temp samples which slots commit by their confidence, which the origin algorithm "
                           "has none of; drop --alg-temp or use maskgit_plus, topk_margin or entropy")

    @classmethod
    def ar_order(cls, steps: int = 32, *, temperature: float = 0.0, cfg_scale: float = 0.0,
                 seed: int = 0) -> DiffusionConfig:
        """AR order on diffusion weights: ``steps`` tokens, one per step, left to right (llada schedule)."""
        return cls(steps=steps, gen_length=steps, block_length=steps, remasking="leftmost",
                   temperature=temperature, cfg_scale=cfg_scale, seed=seed, schedule="llada")

    def resolve(self, adapter: Any) -> DiffusionConfig:
        """This config with ``schedule`` fixed: unchanged if set, else the family default of ``adapter``
        (``adapter.default_schedule``; ``llada`` for a model without one). Validates again, so a setting that
        the resolved schedule does not allow raises :class:`SriError` here."""
        if self.schedule is not None:
            return self
        return replace(self, schedule=getattr(adapter, "default_schedule", "llada"))

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
        """Every setting, for provenance (``run.json`` settings): the llada schedule leaves out Dream's."""
        out = {"name": self.name, **asdict(self), "num_blocks": self.num_blocks,
               "steps_per_block": self.steps_per_block}
        if self.schedule == "llada":
            for k in ("top_k", "top_p", "eps", "alg_temp"):
                out.pop(k)
        return out


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


def dream_timesteps(steps: int, eps: float = DREAM_EPS) -> torch.Tensor:
    """Dream's timesteps t = linspace(1, eps, steps + 1) in float32 (on the CPU): ``[steps + 1]``."""
    return torch.linspace(1, eps, steps + 1, dtype=torch.float32)


def dream_transfer_count(masked_total: int, batch_size: int, step: int, timesteps: torch.Tensor) -> int:
    """How many slots every row commits at 0-based ``step`` of Dream's schedule (the same n for all rows).

    With m = ``masked_total / batch_size`` (masked slots of the whole batch canvas, per row) and timesteps t:
    n_i = int(m · (1 − t_{i+1} / t_i)) for i < steps − 1 and n_i = int(m) at the last step, computed in float32
    and truncated towards zero, as Dream's ``_sample`` does (Dream-org/Dream ``generation_utils.py``). n can be 0.
    """
    steps = timesteps.shape[0] - 1
    m = torch.tensor(masked_total, dtype=torch.float32) / batch_size
    if step < steps - 1:
        return int(m * (1 - timesteps[step + 1] / timesteps[step]))
    return int(m)


def dream_schedule(slots: int, steps: int, eps: float = DREAM_EPS) -> list[int]:
    """Per-step commit counts of Dream's schedule for one row of ``slots`` masked slots that commits every
    scheduled slot (e.g. 16 slots, 8 steps → 1, 2, 2, 2, 2, 2, 2, 3); they sum to ``slots``."""
    timesteps, left, counts = dream_timesteps(steps, eps), slots, []
    for i in range(steps):
        n = min(dream_transfer_count(left, 1, i, timesteps), left)
        counts.append(n)
        left -= n
    return counts


def truncate_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Dream's truncation of logits ``[N, V]``: ``top_p`` first, then ``top_k``; dropped tokens get the dtype's
    minimum (so their probability is 0 and the kept ones are renormalised).

    top_p keeps the smallest set of most probable tokens whose cumulative probability exceeds ``top_p`` (the top
    token always; ``top_p`` = 1 keeps everything); top_k keeps the tokens whose logit is ≥ the k-th largest (ties
    with it included; k is capped at V).
    """
    low = torch.finfo(logits.dtype).min
    if top_p is not None and top_p < 1:
        ordered, order = torch.sort(logits, dim=-1, descending=True)
        beyond = torch.softmax(ordered, dim=-1).cumsum(-1) > top_p
        drop_sorted = torch.zeros_like(beyond)
        drop_sorted[..., 1:] = beyond[..., :-1]  # the token that crosses top_p stays
        drop = torch.zeros_like(beyond).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, low)
    if top_k is not None:
        k = min(top_k, logits.shape[-1])
        kth = logits.topk(k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, low)
    return logits


def dream_confidence(logits: torch.Tensor, algorithm: str, temperature: float, top_k: int | None,
                     top_p: float | None, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Dream's ``sample_tokens``: ``(score [N], prediction [N])`` of every candidate slot from its logits ``[N, V]``.

    ℓ ← ℓ / temperature (if > 0); truncated by :func:`truncate_logits`; p = softmax(ℓ). At temperature 0 the
    prediction is argmax p, else a draw from p (with ``generator``). Scores (higher = commit first):
    ``maskgit_plus`` / ``origin`` p(prediction); ``topk_margin`` p_(1) − p_(2); ``entropy``
    Σ_v p_v log(p_v + 1e-10) (negative entropy). Source: Dream-org/Dream ``generation_utils.py``.
    """
    if temperature > 0:
        logits = logits / temperature
    probs = torch.softmax(truncate_logits(logits, top_k, top_p), dim=-1)
    if temperature > 0:
        x0 = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        score = probs.gather(-1, x0.unsqueeze(-1)).squeeze(-1)
    else:
        score, x0 = probs.max(dim=-1)
    if algorithm == "topk_margin":
        top2 = probs.topk(min(2, probs.shape[-1]), dim=-1).values
        score = top2[:, 0] - (top2[:, 1] if top2.shape[1] > 1 else 0)
    elif algorithm == "entropy":
        score = (probs * torch.log(probs + 1e-10)).sum(-1)
    elif algorithm not in ("maskgit_plus", "origin"):
        raise SriError(f"algorithm '{algorithm}' is not Dream's; use one of {', '.join(DREAM_ALGORITHMS)}")
    return score, x0


def sample_top(scores: torch.Tensor, k: int, alg_temp: float, generator: torch.Generator | None) -> torch.Tensor:
    """Boolean ``[B, S]``: per row, ``k`` slots drawn without replacement from softmax(scores / alg_temp) over
    the finite scores (Dream's ``alg_temp`` > 0); rows with fewer candidates take all of them."""
    chosen = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    for b in range(scores.shape[0]):
        if not bool(torch.isfinite(scores[b]).any()):
            continue
        probs = torch.softmax(scores[b].double() / alg_temp, dim=-1)
        n = min(k, int((probs > 0).sum()))
        if n > 0:
            chosen[b, torch.multinomial(probs, n, replacement=False, generator=generator)] = True
    return chosen & torch.isfinite(scores)


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
    """Denoise ``gen_length`` masked slots after a left-padded prompt batch ``[B, P]`` in ``steps`` forward passes.

    ``config`` is first resolved against ``adapter`` (:meth:`DiffusionConfig.resolve`: an unset schedule becomes
    the family's own). The canvas starts as ``x = [prompt | M … M]`` (M = mask id), ``[B, P + gen_length]``.
    At every step:

    1. ℓ = logits of ``x`` (Dream-style models: ℓ_i taken from position i−1). With guidance, also ℓ^u for ``x``
       with every prompt token masked, and ℓ ← ℓ^u + (s + 1)(ℓ − ℓ^u), s = ``cfg_scale``.
    2. ``llada`` schedule (LLaDA ``generate.py``): block b (slots ``[b·L_b, (b+1)·L_b)``) gets
       ``steps / num_blocks`` steps and its own :func:`transfer_schedule`. x̂_i = argmax_v (ℓ_iv + τ·g_iv),
       g = −log(−log u), u ~ U(0, 1) in float64 (τ = temperature; LLaDA's argmax of exp(ℓ) / (−log u)^τ in log
       space). Every masked slot up to the end of the current block (masks inside the prompt included, as in
       LLaDA) gets a score (:func:`slot_scores`); the ``schedule[step]`` best of each row are set to x̂.
    3. ``dream-native`` schedule (Dream ``generation_utils.py``, ``_sample``): one block. Every masked slot gets
       x̂ and a score from :func:`dream_confidence` (top_p / top_k truncation, temperature). With ``origin``
       each masked slot commits with probability 1 − t_{i+1}/t_i (1 at the last step); otherwise every row
       commits its n_i best slots, n_i = :func:`dream_transfer_count` over the whole batch's masked slots
       (stopped rows included, so a row's schedule does not depend on an observer stopping another), or, with
       ``alg_temp`` > 0, n_i slots drawn from softmax(score / alg_temp) (:func:`sample_top`). n_i = 0 commits
       nothing. Ties go to the leftmost slot; Dream's ``torch.topk`` may order exact ties differently, and a
       committed token is never re-masked (Dream's batched top-k can pick an unmasked slot of a row with fewer
       masks than n_i; here such a row commits what it has).

    Committed slots never change again. Random draws (temperature, ``random``, ``origin``, ``alg_temp``) use a
    generator seeded with ``config.seed``, so they are reproducible but are not the reference code's draws.
    Before each forward the hooks are told to pool the response slots (:func:`pooling_weights`); only the
    conditional half of a guided batch is traced. Observers get a :class:`StepEvent` per step with the pooled
    states, the response canvas after the step (``tokens``) and, in ``extra``, the slots committed at that step
    and the model's prediction x̂ at every slot. An observer may stop a row; it commits nothing afterwards.

    Returns a :class:`GenerationResult` with ``tokens [B, gen_length]`` and, in ``extra``, ``committed_at``
    ``[B, gen_length]`` (1-based step of each slot's commit, −1 = never) and ``predicted [steps run, B,
    gen_length]``. Raises :class:`SriError` for a pooling the sampler does not know or settings the resolved
    schedule does not allow.
    """
    if pooling not in DIFFUSION_POOLINGS:
        raise SriError(f"pooling '{pooling}' does not apply to the diffusion sampler; use one of "
                       f"{', '.join(DIFFUSION_POOLINGS)}")
    config = config.resolve(adapter)
    dream = config.schedule == "dream-native"
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
    timesteps = dream_timesteps(config.steps, config.eps) if dream else None
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
                scores = torch.full((B, S), float("-inf"), device=device)
                if dream:
                    slot_score, x0 = dream_confidence(logits, config.remasking, config.temperature, config.top_k,
                                                      config.top_p, generator)
                    scores[rows, cols] = slot_score
                    if config.remasking == "origin":
                        p = 1 - timesteps[i + 1] / timesteps[i] if i < config.steps - 1 else torch.tensor(1.0)
                        draw = torch.rand(cols.shape, generator=generator, device=device) < p.to(device)
                        chosen = torch.zeros((B, S), dtype=torch.bool, device=device)
                        chosen[rows[draw], cols[draw]] = True
                    else:
                        n = dream_transfer_count(int(masked.sum()), B, i, timesteps)
                        if config.alg_temp > 0:
                            chosen = sample_top(scores, n, config.alg_temp, generator)
                        else:
                            chosen = pick_top(scores, torch.full((B,), n, device=device))
                else:
                    if config.temperature > 0:
                        u = torch.rand(logits.shape, generator=generator, device=device, dtype=torch.float64)
                        x0 = (logits.double() - config.temperature * torch.log(-torch.log(u))).argmax(-1)
                    else:
                        x0 = logits.argmax(-1)
                    scores[rows, cols] = slot_scores(logits, x0, config.remasking, cols, generator)
                    scores[:, block_end:] = float("-inf")
                    chosen = pick_top(scores, schedule[:, i])
                predicted = x.clone()
                predicted[rows, cols] = x0.to(x.dtype)
                commit = chosen & masked & active.unsqueeze(1)
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
