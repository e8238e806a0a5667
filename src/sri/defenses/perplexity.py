"""Perplexity filter (Alon & Kamfonas 2023; Jain et al. 2023): flag prompts a reference LM finds unlikely.

score = log PPL(x) = −(1/(n−1)) Σ_{i=2..n} log p(x_i | x_<i) over the prompt's tokens (no chat template);
threshold = q-quantile of the scores of benign prompts (:meth:`fit`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..errors import SriError
from ..models.adapter import ModelAdapter, left_padded_positions
from .base import Defense


class PerplexityFilter(Defense):
    """Flags prompts whose perplexity under the model exceeds the q-quantile of benign prompts'."""

    name = "ppl-filter"
    model_kinds = ("causal",)

    def __init__(self, adapter: ModelAdapter, quantile: float = 0.99, batch_size: int = 8,
                 max_tokens: int = 1024) -> None:
        self.adapter = adapter
        self.quantile = quantile
        self.batch_size = batch_size
        self.max_tokens = max_tokens
        self.threshold: float | None = None

    def log_perplexity(self, prompts: Sequence[str]) -> np.ndarray:
        """Mean token negative log-likelihood of each prompt (left-padded batches)."""
        tok, model = self.adapter.tokenizer, self.adapter.model
        out = []
        with torch.inference_mode():
            for start in range(0, len(prompts), self.batch_size):
                enc = tok(list(prompts[start:start + self.batch_size]), return_tensors="pt", padding=True,
                          truncation=True, max_length=self.max_tokens)
                ids, mask = enc["input_ids"].to(self.adapter.device), enc["attention_mask"].to(self.adapter.device)
                pos = left_padded_positions(mask)
                logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, :-1].float()
                nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
                valid = mask[:, 1:].float() * mask[:, :-1].float()
                out.append(((nll * valid).sum(1) / valid.sum(1).clamp(min=1)).cpu())
        return torch.cat(out).double().numpy()

    def fit(self, benign: Sequence[dict[str, Any]]) -> PerplexityFilter:
        if not benign:
            raise SriError("the perplexity filter needs benign prompts to set its threshold")
        self.threshold = float(np.quantile(self.log_perplexity([r["prompt"] for r in benign]), self.quantile))
        return self

    def _run(self, rows: Sequence[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, None]:
        if self.threshold is None:
            raise SriError("the perplexity filter is not calibrated; call fit() on benign prompts first")
        scores = self.log_perplexity([r["prompt"] for r in rows])
        return scores, scores > self.threshold, None
