"""Using a local chat model as a tool (attacker, judge, target of an attack): render a conversation, generate
text, and score continuations — without tracing.

Generation reuses the project's KV-cached AR sampler (:func:`sri.sampling.sample_ar`) with no layers captured,
so greedy or seeded sampling behaves exactly as in a trace.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from transformers import DynamicCache

from ..errors import SriError
from ..sampling import ARConfig, sample_ar
from . import ModelAdapter
from .adapter import left_padded_positions

#: ``system=ADAPTER_SYSTEM`` keeps the adapter's own system prompt (the paper's "You are a helpful assistant").
ADAPTER_SYSTEM = object()


def render_chat(adapter: ModelAdapter, user: str, *, system: str | object | None = ADAPTER_SYSTEM,
                assistant_prefix: str = "") -> str:
    """The exact text for one user turn with ``system`` (``None``: no system turn) and the generation prompt,
    followed by ``assistant_prefix`` (words put in the assistant's mouth, which it then continues)."""
    text = adapter.render(user, ... if system is ADAPTER_SYSTEM else system)
    if assistant_prefix and not adapter.uses_chat_template:
        text += " "
    return text + assistant_prefix


def generate_texts(adapter: ModelAdapter, rendered: Sequence[str], *, max_new_tokens: int,
                   temperature: float = 0.0, top_p: float = 1.0, seed: int = 0, batch_size: int = 8) -> list[str]:
    """Continue every rendered text by up to ``max_new_tokens`` tokens (greedy when ``temperature == 0``,
    otherwise sampled with a generator seeded by ``seed`` + batch index). Returns the decoded continuations."""
    out: list[str] = []
    for b, start in enumerate(range(0, len(rendered), batch_size)):
        chunk = list(rendered[start:start + batch_size])
        ids, mask = adapter.encode(chunk)
        config = ARConfig(steps=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed + b)
        result = sample_ar(adapter, ids, mask, config, layers=[])
        for row, end in enumerate(result.end_step):
            tokens = result.tokens[row, :end].tolist()
            out.append(adapter.tokenizer.decode(tokens, skip_special_tokens=True))
    return out


def answer_token_ids(tokenizer: Any, positive: Sequence[str], negative: Sequence[str]) -> tuple[list[int], list[int]]:
    """The distinct first token of each spelling of the two answers (e.g. "Yes", " yes" vs "No", " no"), without
    the first tokens both answers share (they tell nothing). Raises :class:`SriError` if a side is left empty."""
    def firsts(words: Sequence[str]) -> list[int]:
        ids: list[int] = []
        for w in words:
            enc = tokenizer.encode(w, add_special_tokens=False)
            if enc and enc[0] not in ids:
                ids.append(int(enc[0]))
        return ids

    pos, neg = firsts(positive), firsts(negative)
    pos, neg = [i for i in pos if i not in neg], [i for i in neg if i not in pos]
    if not pos or not neg:
        raise SriError(f"the tokenizer cannot tell {positive[0]!r} from {negative[0]!r} by their first token; use "
                       "another model")
    return pos, neg


def two_way_probability(logp: torch.Tensor, positive: Sequence[int], negative: Sequence[int]) -> torch.Tensor:
    """P(positive) / (P(positive) + P(negative)) from next-token log-probabilities ``[N, V]`` → ``[N]``, each side's
    probability summed over its token ids: sigmoid(logsumexp(logp[:, pos]) − logsumexp(logp[:, neg]))."""
    return torch.sigmoid(logp[:, list(positive)].logsumexp(-1) - logp[:, list(negative)].logsumexp(-1))


def next_token_logprobs(adapter: ModelAdapter, rendered: Sequence[str], batch_size: int = 8) -> torch.Tensor:
    """log p(next token | text) for every text: ``[N, V]`` (float32, CPU)."""
    rows = []
    with torch.inference_mode():
        for start in range(0, len(rendered), batch_size):
            ids, mask = adapter.encode(list(rendered[start:start + batch_size]))
            pos = left_padded_positions(mask)
            logits = adapter.model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1).logits
            rows.append(torch.log_softmax(logits[:, -1, :].float(), -1).cpu())
    return torch.cat(rows)


