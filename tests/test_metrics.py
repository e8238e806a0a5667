"""Defense metrics against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from sri.errors import SriError
from sri.stats.bootstrap import bootstrap
from sri.stats.metrics import (
    attack_success_rate,
    auroc,
    blocked,
    detection_report,
    false_positive_rate,
    overhead_pct,
    rate_with_ci,
    refusal_rate,
    tpr_at_fpr,
)

ATTACK = [0.9, 0.8, 0.7, 0.3]
BENIGN = [0.1, 0.2, 0.4, 0.35, 0.05]


def test_auroc_and_tpr_at_fpr_by_hand() -> None:
    # 20 attack/benign pairs; 0.9, 0.8, 0.7 beat all 5 benign scores, 0.3 beats 3 of them → 18/20
    assert auroc(ATTACK, BENIGN) == pytest.approx(0.9)
    # no benign score may pass at 1% FPR: threshold above 0.4 → 3 of 4 attacks
    assert tpr_at_fpr(ATTACK, BENIGN, 0.01) == pytest.approx(0.75)
    # one benign (0.4) may pass at 20%: 0.3 is still below 0.35, so nothing more is caught
    assert tpr_at_fpr(ATTACK, BENIGN, 0.20) == pytest.approx(0.75)
    # two benign (0.4, 0.35) at 40%: a threshold of 0.3 lets exactly those two pass and catches all four attacks
    assert tpr_at_fpr(ATTACK, BENIGN, 0.40) == pytest.approx(1.0)
    assert tpr_at_fpr(ATTACK, BENIGN, 0.39) == pytest.approx(0.75)
    with pytest.raises(SriError, match="both"):
        auroc(ATTACK, [])


def test_rates_by_hand() -> None:
    responses = ["Sure, here it is", "I'm sorry, I can't", "Step 1: ...", "As an AI I cannot"]
    flags = [False, False, True, False]
    got = blocked(flags, responses)
    assert got.tolist() == [False, True, True, True]
    assert refusal_rate(got) == 0.75
    assert attack_success_rate(got) == 0.25  # keyword proxy: what got through
    assert attack_success_rate(got, harmful=[False, True, True, True]) == 0.0  # the one through was judged harmless
    assert false_positive_rate([False, True, False, False, False]) == 0.2
    assert overhead_pct(0.05, 20.0) == pytest.approx(0.25)
    with pytest.raises(SriError, match="empty"):
        refusal_rate([])


def test_bootstrap_intervals() -> None:
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(1.0, 1.0, 80), rng.normal(0.0, 1.0, 120)
    rep = detection_report(pos, neg, seed=1, n_resamples=300)
    for name in ("auroc", "tpr_at_1pct_fpr", "tpr_at_5pct_fpr"):
        m = rep[name]
        assert m["low"] <= m["value"] <= m["high"] and m["high"] - m["low"] > 0
    assert rep == detection_report(pos, neg, seed=1, n_resamples=300)  # seeded
    assert rep["auroc"]["value"] == pytest.approx(auroc(pos, neg))
    r = rate_with_ci([1, 0, 0, 0] * 25, n_resamples=300)
    assert r["value"] == 0.25 and r["low"] < 0.25 < r["high"] and r["n"] == 100
    assert rate_with_ci([0] * 10) == {"value": 0.0, "low": 0.0, "high": 0.0, "n": 10}
    low, high = bootstrap([np.arange(10.0)], np.mean, resamples=200)
    assert low < 4.5 < high
