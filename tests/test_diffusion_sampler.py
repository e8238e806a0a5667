"""The diffusion sampler's pieces without a model: schedule, slot scores, selection, pooling weights, settings."""

import math

import pytest
import torch

from sri.errors import SriError
from sri.sampling.diffusion import (
    MASK_SYMBOL,
    DiffusionConfig,
    dream_confidence,
    dream_schedule,
    dream_timesteps,
    dream_transfer_count,
    pick_top,
    pooling_weights,
    render_canvas,
    sample_top,
    slot_scores,
    transfer_schedule,
    truncate_logits,
)


@pytest.mark.parametrize(("masks", "steps", "expected"), [
    (128, 32, [4] * 32),  # the paper's setting: one block of 128 slots, 32 steps
    (10, 4, [3, 3, 2, 2]),  # remainder goes to the earliest steps
    (7, 3, [3, 2, 2]),
    (2, 4, [1, 1, 0, 0]),  # more steps than slots: late steps commit nothing
    (5, 5, [1] * 5),
])
def test_transfer_schedule(masks: int, steps: int, expected: list[int]) -> None:
    got = transfer_schedule(torch.tensor([masks]), steps)
    assert got.tolist() == [expected]
    assert got.sum().item() == masks


def test_transfer_schedule_per_row() -> None:
    got = transfer_schedule(torch.tensor([6, 7, 0]), 3)
    assert got.tolist() == [[2, 2, 2], [3, 2, 2], [0, 0, 0]]


@pytest.mark.parametrize(("gen", "block", "steps", "blocks", "per_block"), [
    (128, 128, 32, 1, 32), (128, 32, 32, 4, 8), (12, 4, 6, 3, 2), (10, 5, 4, 2, 2),
])
def test_block_split(gen: int, block: int, steps: int, blocks: int, per_block: int) -> None:
    c = DiffusionConfig(steps=steps, gen_length=gen, block_length=block)
    assert (c.num_blocks, c.steps_per_block) == (blocks, per_block)
    assert c.params()["block_length"] == block and c.name == "diffusion"


# Three slots with hand-chosen distributions p (logits = log p), so every score is known exactly:
#   slot 0: p = (0.55, 0.44, 0.01)  top-1 0.55 (highest)  margin 0.11  entropy 0.7361
#   slot 1: p = (0.50, 0.25, 0.25)  top-1 0.50            margin 0.25 (highest)  entropy 1.0397
#   slot 2: p = (0.54, 0.46, 0.00)  top-1 0.54            margin 0.08  entropy 0.6899 (lowest)
PROBS = torch.tensor([[0.55, 0.44, 0.01], [0.50, 0.25, 0.25], [0.54, 0.46, 0.0]])
LOGITS = PROBS.log()
X0 = torch.zeros(3, dtype=torch.long)  # argmax of every slot is token 0


def _entropy(p: list[float]) -> float:
    return -sum(q * math.log(q) for q in p if q > 0)


@pytest.mark.parametrize(("remasking", "expected_scores", "best"), [
    ("low_confidence", [0.55, 0.50, 0.54], 0),
    ("margin", [0.11, 0.25, 0.08], 1),
    ("entropy", [-_entropy([0.55, 0.44, 0.01]), -_entropy([0.5, 0.25, 0.25]), -_entropy([0.54, 0.46])], 2),
])
def test_scores_on_hand_fixture(remasking: str, expected_scores: list[float], best: int) -> None:
    assert torch.equal(LOGITS.argmax(-1), X0)
    scores = slot_scores(LOGITS, X0, remasking, torch.arange(3), None)
    assert scores.tolist() == pytest.approx(expected_scores, abs=1e-6)
    chosen = pick_top(scores.unsqueeze(0), torch.tensor([1]))
    assert chosen[0].nonzero().flatten().tolist() == [best]


