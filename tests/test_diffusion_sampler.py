"""The diffusion sampler's pieces without a model: schedule, slot scores, selection, pooling weights, settings."""

import math

import pytest
import torch

from sri.errors import SriError
from sri.sampling.diffusion import (
    MASK_SYMBOL,
    DiffusionConfig,
    pick_top,
    pooling_weights,
    render_canvas,
    slot_scores,
    transfer_schedule,
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
    from sri.models.tiny import build_tokenizer

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
])
def test_bad_settings_are_one_line_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(SriError, match=message) as e:
        DiffusionConfig(**kwargs)
    assert "\n" not in str(e.value)


def test_ar_order_config() -> None:
    c = DiffusionConfig.ar_order(16)
    assert (c.steps, c.gen_length, c.block_length, c.remasking, c.name) == (16, 16, 16, "leftmost", "diffusion-ar")
    assert DiffusionConfig().params()["name"] == "diffusion"
