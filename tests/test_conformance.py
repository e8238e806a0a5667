"""Conformance with the public reference implementations: every case in ``shared/conformance/cases``.

Each case (``<id>.json`` plus, for AR φ and the SRI formula, ``<id>.safetensors``) holds exact input ids and the
outputs a reference produced (LLaDA's ``generate``, Dream's ``_sample``, the SRI authors' AR tracer and
``create_signal``). They are run through the Python entry points the conformance README names, and compared with
its tolerances: diffusion tokens and commit steps exactly, AR tokens and end steps exactly and φ to 1e-4 (steps
after EOS included), σ to 1e-9.

The folder is ``../shared/conformance`` from the repository root, or ``$SRI_CONFORMANCE_DIR``; without it the
tests are skipped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

CONFORMANCE_DIR = Path(os.environ.get("SRI_CONFORMANCE_DIR")
                       or Path(__file__).resolve().parents[1].parent / "shared" / "conformance")
CASES = sorted(p.stem for p in (CONFORMANCE_DIR / "cases").glob("*.json"))
#: max abs difference allowed, per kind (README "Tolerances")
PHI_TOL, SIGMA_TOL = 1e-4, 1e-9

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(not CASES, reason=f"no conformance cases in {CONFORMANCE_DIR} (set SRI_CONFORMANCE_DIR "
                                         "to the folder holding cases/ and models/)"),
]


def _case(case_id: str) -> dict[str, Any]:
    return json.loads((CONFORMANCE_DIR / "cases" / f"{case_id}.json").read_text())


def _tensors(case_id: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(CONFORMANCE_DIR / "cases" / f"{case_id}.safetensors"))


def _model_dir(case: dict[str, Any]) -> str:
    return str(CONFORMANCE_DIR / "models" / case["model"])


def _inputs(case: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.tensor(case["input"]["input_ids"], dtype=torch.long),
            torch.tensor(case["input"]["attention_mask"], dtype=torch.long))


def _run_diffusion(case: dict[str, Any]) -> None:
    from sri.models import load_diffusion_model
    from sri.sampling import DiffusionConfig, sample_diffusion

    s = case["settings"]
    adapter = load_diffusion_model(_model_dir(case), device="cpu", dtype="fp32")
    assert adapter.mask_token_id == s["mask_token_id"] and adapter.logit_shift == s["logit_shift"]
    options: dict[str, Any] = {}
    if s["schedule"] == "dream-native":
        options = {"schedule": "dream-native", "eps": s["eps"]}
        options.update({k: s[k] for k in ("top_k", "top_p") if s.get(k) is not None})
    config = DiffusionConfig(steps=s["steps"], gen_length=s["gen_length"], block_length=s["block_length"],
                             remasking=s["remasking"], temperature=s["temperature"], cfg_scale=s["cfg_scale"],
                             **options)
    input_ids, attention_mask = _inputs(case)
    result = sample_diffusion(adapter, input_ids, attention_mask, config, adapter.resolve_layers("final"))
    expected = case["expected"]
    assert result.tokens.tolist() == expected["output_ids"], "output_ids differ from the reference"
    assert result.extra["committed_at"].tolist() == expected["commit_step"], "commit steps differ from the reference"


def _run_ar(case: dict[str, Any]) -> None:
    from sri.models import load_model
    from sri.pooling import StateCollector, get_pooling
    from sri.sampling import ARConfig, sample_ar

    s, expected = case["settings"], case["expected"]
    adapter = load_model(_model_dir(case), device="cpu", dtype="fp32")
    assert adapter.tokenizer.eos_token_id == expected.get("eos_token_id", s.get("eos_token_id"))
    layer = adapter.resolve_layers("final")[0]  # the final-norm output
    steps = s["steps"]
    input_ids, attention_mask = _inputs(case)
    collector = StateCollector([layer])
    result = sample_ar(adapter, input_ids, attention_mask, ARConfig(steps=steps), [layer], [collector])
    assert result.end_step == expected["end_step"], "end steps differ from the reference"
    for b, (ids, end) in enumerate(zip(expected["output_ids"], expected["end_step"], strict=True)):
        assert result.tokens[b, :end].tolist() == ids, f"row {b}: output_ids differ from the reference"
    phi = collector.pooled(result.end_step, steps, get_pooling(None, "ar"))[layer]
    want = _tensors(case["id"])["phi"]
    assert phi.shape == want.shape
    diff = (phi.double() - want.double()).abs().max().item()
    assert diff <= PHI_TOL, f"φ differs from the reference by {diff:.3g} (> {PHI_TOL:g}), steps after EOS included"


def _run_sri(case: dict[str, Any]) -> None:
    from sri.signal import sri_signal

    s, t = case["settings"], _tensors(case["id"])
    sigma = sri_signal(t["states"], t["mu_harmless"], t["mu_harmful"], tau=s["tau"], eps=s["eps"])
    want = torch.tensor(case["expected"]["sigma"], dtype=torch.float64)
    assert sigma.shape == want.shape
    diff = (sigma.double() - want).abs().max().item()
    assert diff <= SIGMA_TOL, f"σ differs from the reference by {diff:.3g} (> {SIGMA_TOL:g})"


RUNNERS = {"llada-greedy": _run_diffusion, "dream-native": _run_diffusion, "ar-eos-pooling": _run_ar,
           "sri-formula": _run_sri}


@pytest.mark.parametrize("case_id", CASES)
def test_case_matches_the_reference(case_id: str) -> None:
    case = _case(case_id)
    assert case["format"] == "sri-conformance/1"
    if case["kind"] not in RUNNERS:
        pytest.fail(f"case kind '{case['kind']}' is unknown to this test; add a runner for it")
    RUNNERS[case["kind"]](case)