def test_leftmost_and_random_scores() -> None:
    positions = torch.tensor([7, 3, 9])
    assert pick_top(slot_scores(LOGITS, X0, "leftmost", positions, None).unsqueeze(0),
                    torch.tensor([1]))[0].tolist() == [False, True, False]
    run = lambda seed: slot_scores(LOGITS, X0, "random", positions, torch.Generator().manual_seed(seed))
    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))
    assert ((run(1) >= 0) & (run(1) < 1)).all()


def test_pick_top_rows_counts_and_masked_out_slots() -> None:
    inf = float("-inf")
    scores = torch.tensor([[0.1, 0.9, inf, 0.5, 0.5], [inf, inf, 0.2, inf, 0.3]])
    got = pick_top(scores, torch.tensor([3, 5]))
    assert got[0].tolist() == [False, True, False, True, True]  # ties between equal scores: leftmost first
    assert got[1].tolist() == [False, False, True, False, True]  # never a -inf slot, even when k is larger
    assert pick_top(scores, torch.tensor([2, 1]))[0].tolist() == [False, True, False, True, False]


def test_pooling_weights() -> None:
    mask = 9
    x = torch.tensor([[1, 2, 9, 9, 9, 9], [1, 2, 5, 9, 6, 9]])
    all_slots = pooling_weights(x, 2, mask, "all-slots")
    assert all_slots.tolist() == [[0, 0, 0.25, 0.25, 0.25, 0.25]] * 2
    committed = pooling_weights(x, 2, mask, "committed")
    assert committed[0].tolist() == [0, 0, 0.25, 0.25, 0.25, 0.25]  # nothing committed yet: every slot
    assert committed[1].tolist() == [0, 0, 0.5, 0, 0.5, 0]


def test_render_canvas_shows_masks_and_stops_at_eos() -> None:
    from tests.tiny_models import build_tokenizer

    tok = build_tokenizer()
    ids = tok("Hi there", add_special_tokens=False)["input_ids"] + [tok.eos_token_id] + tok("xyz")["input_ids"]
    masked = [False] * len(ids)
    assert render_canvas(tok, ids, masked, {tok.eos_token_id}) == "Hi there"
    masked[1] = masked[5] = True
    assert render_canvas(tok, ids, masked, {tok.eos_token_id}) == f"H{MASK_SYMBOL} th{MASK_SYMBOL}re"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"steps": 32, "gen_length": 0}, "gen-length must be positive"),
    ({"steps": 32, "gen_length": -4}, "gen-length must be positive"),
    ({"steps": 0}, "steps must be positive"),
    ({"steps": 32, "gen_length": 128, "block_length": 48}, "must be positive and divide gen-length"),
    ({"steps": 30, "gen_length": 128, "block_length": 32}, "must be a multiple of the number of blocks 4"),
    ({"remasking": "topk"}, "remasking 'topk' is unknown"),
    ({"steps": 32, "gen_length": 64, "remasking": "leftmost"}, "must equal gen-length"),
    ({"temperature": -1.0}, "temperature must be ≥ 0"),
    ({"cfg_scale": -0.5}, "cfg-scale must be ≥ 0"),
    ({"schedule": "mdlm"}, "schedule 'mdlm' is unknown"),
    ({"top_k": 0, "schedule": "dream-native"}, "top-k must be a positive integer"),
    ({"top_k": 2.5, "schedule": "dream-native"}, "top-k must be a positive integer"),
    ({"top_p": 0.0, "schedule": "dream-native"}, r"top-p must be in \(0, 1\]"),
    ({"top_p": 1.5, "schedule": "dream-native"}, r"top-p must be in \(0, 1\]"),
    ({"eps": 0.0, "schedule": "dream-native"}, r"eps must be in \(0, 1\)"),
    ({"alg_temp": -1.0, "schedule": "dream-native"}, "alg-temp must be ≥ 0"),
    ({"top_k": 5, "schedule": "llada"}, "--top-k only applies to the dream-native schedule"),
    ({"top_p": 0.9, "eps": 0.01, "schedule": "llada"}, "--top-p, --eps only apply to the dream-native schedule"),
    ({"alg_temp": 0.5, "schedule": "llada"}, "--alg-temp only applies"),
    ({"remasking": "maskgit_plus", "schedule": "llada"}, "Dream's algorithm.*its sri name low_confidence"),
    ({"remasking": "origin", "schedule": "llada"}, "Dream's algorithm.*--schedule dream-native"),
    ({"remasking": "random", "schedule": "dream-native"}, "no dream-native counterpart"),
    ({"steps": 32, "gen_length": 32, "remasking": "leftmost", "schedule": "dream-native"},
     "no dream-native counterpart"),
    ({"steps": 32, "gen_length": 128, "block_length": 32, "schedule": "dream-native"}, "one block"),
    ({"remasking": "origin", "alg_temp": 0.5, "schedule": "dream-native"}, "origin algorithm"),
])
def test_bad_settings_are_one_line_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(SriError, match=message) as e:
        DiffusionConfig(**kwargs)
    assert "\n" not in str(e.value)


