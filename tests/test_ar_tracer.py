"""The AR step tracer on tiny random Llama and Qwen2 models (unit tier: no assets)."""

import pytest
import torch

from sri.data.prompts import PromptRecord
from sri.errors import SriError
from sri.pooling import POOLINGS, StateCollector
from sri.sampling import ARConfig, StepObserver, sample_ar
from sri.tracing.store import TraceStore
from sri.tracing.tracer import trace_prompts

PROMPTS = ["hi", "Tell me a story about a cat", "x", "What is two plus two?"]


@pytest.fixture(params=["tiny_llama", "tiny_qwen2"])
def adapter(request):
    return request.getfixturevalue(request.param)


def _encode(adapter, prompts):
    return adapter.encode([adapter.render(p) for p in prompts])


def test_greedy_matches_model_generate(adapter) -> None:
    ids, mask = _encode(adapter, PROMPTS)
    result = sample_ar(adapter, ids, mask, ARConfig(steps=12), [adapter.num_layers])
    ref = adapter.model.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False,
                                 pad_token_id=adapter.pad_token_id, eos_token_id=adapter.eos_token_ids)
    gen = ref[:, ids.shape[1]:]
    assert torch.equal(result.tokens[:, : gen.shape[1]], gen)


def test_hooked_states_equal_output_hidden_states(adapter) -> None:
    """Producing-position states from the KV-cached loop == a full no-cache forward with all hidden states."""
    layers = [0, 1, adapter.num_layers // 2, adapter.num_layers]
    ids, mask = _encode(adapter, PROMPTS[:2])
    collector = StateCollector(layers)
    result = sample_ar(adapter, ids, mask, ARConfig(steps=6), layers, [collector])
    full = torch.cat([ids, result.tokens], dim=1)
    full_mask = torch.cat([mask, torch.ones_like(result.tokens)], dim=1)
    pos = (full_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        hs = adapter.model(full, attention_mask=full_mask, position_ids=pos, output_hidden_states=True).hidden_states
    P = ids.shape[1]
    for layer in layers:
        got = torch.stack(collector.forwards[layer])  # [F, B, D]
        for t in range(6):
            assert torch.allclose(got[t], hs[layer][:, P - 1 + t], atol=1e-4), (layer, t)


def test_batched_trace_equals_unbatched(adapter, tmp_path) -> None:
    records = [PromptRecord(id=str(i), prompt=p) for i, p in enumerate(PROMPTS)]
    batched = trace_prompts(adapter, records, tmp_path / "b", sampler=ARConfig(steps=10), layers="final,mid",
                            batch_size=4, progress=False)
    single = trace_prompts(adapter, records, tmp_path / "s", sampler=ARConfig(steps=10), layers="final,mid",
                           batch_size=1, progress=False)
    rows_b, st_b = batched.load()
    rows_s, st_s = single.load()
    order_b = {r["id"]: i for i, r in enumerate(rows_b)}
    for j, r in enumerate(rows_s):
        i = order_b[r["id"]]
        assert rows_b[i]["token_ids"] == r["token_ids"]
        assert rows_b[i]["step_texts"] == r["step_texts"]
        for layer in batched.layers:
            assert torch.allclose(st_b[layer][i], st_s[layer][j], atol=1e-4)


def test_eos_ends_sequence_and_pools_by_the_after_end_rule(adapter) -> None:
    ids, mask = _encode(adapter, ["hello there"])
    free = sample_ar(adapter, ids, mask, ARConfig(steps=8), [adapter.num_layers])
    toks = free.tokens[0].tolist()
    t_eos = next(t for t in range(2, 8) if toks[t] not in toks[:t])  # a token first produced at step t+1
    gen_cfg = adapter.model.generation_config
    old = gen_cfg.eos_token_id
    gen_cfg.eos_token_id = [toks[t_eos]]
    try:
        for name in ("producing", "generated", "producing-hold", "generated-hold"):
            collector = StateCollector([adapter.num_layers])
            res = sample_ar(adapter, ids, mask, ARConfig(steps=8), [adapter.num_layers], [collector], pooling=name)
            e = t_eos + 1
            assert res.end_step == [e] and res.ended_by == ["eos"]
            pooling = POOLINGS[name]
            phi = collector.pooled(res.end_step, 8, pooling)[adapter.num_layers][0]
            h = torch.stack(collector.forwards[adapter.num_layers])[pooling.offset:, 0].double()  # h_1 … h_e
            assert torch.allclose(phi[e - 1].double(), h[:e].mean(0), atol=1e-6)
            for t in range(e + 1, 9):  # 1-based steps after EOS
                if pooling.after_end == "repeat-state":  # the authors' rule: pad with h_e, then the running mean
                    want = (h[:e].sum(0) + (t - e) * h[e - 1]) / t
                    assert torch.allclose(phi[t - 1].double(), want, atol=1e-6)
                    assert not torch.equal(phi[t - 1], phi[e - 1])
                else:
                    assert torch.equal(phi[t - 1], phi[e - 1])
    finally:
        gen_cfg.eos_token_id = old


def test_generated_pooling_averages_generated_token_states(tiny_llama) -> None:
    a = tiny_llama
    ids, mask = _encode(a, ["abc"])
    collector = StateCollector([a.num_layers])
    res = sample_ar(a, ids, mask, ARConfig(steps=5), [a.num_layers], [collector], pooling="generated")
    full = torch.cat([ids, res.tokens], dim=1)
    with torch.no_grad():
        hs = a.model(full, output_hidden_states=True).hidden_states[-1][0]
    P = ids.shape[1]
    phi = collector.pooled(res.end_step, 5, POOLINGS["generated"])[a.num_layers][0]
    for t in range(5):
        assert torch.allclose(phi[t], hs[P: P + t + 1].mean(0), atol=1e-4)


def test_sampling_is_seeded(tiny_llama) -> None:
    ids, mask = _encode(tiny_llama, PROMPTS)
    run = lambda seed: sample_ar(tiny_llama, ids, mask, ARConfig(steps=10, temperature=1.0, top_k=50, top_p=0.9,
                                                                 seed=seed), [2]).tokens
    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))


