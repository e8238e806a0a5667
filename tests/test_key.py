"""The compatibility key: system prompt, dtype and the trajectory-changing sampler settings are in it, so anchors,
signals and guards refuse to mix states made under different ones; artefacts from before a field joined the key
are refused with a message saying so, not a KeyError."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sri.data.prompts import PromptRecord
from sri.errors import IncompatibleError
from sri.sampling import ARConfig, DiffusionConfig
from sri.signal import Anchors, compute_signals
from sri.tracing.store import KEY_FIELDS, TraceStore, check_compatible
from sri.tracing.tracer import trace_key, trace_prompts
from tests.cli_helpers import run_cli

pytestmark = pytest.mark.usefixtures("one_thread")

RECORDS = [PromptRecord(id=f"p{i}", prompt=f"prompt number {i}", label="harmless") for i in range(2)]


def _anchors_from(store: TraceStore) -> Anchors:
    _, states = store.load()
    mean = {layer: s.mean(0) for layer, s in states.items()}
    return Anchors(mean, {layer: m + 1 for layer, m in mean.items()}, store.key)


def _trace(adapter, out: Path, **sampler) -> TraceStore:
    return trace_prompts(adapter, RECORDS, out, sampler=ARConfig(steps=3, **sampler), progress=False)


# ------------------------------------------------------------------------------------------------ contents
def test_key_holds_system_prompt_dtype_and_decoding(tiny_llama) -> None:
    key = trace_key(tiny_llama, ARConfig(steps=4), [2], "producing")
    assert set(KEY_FIELDS) <= set(key)
    assert key["system_prompt"] == tiny_llama.system_prompt and key["dtype"] == "float32"
    # greedy: top-k, top-p and seed change nothing, so they are not in the key
    assert key["decoding"] == {"temperature": 0.0, "ignore_eos": False,
                               "stop_token_ids": tiny_llama.stop_token_ids}
    assert trace_key(tiny_llama, ARConfig(steps=4, top_k=5, seed=3), [2], "producing") == key
    sampled = trace_key(tiny_llama, ARConfig(steps=4, temperature=0.7, top_k=5, seed=3), [2], "producing")
    assert sampled["decoding"] == {"temperature": 0.7, "ignore_eos": False, "top_k": 5, "top_p": 1.0, "seed": 3,
                                   "random_stream": "per-prompt", "stop_token_ids": tiny_llama.stop_token_ids}
    fixed = trace_key(tiny_llama, ARConfig(steps=4, ignore_eos=True), [2], "producing")
    assert "stop_token_ids" not in fixed["decoding"]  # every row runs T steps: stop ids change nothing


def test_diffusion_key_holds_the_schedule_settings(tmp_path: Path) -> None:
    from sri.models import load_diffusion_model
    from tests.tiny_models import build_tiny_masked_lm

    a = load_diffusion_model(str(build_tiny_masked_lm(tmp_path / "dream", "dream", seed=0)), device="cpu",
                             dtype="fp32")
    key = trace_key(a, DiffusionConfig(steps=4, gen_length=8), [1], "all-slots")
    d = key["decoding"]
    assert d["schedule"] == "dream-native"  # resolved for the model, whether or not it was given
    for field in ("gen_length", "block_length", "remasking", "temperature", "cfg_scale", "top_k", "top_p", "eps",
                  "alg_temp", "mask_token_id", "logit_shift", "stop_token_ids"):
        assert field in d, field
    assert "seed" not in d  # nothing is drawn
    assert trace_key(a, DiffusionConfig(steps=4, gen_length=8, schedule="dream-native"), [1], "all-slots") == key
    drawn = trace_key(a, DiffusionConfig(steps=4, gen_length=8, temperature=0.5, seed=7), [1], "all-slots")
    assert drawn["decoding"]["seed"] == 7
    llada = trace_key(a, DiffusionConfig(steps=4, gen_length=8, block_length=4, schedule="llada"), [1], "all-slots")
    assert llada["decoding"]["block_length"] == 4 and "eps" not in llada["decoding"]
    with pytest.raises(IncompatibleError, match=r"differ in decoding\.schedule \('dream-native' vs 'llada'\)"):
        check_compatible(key, {**key, "decoding": llada["decoding"]}, "a", "b")


# ------------------------------------------------------------------------------------------------ refusals
def test_anchors_under_another_system_prompt_are_refused(tiny_llama_dir: Path, tmp_path: Path, capsys) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello\nhow are you\n")
    common = ["trace", "--model", str(tiny_llama_dir), "--prompts", str(prompts), "--steps", "3", "--device", "cpu",
              "--dtype", "fp32"]
    assert run_cli([*common, "--out", str(tmp_path / "a"), "--system-prompt", "You are A"], capsys).code == 0
    assert run_cli([*common, "--out", str(tmp_path / "b"), "--system-prompt", "You are B"], capsys).code == 0
    anchors = _anchors_from(TraceStore.open(tmp_path / "a"))
    anchors.save(tmp_path / "a.safetensors")
    compute_signals(anchors, TraceStore.open(tmp_path / "a"))  # same key: fine
    res = run_cli(["signal", "--anchors", str(tmp_path / "a.safetensors"), "--traces", str(tmp_path / "b"),
                   "--out", str(tmp_path / "s.jsonl")], capsys)
    assert res.code == 2 and len(res.error_lines) == 1 and "differ in system_prompt" in res.err
    assert "'You are A'" in res.err and not (tmp_path / "s.jsonl").exists()


def test_anchors_under_another_dtype_are_refused(tiny_llama_dir: Path, tiny_llama, tmp_path: Path) -> None:
    from sri.models import load_model

    bf16 = load_model(str(tiny_llama_dir), device="cpu", dtype="bf16")
    anchors = _anchors_from(_trace(tiny_llama, tmp_path / "fp32"))
    with pytest.raises(IncompatibleError, match=r"differ in dtype \('float32' vs 'bfloat16'\)"):
        compute_signals(anchors, _trace(bf16, tmp_path / "bf16"))


def test_anchors_under_another_temperature_are_refused(tiny_llama, tmp_path: Path) -> None:
    anchors = _anchors_from(_trace(tiny_llama, tmp_path / "greedy"))
    with pytest.raises(IncompatibleError, match=r"differ in decoding\.temperature \(0\.0 vs 0\.8\)"):
        compute_signals(anchors, _trace(tiny_llama, tmp_path / "hot", temperature=0.8, seed=1))
    hot = _anchors_from(TraceStore.open(tmp_path / "hot"))
    with pytest.raises(IncompatibleError, match=r"differ in decoding\.seed"):  # sampling: the seed matters
        compute_signals(hot, _trace(tiny_llama, tmp_path / "hot2", temperature=0.8, seed=2))


def test_guard_observer_refuses_another_system_prompt(tiny_llama, tmp_path: Path) -> None:
    from dataclasses import replace

    from sri.guard.guard import Guard, StepAnchors
    from sri.guard.streaming import GuardObserver

    key = {**trace_key(tiny_llama, ARConfig(steps=3), [2], "producing"), "layer": 2}
    D = tiny_llama.hidden_size
    guard = Guard({}, 0.0, {}, 0.99, key, StepAnchors(torch.zeros(3, D), torch.ones(3, D), 0.1, 1e-8))
    GuardObserver(guard).check_compatible(tiny_llama, ARConfig(steps=3), "producing", [2])
    other = replace(tiny_llama, system_prompt="Something else")
    with pytest.raises(IncompatibleError, match="this run and the guard differ in system_prompt"):
        GuardObserver(guard).check_compatible(other, ARConfig(steps=3), "producing", [2])


def test_old_artefacts_without_the_new_fields_are_refused_clearly(tiny_llama, tmp_path: Path) -> None:
    store = _trace(tiny_llama, tmp_path / "t")
    old_key = {k: v for k, v in store.key.items() if k not in ("system_prompt", "dtype", "decoding")}
    fresh = _anchors_from(store)
    old = Anchors(fresh.harmless, fresh.harmful, old_key)
    with pytest.raises(IncompatibleError, match=r"anchors records no system_prompt .*older sri.*recompute anchors") \
            as e:
        compute_signals(old, store)
    assert "\n" not in str(e.value)
    with pytest.raises(IncompatibleError, match="older sri"):
        check_compatible(store.key, old_key, "traces", "anchors")


def test_batch_size_is_not_in_the_key(tiny_llama, tmp_path: Path) -> None:
    a = trace_prompts(tiny_llama, RECORDS, tmp_path / "b1", sampler=ARConfig(steps=3), batch_size=1, progress=False)
    b = trace_prompts(tiny_llama, RECORDS, tmp_path / "b2", sampler=ARConfig(steps=3), batch_size=2, progress=False)
    assert a.key == b.key
    _, states = b.load()
    compute_signals(_anchors_from(a), b)
    assert torch.isfinite(states[a.layers[0]]).all()


def test_unreadable_keys_are_one_line_errors() -> None:
    for bad in ([], None, "key"):
        with pytest.raises(IncompatibleError, match="no readable compatibility key"):
            check_compatible(bad, {"fingerprint": "f"}, "anchors", "traces")  # type: ignore[arg-type]
