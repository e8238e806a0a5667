import pytest
import torch

from sri.errors import SriError
from sri.pooling import POOLINGS, get_pooling, pool_steps


def _forwards() -> torch.Tensor:
    # F=4 forwards, B=2 sequences, D=1: h = forward index (1..4) for row 0, 10× that for row 1
    f = torch.arange(1, 5, dtype=torch.float32).view(4, 1, 1)
    return torch.cat([f, 10 * f], dim=1)


def test_producing_is_running_mean_from_first_forward() -> None:
    phi = pool_steps(_forwards(), end_step=[3, 3], steps=3, pooling=POOLINGS["producing"])
    # step t: mean of forwards 1..t  →  1, 1.5, 2
    assert phi[0, :, 0].tolist() == [1.0, 1.5, 2.0]
    assert phi[1, :, 0].tolist() == [10.0, 15.0, 20.0]


def test_generated_skips_the_producing_prompt_position() -> None:
    phi = pool_steps(_forwards(), end_step=[3, 3], steps=3, pooling=POOLINGS["generated"])
    # step t: mean of the states of generated tokens 1..t = forwards 2..t+1  →  2, 2.5, 3
    assert phi[0, :, 0].tolist() == [2.0, 2.5, 3.0]


def test_after_the_end_the_last_state_is_repeated_then_averaged() -> None:
    """The authors' rule: row 0 ends at step 2, so its states are 1, 2, 2, 2 and φ = 1, 1.5, 5/3, 7/4."""
    phi = pool_steps(_forwards(), end_step=[2, 4], steps=4, pooling=POOLINGS["producing"])
    assert phi[0, :, 0].tolist() == pytest.approx([1.0, 1.5, 5 / 3, 7 / 4], abs=1e-6)
    assert phi[1, :, 0].tolist() == [10.0, 15.0, 20.0, 25.0]
    generated = pool_steps(_forwards(), end_step=[2, 3], steps=3, pooling=POOLINGS["generated"])
    assert generated[0, :, 0].tolist() == pytest.approx([2.0, 2.5, 8 / 3], abs=1e-6)  # states 2, 3, 3


def test_hold_poolings_keep_the_mean_at_the_end() -> None:
    phi = pool_steps(_forwards(), end_step=[2, 4], steps=4, pooling=POOLINGS["producing-hold"])
    assert phi[0, :, 0].tolist() == [1.0, 1.5, 1.5, 1.5]
    assert phi[1, :, 0].tolist() == [10.0, 15.0, 20.0, 25.0]
    assert POOLINGS["producing-hold"].after_end == "hold-mean" and POOLINGS["producing"].after_end == "repeat-state"


def test_diffusion_conventions_take_each_forward_as_is() -> None:
    phi = pool_steps(_forwards(), end_step=[4, 4], steps=4, pooling=POOLINGS["all-slots"])
    assert phi[0, :, 0].tolist() == [1.0, 2.0, 3.0, 4.0]


def test_pooling_must_fit_the_sampler() -> None:
    assert get_pooling(None, "ar").name == "producing"
    with pytest.raises(SriError, match="does not apply to the ar sampler"):
        get_pooling("all-slots", "ar")
    with pytest.raises(SriError, match="unknown"):
        get_pooling("mean", "ar")