class _StopRowZeroAt(StepObserver):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step(self, event) -> None:
        if event.step == self.step and not event.trailing:
            event.request_stop([0], "test-guard")


def test_observer_can_stop_a_sequence(tiny_llama) -> None:
    ids, mask = _encode(tiny_llama, PROMPTS[:2])
    res = sample_ar(tiny_llama, ids, mask, ARConfig(steps=6), [2], [_StopRowZeroAt(2)])
    assert res.end_step[0] == 2 and res.ended_by[0] == "test-guard"
    assert (res.tokens[0, 2:] == tiny_llama.pad_token_id).all()
    assert res.end_step[1] == 6


def test_layer_resolution(tiny_qwen2) -> None:
    n = tiny_qwen2.num_layers
    assert tiny_qwen2.resolve_layers("final") == [n]
    assert tiny_qwen2.resolve_layers("-1,0,mid") == [n, 0, n // 2]
    with pytest.raises(SriError, match="out of range"):
        tiny_qwen2.resolve_layers(str(n + 1))
    with pytest.raises(SriError, match="not understood"):
        tiny_qwen2.resolve_layers("top")


def test_trace_row_contents(tiny_llama, tmp_path) -> None:
    recs = [PromptRecord(id="a", prompt="hello", label="harmless", meta={"category": "x"})]
    store = trace_prompts(tiny_llama, recs, tmp_path / "t", sampler=ARConfig(steps=5), progress=False)
    row = TraceStore.open(tmp_path / "t").rows()[0]
    assert row["rendered_prompt"].startswith("<|im_start|>system\nYou are a helpful assistant")
    assert len(row["step_texts"]) == 5 and row["step_texts"][-1] == row["response"]
    assert row["meta"] == {"category": "x"} and row["label"] == "harmless"
    key = store.key
    assert key["sampler"] == "ar" and key["steps"] == 5 and key["pooling"] == "producing"
    assert key["layers"] == [tiny_llama.num_layers] and key["fingerprint"].startswith("folder-sha256:")
    assert store.meta["settings"]["sampler"]["temperature"] == 0.0


def test_stop_tokens_end_generation_and_are_recorded(tiny_llama_dir, tmp_path, capsys) -> None:
    """``--stop-token`` (string or id) ends a response like EOS, and every stop id goes into run.json."""
    from sri.models import load_model
    from tests.cli_helpers import run_cli

    plain = load_model(str(tiny_llama_dir), device="cpu", dtype="fp32")
    ids, mask = _encode(plain, ["hello there"])
    toks = sample_ar(plain, ids, mask, ARConfig(steps=8), [plain.num_layers]).tokens[0].tolist()
    stop = next(toks[t] for t in range(2, 8) if toks[t] not in toks[:t])  # first produced at step t + 1
    e = toks.index(stop) + 1
    as_text = plain.tokenizer.convert_ids_to_tokens(stop)
    for spec in (str(stop), as_text):
        a = load_model(str(tiny_llama_dir), device="cpu", dtype="fp32", stop_tokens=[spec])
        assert stop in a.stop_token_ids and set(plain.stop_token_ids) < set(a.stop_token_ids)
        res = sample_ar(a, ids, mask, ARConfig(steps=8), [a.num_layers])
        assert res.end_step == [e] and res.ended_by == ["eos"]
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello there\n")
    base = ["trace", "--model", str(tiny_llama_dir), "--prompts", str(prompts), "--steps", "8", "--device", "cpu"]
    res = run_cli([*base, "--out", str(tmp_path / "t"), "--stop-token", str(stop)], capsys)
    assert res.code == 0, res.err
    store = TraceStore.open(tmp_path / "t")
    assert store.meta["settings"]["stop_token_ids"] == sorted({*plain.stop_token_ids, stop})
    assert store.rows()[0]["end_step"] == e
    for bad in ("no-such-token-xyz", "99999999"):
        res = run_cli([*base, "--out", str(tmp_path / "bad"), "--stop-token", bad], capsys)
        assert res.code == 2 and len(res.error_lines) == 1 and "stop token" in res.err
        assert not (tmp_path / "bad").exists()
