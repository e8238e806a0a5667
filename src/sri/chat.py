"""Using a local chat model as a tool (attacker, judge, target of an attack): render a conversation, generate
text, and score continuations — without tracing.

Generation reuses the project's KV-cached AR sampler (:func:`sri.sampling.sample_ar`) with no layers captured,
so greedy or seeded sampling behaves exactly as in a trace.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from transformers import DynamicCache

from .models import ModelAdapter
from .sampling import ARConfig, sample_ar

#: ``system=ADAPTER_SYSTEM`` keeps the adapter's own system prompt (the paper's "You are a helpful assistant").
ADAPTER_SYSTEM = object()


def render_chat(adapter: ModelAdapter, user: str, *, system: str | object | None = ADAPTER_SYSTEM,
                assistant_prefix: str = "") -> str:
    """The exact text for one user turn with ``system`` (``None``: no system turn) and the generation prompt,
    followed by ``assistant_prefix`` (words put in the assistant's mouth, which it then continues)."""
    sys_text = adapter.system_prompt if system is ADAPTER_SYSTEM else system
    tok = adapter.tokenizer
    if adapter.uses_chat_template:
        messages = [{"role": "user", "content": user}]
        if sys_text:
            messages.insert(0, {"role": "system", "content": sys_text})
        try:
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception:  # templates without a system role: fold it into the user turn
            merged = f"{sys_text}\n\n{user}" if sys_text else user
            text = tok.apply_chat_template([{"role": "user", "content": merged}], tokenize=False,
                                           add_generation_prompt=True)
    else:
        head = f"{sys_text}\n\n" if sys_text else ""
        text = f"{head}User: {user}\nAssistant:" + (" " if assistant_prefix else "")
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


def next_token_logprobs(adapter: ModelAdapter, rendered: Sequence[str], batch_size: int = 8) -> torch.Tensor:
    """log p(next token | text) for every text: ``[N, V]`` (float32, CPU)."""
    rows = []
    with torch.inference_mode():
        for start in range(0, len(rendered), batch_size):
            ids, mask = adapter.encode(list(rendered[start:start + batch_size]))
            pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
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
            pos = (full_mask.long().cumsum(-1) - 1).clamp(min=0)
            logits = adapter.model(input_ids=full, attention_mask=full_mask, position_ids=pos,
                                   logits_to_keep=k + 1).logits[:, :k, :].float()
            logp = torch.log_softmax(logits, -1)
            picked = logp.gather(-1, target.to(logp.device).expand(b, k).unsqueeze(-1)).squeeze(-1)
            scores.append(picked.sum(-1).cpu())
            starts.append((logits[:, 0, :].argmax(-1) == target[0].to(logits.device)).cpu())
    return torch.cat(scores), torch.cat(starts)


def prefixed_next_token_logprobs(adapter: ModelAdapter, prefix: str, suffixes: Sequence[str],
                                 batch_size: int = 8) -> torch.Tensor:
    """log p(next token | prefix + suffix_i) for every suffix: ``[N, V]``, computing the shared prefix once.

    The prefix runs once into a KV cache that every batch reuses; the suffixes are tokenized on their own and
    left-padded *after* the prefix (padding masked out, positions continuing from the prefix), so only suffix
    tokens are computed per item. Equal to scoring the joined token sequences one by one.
    """
    tok = adapter.tokenizer
    model = adapter.model
    prefix_ids = tok(prefix, add_special_tokens=not adapter.uses_chat_template, return_tensors="pt")["input_ids"]
    prefix_ids = prefix_ids.to(adapter.device)
    n_prefix = prefix_ids.shape[1]
    rows = []
    with torch.inference_mode():
        base = DynamicCache(config=model.config)
        model(input_ids=prefix_ids, cache=base, use_cache=True, logits_to_keep=1)
        for start in range(0, len(suffixes), batch_size):
            enc = tok(list(suffixes[start:start + batch_size]), add_special_tokens=False, padding=True,
                      return_tensors="pt")
            ids, mask = enc["input_ids"].to(adapter.device), enc["attention_mask"].to(adapter.device)
            b = ids.shape[0]
            cache = copy.deepcopy(base)
            cache.batch_repeat_interleave(b)
            full_mask = torch.cat([mask.new_ones(b, n_prefix), mask], dim=1)
            pos = n_prefix + (mask.long().cumsum(-1) - 1).clamp(min=0)
            logits = model(input_ids=ids, attention_mask=full_mask, position_ids=pos, cache=cache, use_cache=True,
                           logits_to_keep=1).logits
            rows.append(torch.log_softmax(logits[:, -1, :].float(), -1).cpu())
    return torch.cat(rows) if rows else torch.zeros(0, 0)
