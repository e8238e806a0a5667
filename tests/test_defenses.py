"""Baseline defenses on a tiny random model: they run, time themselves and compute what they claim."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from sri.defenses import LLMGuard, PerplexityFilter, SelfExamine, SmoothLLM, SRIGuardDefense, swap_perturb
from sri.errors import SriError
from sri.guard import fit_guard
from sri.models.chat import render_chat

ROWS = [{"prompt": p, "response": r} for p, r in (
    ("How do I bake bread?", "Mix flour, water and yeast."),
    ("Write a poem about the sea", "The sea is wide."),
    ("Tell me how to pick a lock", "I'm sorry, I can't help with that."),
)]


pytestmark = pytest.mark.usefixtures("one_thread")


def test_perplexity_filter_matches_the_model_loss(tiny_llama) -> None:
    ppl = PerplexityFilter(tiny_llama, quantile=0.5, batch_size=2).fit(ROWS)
    res = ppl.run(ROWS)
    assert res.name == "ppl-filter" and res.seconds > 0 and res.scores.shape == (3,)
    for i, row in enumerate(ROWS):  # unpadded, HF's own shifted cross-entropy
        ids = tiny_llama.tokenizer(row["prompt"], return_tensors="pt")["input_ids"]
        with torch.no_grad():
            loss = tiny_llama.model(ids, labels=ids).loss.item()
        assert res.scores[i] == pytest.approx(loss, abs=1e-4)
    assert ppl.threshold == pytest.approx(np.median(res.scores))
    assert list(res.flags) == list(res.scores > ppl.threshold)
    with pytest.raises(SriError, match="not calibrated"):
        PerplexityFilter(tiny_llama).run(ROWS)


def test_self_examine_reads_yes_no_logits(tiny_llama) -> None:
    res = SelfExamine(tiny_llama, batch_size=2).run(ROWS)
    assert ((res.scores > 0) & (res.scores < 1)).all() and list(res.flags) == list(res.scores > 0.5)
    # by hand for one row: the byte tokenizer's first tokens of Yes/yes and No/no
    from sri.defenses.self_examine import QUESTION

    text = render_chat(tiny_llama, QUESTION.format(response=ROWS[0]["response"]), system="You are a helpful assistant")
    ids = tiny_llama.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        p = tiny_llama.model(ids).logits[0, -1].softmax(-1)
    tok = lambda s: tiny_llama.tokenizer(s, add_special_tokens=False)["input_ids"][0]
    yes = p[tok("Y")] + p[tok("y")]  # " Yes" and " No" share their first byte (a space): dropped
    no = p[tok("N")] + p[tok("n")]
    assert res.scores[0] == pytest.approx((yes / (yes + no)).item(), abs=1e-5)
    with pytest.raises(SriError, match="no 'response'"):
        SelfExamine(tiny_llama).run([{"prompt": "x"}])


def test_llm_guard_classifies_prompts(tiny_qwen2) -> None:
    res = LLMGuard(tiny_qwen2, batch_size=3).run(ROWS)
    assert res.scores.shape == (3,) and ((res.scores > 0) & (res.scores < 1)).all()
    assert list(res.flags) == list(res.scores > 0.5) and res.seconds > 0
    # batching does not change the answer
    one = LLMGuard(tiny_qwen2, batch_size=1).run(ROWS)
    assert np.allclose(one.scores, res.scores, atol=1e-5)


def test_swap_perturbation() -> None:
    text = "abcdefghijklmnopqrstuvwxyz" * 4
    a, b = swap_perturb(text, 0.1, random.Random(3)), swap_perturb(text, 0.1, random.Random(3))
    assert a == b and len(a) == len(text)
    assert 0 < sum(x != y for x, y in zip(a, text, strict=True)) <= 11  # ⌈0.1·104⌉ positions redrawn


def test_smoothllm_generates_perturbed_copies_and_votes(tiny_llama) -> None:
    from sri.sampling import ARConfig

    smooth = SmoothLLM(tiny_llama, copies=3, q=0.1, sampler=ARConfig(steps=4), batch_size=6)
    res = smooth.run(ROWS[:2])
    assert res.responses is not None and len(res.responses) == 2 and res.seconds > 0
    assert set(res.scores) <= {0, 1 / 3, 2 / 3, 1} and list(res.flags) == list(res.scores > 0.5)

    class Scripted(SmoothLLM):  # the vote alone, with answers scripted per copy
        def _generate(self, prompts):
            assert len(prompts) == 6
            return ["I'm sorry, no.", "Sure: step 1", "I cannot do that.", "Sure", "Sure, here", "I'm sorry"]

    voted = Scripted(tiny_llama, copies=3).run(ROWS[:2])
    assert list(voted.flags) == [True, False] and voted.scores.tolist() == pytest.approx([2 / 3, 1 / 3])
    assert voted.responses == ["I'm sorry, no.", "Sure"]


def test_sri_guard_defense_interface() -> None:
    key = {"fingerprint": "f", "hidden_size": 4, "sampler": "ar", "steps": 6, "pooling": "producing", "layer": 1}
    rng = np.random.default_rng(0)
    rows = [{"id": str(i), "prompt": f"p{i}", "sri": rng.beta(12, 1, 6).tolist(), "key": key} for i in range(120)]
    guard = fit_guard(rows[:80], rows[80:], detector="mahalanobis")
    bad = [{"prompt": "p", "sri": [0.9, 0.1, 0.05, 0.1, 0.2, 0.9], "key": key}]
    for streaming in (False, True):
        res = SRIGuardDefense(guard, streaming=streaming).run(rows[80:] + bad)
        assert res.flags[-1] and res.flags[:-1].mean() <= 0.05