def test_ar_order_config() -> None:
    c = DiffusionConfig.ar_order(16)
    assert (c.steps, c.gen_length, c.block_length, c.remasking, c.name) == (16, 16, 16, "leftmost", "diffusion-ar")
    assert DiffusionConfig().params()["name"] == "diffusion"


# ------------------------------------------------------------------------------------------------ dream-native
@pytest.mark.parametrize(("slots", "steps", "expected"), [
    (16, 8, [1, 2, 2, 2, 2, 2, 2, 3]),  # not LLaDA's 2 × 8
    (16, 6, [2, 2, 2, 3, 3, 4]),  # the conformance cases' counts (Dream's _sample)
    (12, 5, [2, 2, 2, 2, 4]),
    (3, 8, [0, 0, 0, 0, 0, 0, 1, 2]),  # n_i can be 0: nothing committed that step
    (1, 1, [1]),
])
def test_dream_schedule(slots: int, steps: int, expected: list[int]) -> None:
    """n_i = int(m · (1 − t_{i+1} / t_i)), n_last = int(m), t = linspace(1, 1e-3, steps + 1) in float32."""
    assert dream_schedule(slots, steps) == expected
    assert sum(expected) == slots


def test_dream_transfer_count_is_per_row_mean_of_the_batch() -> None:
    t = dream_timesteps(8)
    assert t.dtype == torch.float32 and t[0] == 1 and t[-1] == pytest.approx(1e-3)
    assert dream_transfer_count(32, 2, 0, t) == dream_transfer_count(16, 1, 0, t) == 1
    assert dream_transfer_count(31, 2, 7, t) == 15  # the last step: int(m), m = 15.5
    assert dream_transfer_count(5, 1, 0, dream_timesteps(8, eps=0.5)) == 0  # int(5 · 0.0625)


def test_top_k_at_temperature_zero_renormalises_the_confidence() -> None:
    """Dream truncates even when greedy: with top_k the confidence is renormalised over the kept tokens, which
    can change which slot is the most confident (the prediction itself does not change)."""
    p = torch.tensor([[0.40, 0.10, 0.30, 0.20], [0.45, 0.40, 0.10, 0.05]])
    logits = torch.log(p)
    conf, x0 = dream_confidence(logits, "maskgit_plus", 0.0, None, None, None)
    assert x0.tolist() == [0, 0] and conf.tolist() == pytest.approx([0.40, 0.45], abs=1e-6)
    conf_k, x0_k = dream_confidence(logits, "maskgit_plus", 0.0, 2, None, None)
    assert x0_k.tolist() == [0, 0] and conf_k.tolist() == pytest.approx([0.40 / 0.70, 0.45 / 0.85], abs=1e-6)
    assert conf.argmax() == 1 and conf_k.argmax() == 0  # top-k flips which slot commits first
    low = torch.finfo(torch.float32).min
    truncated = truncate_logits(logits, 2, None)
    assert (truncated == low).tolist() == [[False, True, False, True], [False, False, True, True]]
    tied = torch.log(torch.tensor([[0.4, 0.1, 0.25, 0.25]]))
    assert (truncate_logits(tied, 2, None) > low).sum() == 3  # a tie at the k-th value keeps every tied token