def continuation_logprob(adapter: ModelAdapter, rendered: Sequence[str], target_ids: Sequence[int],
                         batch_size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log p(target | text), greedy_starts_with_target)`` for every text.

    log p(y | x) = Σ_j log p(y_j | x, y_<j) over the target token ids ``y``; the second value says whether the
    model's most likely first token is ``y_1``.
    """
    target = torch.tensor(list(target_ids), dtype=torch.long)
    k = len(target)
    scores, starts = [], []
    with torch.inference_mode():
        for start in range(0, len(rendered), batch_size):
            ids, mask = adapter.encode(list(rendered[start:start + batch_size]))
            b = ids.shape[0]
            full = torch.cat([ids, target.to(ids.device).expand(b, k)], dim=1)
            full_mask = torch.cat([mask, mask.new_ones(b, k)], dim=1)
            pos = left_padded_positions(full_mask)
            logits = adapter.model(input_ids=full, attention_mask=full_mask, position_ids=pos,
                                   logits_to_keep=k + 1).logits[:, :k, :].float()
            logp = torch.log_softmax(logits, -1)
            picked = logp.gather(-1, target.to(logp.device).expand(b, k).unsqueeze(-1)).squeeze(-1)
            scores.append(picked.sum(-1).cpu())
            starts.append((logits[:, 0, :].argmax(-1) == target[0].to(logits.device)).cpu())
    return torch.cat(scores), torch.cat(starts)


class PrefixCache:
    """The KV cache of one prompt prefix, reused for many continuations of it.

    Continuations are tokenized on their own and left-padded *after* the prefix (padding masked out, positions
    continuing from the prefix), so only their tokens are computed. Equal to scoring the joined token
    sequences one by one.
    """

    def __init__(self, adapter: ModelAdapter, prefix: str) -> None:
        self.adapter = adapter
        tok = adapter.tokenizer
        ids = tok(prefix, add_special_tokens=not adapter.uses_chat_template, return_tensors="pt")["input_ids"]
        self.length = ids.shape[1]
        self.cache = DynamicCache(config=adapter.model.config)
        with torch.inference_mode():
            adapter.model(input_ids=ids.to(adapter.device), cache=self.cache, use_cache=True, logits_to_keep=1)

    def logits(self, suffixes: Sequence[str], append: Sequence[int] = (), keep: int = 1) -> torch.Tensor:
        """Logits ``[B, keep, V]`` of the last ``keep`` positions of prefix + suffix_i + ``append`` (token ids
        appended to every row, e.g. a target continuation)."""
        adapter = self.adapter
        enc = adapter.tokenizer(list(suffixes), add_special_tokens=False, padding=True, return_tensors="pt")
        ids, mask = enc["input_ids"], enc["attention_mask"]
        b = ids.shape[0]
        if append:
            extra = torch.tensor(list(append), dtype=ids.dtype).expand(b, len(append))
            ids, mask = torch.cat([ids, extra], 1), torch.cat([mask, torch.ones_like(extra)], 1)
        ids, mask = ids.to(adapter.device), mask.to(adapter.device)
        cache = copy.deepcopy(self.cache)
        cache.batch_repeat_interleave(b)
        full_mask = torch.cat([mask.new_ones(b, self.length), mask], dim=1)
        pos = self.length + left_padded_positions(mask)
        with torch.inference_mode():
            out = adapter.model(input_ids=ids, attention_mask=full_mask, position_ids=pos, cache=cache,
                                use_cache=True, logits_to_keep=keep)
        return out.logits.float()


def prefixed_next_token_logprobs(adapter: ModelAdapter, prefix: str, suffixes: Sequence[str],
                                 batch_size: int = 8) -> torch.Tensor:
    """log p(next token | prefix + suffix_i) for every suffix: ``[N, V]``, computing the shared prefix once."""
    shared = PrefixCache(adapter, prefix)
    rows = [torch.log_softmax(shared.logits(suffixes[s:s + batch_size])[:, -1, :], -1).cpu()
            for s in range(0, len(suffixes), batch_size)]
    return torch.cat(rows) if rows else torch.zeros(0, 0)


def prefixed_continuation_logprob(shared: PrefixCache, suffixes: Sequence[str], target_ids: Sequence[int],
                                  batch_size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """As :func:`continuation_logprob` for the texts ``prefix + suffix_i``, reusing the prefix's cache."""
    target = torch.tensor(list(target_ids), dtype=torch.long)
    k = len(target)
    scores, starts = [], []
    for s in range(0, len(suffixes), batch_size):
        logits = shared.logits(suffixes[s:s + batch_size], append=target.tolist(), keep=k + 1)[:, :k, :].cpu()
        logp = torch.log_softmax(logits, -1)
        scores.append(logp.gather(-1, target.expand(logp.shape[0], k).unsqueeze(-1)).squeeze(-1).sum(-1))
        starts.append(logits[:, 0, :].argmax(-1) == target[0])
    return torch.cat(scores), torch.cat(starts)
