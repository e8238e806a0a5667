"""SRI Guard detectors, calibration, files and key checks on synthetic signals (unit tier: no model)."""

from __future__ import annotations

import numpy as np
import pytest

from sri.errors import IncompatibleError, SriError
from sri.guard import DETECTORS, Guard, fit_guard, make_detector
from sri.guard.detectors import IsolationForestDetector
from tests.cli_helpers import run_cli

T = 16
KEY = {"model": "m", "fingerprint": "fp-1", "hidden_size": 8, "sampler": "ar", "steps": T, "pooling": "producing",
       "layer": 2}


def _benign(n: int, seed: int) -> np.ndarray:
    """σ near 1 (compliant) with noise, like harmless generations."""
    return np.random.default_rng(seed).beta(12, 1, size=(n, T))


def _anomalous(n: int, seed: int) -> np.ndarray:
    """σ that dips toward refusal half-way and comes back partly: the jailbreak shape."""
    x = _benign(n, seed)
    x[:, T // 4: 3 * T // 4] *= np.random.default_rng(seed + 1).uniform(0.05, 0.4, size=(n, 1))
    return x


def _rows(x: np.ndarray, prefix: str, label: str = "harmless", key: dict | None = None) -> list[dict]:
    return [{"id": f"{prefix}{i}", "label": label, "sri": row.tolist(), "key": key or KEY} for i, row in enumerate(x)]


def test_autoencoder_trains_and_threshold_is_the_requested_quantile() -> None:
    x, cal = _benign(400, 0), _benign(200, 1)
    for q in (0.9, 0.99):
        guard = fit_guard(_rows(x, "b"), _rows(cal, "c"), detector="ae", quantile=q, stream="off")
        scores = guard.detector.score(cal)
        assert guard.threshold == pytest.approx(np.quantile(scores, q), rel=1e-12)
        assert (scores > guard.threshold).mean() <= 1 - q + 1e-9
    ae = guard.detector
    assert make_detector("ae", epochs=0).fit(_benign(4, 0).repeat(2, 1)).num_parameters == 2664  # T=32: ≈3k
    assert guard.info["counts"] == {"benign": 400, "calibrate": 200}
    # training lowered the reconstruction error below that of the untrained network
    untrained = make_detector("ae", epochs=0).fit(x)
    assert ae.score(cal).mean() < 0.5 * untrained.score(cal).mean()
    # seeded: the same seed gives the same network, another seed another one
    again = make_detector("ae", seed=0).fit(x).score(cal)
    other = make_detector("ae", seed=1).fit(x).score(cal)
    assert np.array_equal(again, scores) and not np.array_equal(other, scores)


@pytest.mark.parametrize("kind", sorted(DETECTORS))
def test_each_detector_separates_a_synthetic_anomaly(kind: str) -> None:
    guard = fit_guard(_rows(_benign(400, 0), "b"), _rows(_benign(200, 1), "c"), detector=kind, stream="off")
    assert guard.flag(_anomalous(100, 7)).mean() >= 0.9
    assert guard.flag(_benign(300, 9)).mean() <= 0.06


@pytest.mark.parametrize("kind", sorted(DETECTORS))
def test_save_load_round_trip_scores_identically(kind: str, tmp_path) -> None:
    benign = _rows(_benign(150, 0), "b")
    guard = fit_guard(benign, _rows(_benign(80, 1), "c"), detector=kind, stream="union", min_prefix=T - 2,
                      detector_params={"epochs": 30} if kind == "ae" else None)
    guard.save(tmp_path / "g")
    assert {p.name for p in (tmp_path / "g").iterdir()} == {"guard.json", "guard.safetensors"}
    loaded = Guard.load(tmp_path / "g")
    probe = np.r_[_benign(20, 5), _anomalous(20, 6)]
    assert np.array_equal(loaded.score(probe), guard.score(probe))
    assert np.array_equal(loaded.first_flag(probe), guard.first_flag(probe))
    assert loaded.threshold == guard.threshold and loaded.stream_thresholds == guard.stream_thresholds
    assert loaded.key == KEY and loaded.prefixes == [T - 2, T - 1, T]


def test_union_calibration_bounds_the_any_prefix_flag_rate() -> None:
    cal = _benign(200, 1)
    guards = {}
    for stream in ("union", "per-prefix"):
        guard = fit_guard(_rows(_benign(300, 0), "b"), _rows(cal, "c"), detector="mahalanobis", quantile=0.95,
                          stream=stream)
        guards[stream] = guard
        rate = (guard.first_flag(cal) > 0).mean()
        if stream == "union":
            assert rate <= 0.05 and guard.info["stream_level"] >= 0.95
        else:  # each prefix at the 0.95 quantile: together they flag more than 5% of benign signals
            assert rate > 0.05 and all(
                thr == pytest.approx(np.quantile(guard.detectors[t].score(cal[:, :t]), 0.95))
                for t, thr in guard.stream_thresholds.items())
    first = guards["union"].first_flag(_anomalous(50, 3))
    assert (first > 0).all() and (first == T // 4 + 1).mean() >= 0.9  # the dip starts at step T/4 + 1


def test_incompatible_signals_are_refused_with_one_line_errors(tmp_path) -> None:
    guard = fit_guard(_rows(_benign(60, 0), "b"), _rows(_benign(40, 1), "c"), detector="knn", stream="off")
    for field, value in (("layer", 1), ("pooling", "generated"), ("steps", 8), ("fingerprint", "fp-2"),
                         ("sampler", "diffusion")):
        with pytest.raises(IncompatibleError, match=f"differ in {field}") as e:
            guard.check_key({**KEY, field: value})
        assert "\n" not in str(e.value)
    with pytest.raises(IncompatibleError, match="differ in layer"):
        fit_guard(_rows(_benign(60, 0), "b"), _rows(_benign(40, 1), "c", key={**KEY, "layer": 1}))
    with pytest.raises(SriError, match="benign signals only"):
        fit_guard(_rows(_benign(60, 0), "b", label="jailbreak"), _rows(_benign(40, 1), "c"))
    with pytest.raises(SriError, match="held-out"):
        fit_guard(_rows(_benign(60, 0), "b"), _rows(_benign(40, 1), "b"))
    with pytest.raises(SriError, match="unknown"):
        fit_guard(_rows(_benign(60, 0), "b"), _rows(_benign(40, 1), "c"), detector="lof")
    with pytest.raises(SriError, match="quantile"):
        fit_guard(_rows(_benign(60, 0), "b"), _rows(_benign(40, 1), "c"), quantile=99)
    with pytest.raises(SriError, match="fitted on 16"):
        guard.score(_benign(3, 0)[:, :8])


def test_damaged_or_foreign_guard_files_fail_loudly(tmp_path) -> None:
    guard = fit_guard(_rows(_benign(80, 0), "b"), _rows(_benign(40, 1), "c"), detector="iforest", stream="off")
    with pytest.raises(SriError, match="not a guard folder"):
        Guard.load(tmp_path / "nothing")
    guard.save(tmp_path / "g")
    weights = tmp_path / "g" / "guard.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(SriError, match="does not match"):
        Guard.load(tmp_path / "g")
    # an Isolation Forest whose refit no longer reproduces its stored scores is rejected, not silently changed
    det = guard.detector
    assert isinstance(det, IsolationForestDetector)
    det.train_scores = det.train_scores + 1e-3
    guard.save(tmp_path / "g2")
    with pytest.raises(SriError, match="scores differently"):
        Guard.load(tmp_path / "g2")


def test_cli_fit_and_score(tmp_path, capsys) -> None:
    from sri.io import read_jsonl, write_jsonl

    write_jsonl(tmp_path / "benign.jsonl", _rows(_benign(200, 0), "b"))
    write_jsonl(tmp_path / "cal.jsonl", _rows(_benign(100, 1), "c"))
    test_rows = _rows(_benign(30, 2), "h") + _rows(_anomalous(30, 3), "j", label="jailbreak")
    write_jsonl(tmp_path / "test.jsonl", test_rows)
    code, out, err = _cli(["guard", "fit", "--benign", str(tmp_path / "benign.jsonl"), "--calibrate",
                               str(tmp_path / "cal.jsonl"), "--out", str(tmp_path / "g"), "--detector",
                               "mahalanobis"], capsys)
    assert code == 0, err
    assert "no harmful or jailbreak data" in out
    code, out, err = _cli(["guard", "score", "--guard", str(tmp_path / "g"), "--signals",
                               str(tmp_path / "test.jsonl"), "--out", str(tmp_path / "scored.jsonl")], capsys)
    assert code == 0, err
    scored = read_jsonl(tmp_path / "scored.jsonl")
    assert sum(r["guard_flag"] for r in scored if r["label"] == "jailbreak") >= 27
    assert all(r["guard_flag_step"] for r in scored if r["label"] == "jailbreak")
    write_jsonl(tmp_path / "other.jsonl", _rows(_benign(5, 4), "o", key={**KEY, "layer": 7}))
    code, _, err = _cli(["guard", "score", "--guard", str(tmp_path / "g"), "--signals",
                             str(tmp_path / "other.jsonl")], capsys)
    assert code == 2 and "differ in layer" in err and len(err.strip().splitlines()) == 1


def _cli(args: list[str], capsys) -> tuple[int, str, str]:
    res = run_cli(args, capsys)
    return res.code, res.out, res.err