def test_top_p_keeps_the_token_that_crosses_the_threshold() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    low = torch.finfo(torch.float32).min
    kept = lambda top_p: (truncate_logits(logits, None, top_p) > low).sum().item()
    assert [kept(0.4), kept(0.5), kept(0.7), kept(0.9), kept(1.0)] == [1, 2, 2, 3, 4]


def test_dream_scores() -> None:
    """maskgit_plus = max p, topk_margin = p1 − p2, entropy = Σ p log(p + 1e-10) (Dream's sample_tokens)."""
    for algorithm, expected in (("maskgit_plus", [0.55, 0.50, 0.54]), ("topk_margin", [0.11, 0.25, 0.08]),
                                ("entropy", [-_entropy([0.55, 0.44, 0.01]), -_entropy([0.5, 0.25, 0.25]),
                                             -_entropy([0.54, 0.46])])):
        score, x0 = dream_confidence(LOGITS, algorithm, 0.0, None, None, None)
        assert torch.equal(x0, X0) and score.tolist() == pytest.approx(expected, abs=1e-6)
    gen = lambda: torch.Generator().manual_seed(0)
    sampled, sampled_again = (dream_confidence(LOGITS, "maskgit_plus", 1.0, None, None, gen()) for _ in range(2))
    assert torch.equal(sampled[1], sampled_again[1])
    assert sampled[0].tolist() == pytest.approx(PROBS.gather(1, sampled[1][:, None]).squeeze(1).tolist(), abs=1e-6)


def test_sample_top_draws_only_candidates() -> None:
    inf = float("-inf")
    scores = torch.tensor([[0.9, inf, 0.1, 0.5], [inf, inf, inf, inf], [inf, 0.3, inf, inf]])
    chosen = sample_top(scores, 2, 0.5, torch.Generator().manual_seed(1))
    assert chosen.sum(1).tolist() == [2, 0, 1] and not chosen[torch.isinf(scores)].any()


@pytest.mark.parametrize(("sri_name", "dream_name"), [
    ("low_confidence", "maskgit_plus"), ("margin", "topk_margin"), ("entropy", "entropy"),
    ("maskgit_plus", "maskgit_plus"), ("topk_margin", "topk_margin"), ("origin", "origin"),
])
def test_sri_names_map_onto_dreams(sri_name: str, dream_name: str) -> None:
    c = DiffusionConfig(steps=8, gen_length=16, remasking=sri_name, schedule="dream-native")
    assert c.remasking == dream_name and c.params()["remasking"] == dream_name
    assert c.params()["schedule"] == "dream-native" and c.params()["eps"] == 1e-3


def test_schedule_resolves_to_the_family_default() -> None:
    class Model:
        def __init__(self, schedule: str) -> None:
            self.default_schedule = schedule

    c = DiffusionConfig(steps=8, gen_length=16, remasking="margin")
    assert c.schedule is None and c.params()["schedule"] is None
    assert c.resolve(Model("dream-native")).remasking == "topk_margin"
    assert c.resolve(Model("llada")) == DiffusionConfig(steps=8, gen_length=16, remasking="margin", schedule="llada")
    assert c.resolve(object()).schedule == "llada"  # a model without a default: LLaDA's
    fixed = DiffusionConfig(steps=8, gen_length=16, schedule="llada")
    assert fixed.resolve(Model("dream-native")) is fixed  # an explicit schedule wins
    assert DiffusionConfig(steps=8, gen_length=8, remasking="leftmost").schedule == "llada"  # AR order
    assert DiffusionConfig.ar_order(8).resolve(Model("dream-native")).schedule == "llada"
    with pytest.raises(SriError, match="one block"):
        DiffusionConfig(steps=8, gen_length=16, block_length=8).resolve(Model("dream-native"))
