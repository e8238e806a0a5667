"""SmoothLLM (Robey et al. 2023): answer N randomly perturbed copies of the prompt and take a majority vote.

Each copy has a share ``q`` of its characters replaced by random printable characters ("swap" perturbation);
every copy is generated with the same sampler as the base model and judged by the keyword refusal judge. If
most copies refuse, the defense blocks (score = share of refusing copies, flagged when > 1/2) and returns a
refusing copy's answer; otherwise it returns an answering copy's answer.
"""

from __future__ import annotations

import random
import string
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..judges.keyword import is_refusal
from ..models.adapter import ModelAdapter
from ..pooling import DEFAULT_POOLING
from ..sampling import SAMPLERS, ARConfig
from .base import Defense

PRINTABLE = string.printable.strip() + " "


def swap_perturb(text: str, q: float, rng: random.Random) -> str:
    """Replace ⌈q·len⌉ randomly chosen characters by random printable characters."""
    chars = list(text)
    n = min(len(chars), max(1, int(np.ceil(q * len(chars))))) if chars else 0
    for i in rng.sample(range(len(chars)), n):
        chars[i] = rng.choice(PRINTABLE)
    return "".join(chars)


class SmoothLLM(Defense):
    """Answers several character-perturbed copies and takes the majority (SmoothLLM, Robey et al. 2023)."""

    name = "smoothllm"

    def __init__(self, adapter: ModelAdapter, copies: int = 6, q: float = 0.1, sampler: Any = None,
                 batch_size: int = 8, seed: int = 0) -> None:
        self.adapter = adapter
        self.copies = copies
        self.q = q
        self.sampler = sampler or ARConfig()
        self.batch_size = batch_size
        self.seed = seed

    def _generate(self, prompts: list[str]) -> list[str]:
        kind = SAMPLERS[self.sampler.kind]
        layer = [self.adapter.num_layers]
        texts = []
        for start in range(0, len(prompts), self.batch_size):
            ids, mask = self.adapter.encode([self.adapter.render(p) for p in prompts[start:start + self.batch_size]])
            result = kind.run(self.adapter, ids, mask, self.sampler, layer, [], DEFAULT_POOLING[self.sampler.kind])
            texts += [r["response"] for r in kind.rows(self.adapter, result, self.sampler)]
        return texts

    def _run(self, rows: Sequence[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, list[str]]:
        rng = random.Random(self.seed)
        perturbed = [swap_perturb(r["prompt"], self.q, rng) for r in rows for _ in range(self.copies)]
        answers = self._generate(perturbed)
        scores, flags, responses = [], [], []
        for i in range(len(rows)):
            group = answers[i * self.copies:(i + 1) * self.copies]
            refused = [is_refusal(a) for a in group]
            share = sum(refused) / len(group)
            blocked = share > 0.5
            scores.append(share)
            flags.append(blocked)
            responses.append(next(a for a, r in zip(group, refused, strict=True) if r == blocked))
        return np.array(scores), np.array(flags), responses
