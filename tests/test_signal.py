import math

import pytest
import torch

from sri.errors import IncompatibleError, SriError
from sri.signal import EPS, TAU, Anchors, sri_signal


def _hand_sigma(phi: list[float], mu_ok: list[float], mu_bad: list[float]) -> float:
    def cos(a: list[float], b: list[float]) -> float:  # the authors' create_signal: ε inside each normalisation
        dot = sum(x * y for x, y in zip(a, b, strict=True))
        return dot / ((math.sqrt(sum(x * x for x in a)) + EPS) * (math.sqrt(sum(y * y for y in b)) + EPS))

    d_ok, d_bad = 1 - cos(phi, mu_ok), 1 - cos(phi, mu_bad)
    ell = (math.log(d_bad + EPS) - math.log(d_ok + EPS)) / TAU
    return 1 / (1 + math.exp(-ell))


def test_formula_matches_hand_computation() -> None:
    g = torch.Generator().manual_seed(0)
    states = torch.randn(3, 4, 5, generator=g)
    mu_ok, mu_bad = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    sigma = sri_signal(states, mu_ok, mu_bad)
    assert sigma.shape == (3, 4)
    for n in range(3):
        for t in range(4):
            expected = _hand_sigma(states[n, t].tolist(), mu_ok[t].tolist(), mu_bad[t].tolist())
            assert sigma[n, t].item() == pytest.approx(expected, abs=1e-9)


def test_sigma_direction_and_range() -> None:
    mu_ok = torch.tensor([[1.0, 0.0, 0.0]])
    mu_bad = torch.tensor([[0.0, 1.0, 0.0]])
    near_ok = torch.tensor([[[1.0, 0.1, 0.0]]])
    near_bad = torch.tensor([[[0.1, 1.0, 0.0]]])
    assert sri_signal(near_ok, mu_ok, mu_bad).item() > 0.99
    assert sri_signal(near_bad, mu_ok, mu_bad).item() < 0.01
    # exactly on an anchor the epsilon keeps the log finite and σ saturates inside [0, 1]
    on_ok = sri_signal(mu_ok.unsqueeze(0), mu_ok, mu_bad).item()
    assert 0.999 < on_ok <= 1.0


def test_shape_mismatch_is_one_line_error() -> None:
    with pytest.raises(IncompatibleError, match="differ in steps or hidden size"):
        sri_signal(torch.zeros(2, 4, 5), torch.ones(3, 5), torch.ones(3, 5))


def _anchors(steps: int = 4, dim: int = 5) -> Anchors:
    key = {"model": "m", "fingerprint": "f", "hidden_size": dim, "num_layers": 2, "sampler": "ar", "steps": steps,
           "pooling": "producing", "layers": [2]}
    return Anchors({2: torch.randn(steps, dim)}, {2: torch.randn(steps, dim)}, key, {"counts": {}})


def test_anchor_round_trip(tmp_path) -> None:
    a = _anchors()
    path = a.save(tmp_path / "anchors.safetensors")
    assert path.with_suffix(".json").is_file()
    b = Anchors.load(path)
    assert b.key == a.key and b.layers == [2]
    assert torch.equal(b.harmless[2], a.harmless[2]) and torch.equal(b.harmful[2], a.harmful[2])
    states = torch.randn(2, 4, 5)
    assert torch.allclose(a.signal(states, 2), b.signal(states, 2))


def test_anchor_file_errors(tmp_path) -> None:
    with pytest.raises(SriError, match="does not exist"):
        Anchors.load(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(SriError, match="not a readable safetensors"):
        Anchors.load(bad)
    with pytest.raises(SriError, match="must end in .safetensors"):
        _anchors().save(tmp_path / "anchors.pt")
    with pytest.raises(IncompatibleError, match="no layer 7"):
        _anchors().signal(torch.zeros(1, 4, 5), 7)
