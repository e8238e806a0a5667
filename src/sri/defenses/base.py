"""What every defense shares: score rows (prompt, response, …) → higher = more suspicious, flag, and time it.

A row is a dict with at least ``prompt`` (the user's text) and, after the base generation, ``response``; the
SRI Guard also reads ``sri``. A defense's ``seconds`` is the wall time it adds on top of the base generation
(for SmoothLLM, which generates again, that is its whole run).
"""

from __future__ import annotations

import inspect
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..errors import SriError
from ..models.adapter import ModelAdapter


@dataclass
class DefenseResult:
    """Per row: ``scores`` (higher = more suspicious), ``flags`` (blocked); ``responses`` when the defense
    replaces the model's answer (SmoothLLM); ``seconds`` of wall time the defense took."""

    name: str
    scores: np.ndarray
    flags: np.ndarray
    seconds: float
    responses: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Defense(ABC):
    """Score rows and flag them; subclasses say whether they need the response."""

    name: ClassVar[str]
    needs_response: ClassVar[bool] = False
    #: kinds of model (``adapter.family.kind``) the defense can run on; reading an autoregressive model's
    #: next-token probabilities means nothing on a masked-diffusion model
    model_kinds: ClassVar[tuple[str, ...]] = ("causal", "masked-diffusion")

    @classmethod
    def create(cls, adapter: ModelAdapter, **settings: Any) -> Defense:
        """An instance on ``adapter`` taking from ``settings`` the keyword arguments its constructor accepts
        (e.g. ``batch_size``, ``quantile``, ``copies``, ``sampler``, ``seed``); the rest are ignored."""
        params = inspect.signature(cls.__init__).parameters
        return cls(adapter, **{k: v for k, v in settings.items() if k in params})

    def fit(self, benign: Sequence[dict[str, Any]]) -> Defense:
        """Calibrate on benign rows (only defenses with a benign-quantile threshold need it)."""
        return self

    @abstractmethod
    def _run(self, rows: Sequence[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
        """(scores, flags, replacement responses or None)."""

    def run(self, rows: Sequence[dict[str, Any]]) -> DefenseResult:
        if not rows:
            raise SriError(f"{self.name}: no rows to score; give at least one prompt")
        for i, r in enumerate(rows):
            if not isinstance(r.get("prompt"), str):
                raise SriError(f"{self.name}: row {i + 1} has no 'prompt' text")
            if self.needs_response and not isinstance(r.get("response"), str):
                raise SriError(f"{self.name}: row {i + 1} has no 'response'; generate before applying this defense")
        t0 = time.perf_counter()
        scores, flags, responses = self._run(rows)
        seconds = time.perf_counter() - t0
        return DefenseResult(self.name, np.asarray(scores, dtype=np.float64), np.asarray(flags, dtype=bool),
                             seconds, responses)


def answer_probability(adapter: ModelAdapter, texts: list[str], positive: Sequence[str], negative: Sequence[str],
                       batch_size: int = 8) -> np.ndarray:
    """P(positive) / (P(positive) + P(negative)) of the next token after each rendered ``text``.

    Each side's probability is the sum over the first tokens of its spellings (shared first tokens dropped), read
    from one forward pass — no generation.
    """
    from ..models.chat import answer_token_ids, next_token_logprobs, two_way_probability

    pos, neg = answer_token_ids(adapter.tokenizer, positive, negative)
    logp = next_token_logprobs(adapter, texts, batch_size=batch_size)
    return two_way_probability(logp, pos, neg).double().numpy()
