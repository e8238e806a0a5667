"""Diffusion sampling and tracing on tiny masked diffusion LMs loaded through the real loading path (unit tier).

Models: LLaDA-like (bidirectional Llama, mask id in config, unshifted logits), Dream-like (bidirectional Qwen2,
mask id from the tokenizer, shifted logits), and a LLaDA-layout model that ships its own modelling code.
"""

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from sri.data.prompts import PromptRecord
from sri.errors import IncompatibleError, SriError
from sri.models import DiffusionAdapter, load_diffusion_model, load_model
from sri.pooling import POOLINGS, StateCollector
from sri.sampling import ARConfig, DiffusionConfig, StepObserver, sample_ar, sample_diffusion
from sri.sampling.diffusion import diffusion_rows, dream_schedule
from sri.tracing.tracer import trace_prompts
from tests.tiny_models import build_tiny_causal_lm, build_tiny_masked_lm, build_tiny_remote_llada

PROMPTS = ["hi", "Tell me a story about a cat", "x", "What is two plus two?"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("diffusion-models")
    return {
        "llada": build_tiny_masked_lm(root / "llada", "llada", seed=0),
        "dream": build_tiny_masked_lm(root / "dream", "dream", layers=3, hidden=48, heads=4, kv_heads=1, seed=1),
        "remote": build_tiny_remote_llada(root / "remote", seed=2),
    }


@pytest.fixture(scope="module")
def adapters(model_dirs: dict[str, Path]) -> dict[str, DiffusionAdapter]:
    return {name: load_diffusion_model(str(folder), device="cpu", dtype="fp32", trust_remote_code=name == "remote")
            for name, folder in model_dirs.items()}


@pytest.fixture(params=["llada", "dream", "remote"])
def adapter(request, adapters) -> DiffusionAdapter:
    return adapters[request.param]


def _encode(adapter, prompts):
    return adapter.encode([adapter.render(p) for p in prompts])


class Recorder(StepObserver):
    """Keeps every step event's canvas, commits and predictions."""

    def __init__(self) -> None:
        self.events = []

    def on_step(self, event) -> None:
        self.events.append(event)


# ------------------------------------------------------------------------------------------------ loading
def test_families_and_conventions(adapters) -> None:
    llada, dream, remote = adapters["llada"], adapters["dream"], adapters["remote"]
    mask = llada.tokenizer.convert_tokens_to_ids("<|mask|>")
    assert (llada.family.name, llada.logit_shift, llada.extra["mask_id_source"]) == ("llada", False, "config")
    assert (dream.family.name, dream.logit_shift, dream.extra["mask_id_source"]) == ("dream", True, "tokenizer")
    assert (remote.family.name, remote.logit_shift) == ("llada", False)
    assert remote.family.final_norm == "model.transformer.ln_f" and remote.extra["layout"] == "llada"
    assert not remote.position_ids  # like LLaDA's own forward
    assert {a.mask_token_id for a in adapters.values()} == {mask}
    assert all(a.family.kind == "masked-diffusion" for a in adapters.values())


def test_attention_is_bidirectional(adapter) -> None:
    """Changing the last token changes the logits at the first position (impossible with a causal mask)."""
    x = torch.tensor([[5, 6, 7, 8, 9]])
    y = x.clone()
    y[0, -1] = 10
    ones = torch.ones_like(x)
    with torch.no_grad():
        assert not torch.allclose(adapter.logits(x, ones)[0, 0], adapter.logits(y, ones)[0, 0])


def test_remote_code_needs_the_flag(model_dirs) -> None:
    with pytest.raises(SriError, match="ships its own modelling code.*--trust-remote-code"):
        load_diffusion_model(str(model_dirs["remote"]), device="cpu")


def test_overrides_and_load_errors(model_dirs, tmp_path) -> None:
    a = load_diffusion_model(str(model_dirs["llada"]), device="cpu", family="dream", mask_id=3, logit_shift=False)
    assert (a.family.name, a.mask_token_id, a.logit_shift) == ("dream", 3, False)
    with pytest.raises(SriError, match="family 'bert' is unknown"):
        load_diffusion_model(str(model_dirs["llada"]), device="cpu", family="bert")
    with pytest.raises(SriError, match="outside the vocabulary"):
        load_diffusion_model(str(model_dirs["llada"]), device="cpu", mask_id=10**6)
    plain = build_tiny_causal_lm(tmp_path / "no-mask", mask_token=False)
    with pytest.raises(SriError, match="has no mask token.*--mask-id") as e:
        load_diffusion_model(str(plain), device="cpu")
    assert "\n" not in str(e.value)


def test_diffusion_sampler_refuses_an_ar_adapter(model_dirs, tiny_llama, tmp_path) -> None:
    with pytest.raises(SriError, match="is a masked-diffusion model"):  # the AR loader refuses LLaDA weights …
        load_model(str(model_dirs["llada"]), device="cpu")
    with pytest.raises(SriError, match="needs a masked diffusion model"):  # … and the sampler an AR adapter
        trace_prompts(tiny_llama, [PromptRecord(id="a", prompt="hi")], tmp_path / "t", sampler=DiffusionConfig(),
                      progress=False)


# ------------------------------------------------------------------------------------------------ sampling
def _greedy_left_to_right(adapter: DiffusionAdapter, prompt: torch.Tensor, n: int) -> list[int]:
    """Independent reference: fill the slots one by one, left to right, with the argmax at that slot."""
    P = prompt.shape[0]
    x = torch.cat([prompt, torch.full((n,), adapter.mask_token_id)])
    with torch.no_grad():
        for t in range(n):
            logits = adapter.model(input_ids=x[None]).logits[0]
            x[P + t] = logits[P + t - int(adapter.logit_shift)].argmax()
    return x[P:].tolist()


def test_ar_order_equals_greedy_left_to_right(adapter) -> None:
    ids, mask = _encode(adapter, ["Tell me a story"])
    rec = Recorder()
    result = sample_diffusion(adapter, ids, mask, DiffusionConfig.ar_order(10), [adapter.num_layers], [rec])
    assert result.tokens[0].tolist() == _greedy_left_to_right(adapter, ids[0], 10)
    assert [e.extra["committed"][0].nonzero().flatten().tolist() for e in rec.events] == [[t] for t in range(10)]


def test_ar_order_on_a_causal_model_equals_the_ar_sampler(tiny_llama) -> None:
    """With causal attention and shifted logits, AR-order diffusion sampling *is* AR decoding (batched, padded)."""
    family = replace(tiny_llama.family, kind="masked-diffusion",
                     mask_token_id=tiny_llama.tokenizer.mask_token_id, logit_shift=True)
    causal = DiffusionAdapter(model=tiny_llama.model, tokenizer=tiny_llama.tokenizer, family=family, name="causal",
                              fingerprint="x", forward_kwargs={"use_cache": False})
    ids, mask = _encode(tiny_llama, PROMPTS)
    ours = sample_diffusion(causal, ids, mask, DiffusionConfig.ar_order(8), [2])
    ar = sample_ar(tiny_llama, ids, mask, ARConfig(steps=8), [2])
    for b, end in enumerate(ar.end_step):
        assert ours.tokens[b, :end].tolist() == ar.tokens[b, :end].tolist()


SETTINGS = [
    (DiffusionConfig(steps=6, gen_length=12, block_length=4), [[2, 2]] * 3),
    (DiffusionConfig(steps=4, gen_length=10, block_length=5, remasking="margin"), [[3, 2]] * 2),
    (DiffusionConfig(steps=3, gen_length=7, remasking="entropy"), [[3, 2, 2]]),
    (DiffusionConfig(steps=4, gen_length=8, remasking="random", temperature=0.7, cfg_scale=1.0), [[2, 2, 2, 2]]),
]


@pytest.mark.parametrize(("config", "per_block"), SETTINGS)
def test_schedule_blocks_and_commits(adapters, config: DiffusionConfig, per_block: list[list[int]]) -> None:
    """Exact per-step commit counts, commits only inside the current block, committed tokens never change,
    no mask left at the end."""
    adapter = adapters["llada"]
    ids, mask = _encode(adapter, PROMPTS[:2])
    rec = Recorder()
    result = sample_diffusion(adapter, ids, mask, config, [adapter.num_layers], [rec])
    expected = [n for block in per_block for n in block]
    M = adapter.mask_token_id
    previous = torch.full_like(result.tokens, M)
    for t, event in enumerate(rec.events):
        block = t // config.steps_per_block
        counts = event.extra["committed"].sum(1).tolist()
        assert counts == [expected[t]] * 2
        slots = event.extra["committed"].nonzero()[:, 1]
        assert ((slots >= block * config.block_length) & (slots < (block + 1) * config.block_length)).all()
        canvas = event.tokens
        kept = previous != M
        assert torch.equal(canvas[kept], previous[kept])  # committed tokens never change
        assert torch.equal((canvas != M).sum(1), (previous != M).sum(1) + event.extra["committed"].sum(1))
        previous = canvas
    assert len(rec.events) == config.steps
    assert not (result.tokens == M).any()
    assert (result.extra["committed_at"] >= 1).all()


def test_random_remasking_and_temperature_are_seeded(adapters) -> None:
    """Every random draw of either schedule comes from the seed (Dream's default schedule is dream-native)."""
    adapter = adapters["dream"]
    ids, mask = _encode(adapter, PROMPTS[:2])
    for kw in ({"remasking": "random", "schedule": "llada"}, {"temperature": 1.0, "schedule": "llada"},
               {"temperature": 1.0}, {"remasking": "origin"}, {"alg_temp": 0.5}, {"remasking": "origin",
                                                                                 "temperature": 1.0}):
        run = lambda seed, kw=kw: sample_diffusion(adapter, ids, mask, DiffusionConfig(steps=8, gen_length=16,
                                                                                       seed=seed, **kw), [1])
        a, b, c = run(5), run(5), run(6)
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.extra["committed_at"], b.extra["committed_at"])
        assert not (torch.equal(a.tokens, c.tokens) and torch.equal(a.extra["committed_at"],
                                                                      c.extra["committed_at"]))


@pytest.mark.parametrize("options", [{}, {"remasking": "entropy", "top_k": 5}, {"top_p": 0.8, "alg_temp": 0.3},
                                     {"remasking": "origin", "temperature": 0.8}])
def test_dream_native_steps_events_and_rows(adapters, options: dict) -> None:
    """Under Dream's schedule every step commits the scheduled number per row (0 at early steps here: 3 slots
    in 8 steps), events and rows stay consistent, and nothing is left masked."""
    adapter = adapters["dream"]
    ids, mask = _encode(adapter, PROMPTS[:2])
    config = DiffusionConfig(steps=8, gen_length=3, seed=1, **options)
    rec = Recorder()
    result = sample_diffusion(adapter, ids, mask, config, [adapter.num_layers], [rec])
    counts = [e.extra["committed"].sum(1).tolist() for e in rec.events]
    if config.remasking != "origin":
        assert counts == [[n, n] for n in dream_schedule(3, 8)] == [[0, 0]] * 6 + [[1, 1], [2, 2]]
    assert not (result.tokens == adapter.mask_token_id).any()
    rows = diffusion_rows(adapter, result, config)
    for b, row in enumerate(rows):
        assert [len(p) for p in row["committed_positions"]] == [c[b] for c in counts]
        assert len(row["step_texts"]) == len(row["predicted_texts"]) == 8
    for t, event in enumerate(rec.events, start=1):
        assert torch.equal(event.extra["committed"], result.extra["committed_at"] == t)


@pytest.mark.parametrize("name", ["llada", "dream"])
def test_first_step_follows_the_logit_convention_and_cfg_formula(adapters, name: str) -> None:
    """Step 1 prediction at slot j = argmax of ℓ^u + (s+1)(ℓ − ℓ^u), ℓ read at position P+j (LLaDA) or P+j−1
    (Dream); its most confident slots, as many as the family's schedule says, are the ones committed."""
    adapter = adapters[name]
    ids, mask = _encode(adapter, ["What is two plus two?"])
    P, G, M, s = ids.shape[1], 8, adapter.mask_token_id, 1.5
    x = torch.cat([ids, torch.full((1, G), M)], dim=1)
    unconditional = x.clone()
    unconditional[:, :P] = M
    cols = torch.arange(P, P + G) - int(adapter.logit_shift)
    with torch.no_grad():
        cond = adapter.model(input_ids=x).logits[0, cols]
        uncond = adapter.model(input_ids=unconditional).logits[0, cols]
    # the family's default schedule: LLaDA commits 8 / 4 = 2 slots at step 1, Dream int(8 · (1 − t_1 / t_0)) = 1
    k = 2 if adapter.default_schedule == "llada" else dream_schedule(G, 4)[0]
    assert k == (2 if name == "llada" else 1)
    for scale, logits in ((0.0, cond), (s, uncond + (s + 1) * (cond - uncond))):
        rec = Recorder()
        sample_diffusion(adapter, ids, mask, DiffusionConfig(steps=4, gen_length=G, cfg_scale=scale), [1], [rec])
        first = rec.events[0]
        assert first.extra["predicted"][0].tolist() == logits.argmax(-1).tolist()
        confidence = logits.softmax(-1).max(-1).values
        assert sorted(first.extra["committed"][0].nonzero().flatten().tolist()) == \
            sorted(confidence.topk(k).indices.tolist())
    if adapter.logit_shift:  # the shift matters: unshifted logits predict something else
        with torch.no_grad():
            unshifted = adapter.model(input_ids=x).logits[0, P:P + G].argmax(-1)
        assert unshifted.tolist() != cond.argmax(-1).tolist()


def test_pooled_states_are_means_over_response_slots(adapters) -> None:
    """φ_t (all-slots / committed) equals the mean of an independent forward's final-norm states over the slots."""
    adapter = adapters["dream"]
    ids, mask = _encode(adapter, ["hello there"])
    P, M, config = ids.shape[1], adapter.mask_token_id, DiffusionConfig(steps=4, gen_length=8)
    layers = [1, adapter.num_layers]
    for pooling in ("all-slots", "committed"):
        collector, rec = StateCollector(layers), Recorder()
        result = sample_diffusion(adapter, ids, mask, config, layers, [collector, rec], pooling=pooling)
        at = result.extra["committed_at"][0]
        for t in range(config.steps):
            canvas = torch.where(at <= t, result.tokens[0], M) if t else torch.full_like(at, M)
            canvas = torch.where(at == -1, M, canvas)
            x = torch.cat([ids[0], canvas])[None]
            with torch.no_grad():
                hidden = adapter.model(input_ids=x, output_hidden_states=True).hidden_states
            slots = torch.ones(8, dtype=torch.bool) if pooling == "all-slots" or t == 0 else (canvas != M)
            for layer in layers:
                expected = hidden[layer][0, P:][slots].mean(0)
                assert torch.allclose(collector.forwards[layer][t][0], expected, atol=1e-5), (pooling, t, layer)


def test_batched_equals_unbatched(adapters, tmp_path) -> None:
    records = [PromptRecord(id=str(i), prompt=p) for i, p in enumerate(PROMPTS)]
    for name in ("llada", "dream"):
        adapter = adapters[name]
        config = DiffusionConfig(steps=4, gen_length=8)
        runs = [trace_prompts(adapter, records, tmp_path / f"{name}-{bs}", sampler=config, layers="final,mid",
                              batch_size=bs, progress=False) for bs in (4, 1)]
        (rows_b, st_b), (rows_s, st_s) = (r.load() for r in runs)
        order = {r["id"]: i for i, r in enumerate(rows_b)}
        for j, row in enumerate(rows_s):
            i = order[row["id"]]
            for field in ("token_ids", "step_texts", "predicted_texts", "committed_positions", "response"):
                assert rows_b[i][field] == row[field], (name, field)
            for layer in runs[0].layers:
                assert torch.allclose(st_b[layer][i], st_s[layer][j], atol=1e-4)


def test_observer_can_stop_a_row(adapters) -> None:
    adapter = adapters["llada"]

    class StopRowZero(StepObserver):
        def on_step(self, event) -> None:
            if event.step == 2:
                event.request_stop([0], "test-guard")

    ids, mask = _encode(adapter, PROMPTS[:2])
    config = DiffusionConfig(steps=4, gen_length=8)
    result = sample_diffusion(adapter, ids, mask, config, [1], [StopRowZero()])
    assert result.end_step == [2, 4] and result.ended_by[0] == "test-guard"
    assert (result.tokens[0] == adapter.mask_token_id).sum() == 4  # two steps of two commits, then frozen
    rows = diffusion_rows(adapter, result, config)
    assert len(rows[0]["step_texts"]) == 4 and rows[0]["step_texts"][3] == rows[0]["step_texts"][1]


def test_masks_inside_the_prompt_are_filled(adapters) -> None:
    """As in LLaDA's generate, a mask token in the prompt is a slot to fill too (DIJA-style prompts rely on it)."""
    adapter = adapters["llada"]
    ids, mask = _encode(adapter, ["Fill <|mask|> here"])
    assert (ids == adapter.mask_token_id).sum() == 1
    config = DiffusionConfig(steps=4, gen_length=8)
    result = sample_diffusion(adapter, ids, mask, config, [1])
    rows = diffusion_rows(adapter, result, config)
    filled = (result.extra["prompt_committed_at"] > 0).sum().item()
    assert filled == len(rows[0].get("prompt_fills", []))
    assert filled + (result.tokens != adapter.mask_token_id).sum().item() == 8  # 8 commits in total


# ------------------------------------------------------------------------------------------------ traces
def test_trace_shapes_and_metadata(adapters, tmp_path) -> None:
    adapter = adapters["dream"]
    recs = [PromptRecord(id=str(i), prompt=p, label="harmless") for i, p in enumerate(PROMPTS[:3])]
    config = DiffusionConfig(steps=4, gen_length=8, block_length=4, remasking="margin", schedule="llada")
    store = trace_prompts(adapter, recs, tmp_path / "t", sampler=config, layers="final,mid", pooling="committed",
                          progress=False)
    rows, states = store.load()
    n = adapter.num_layers
    assert store.layers == [n, n // 2]
    assert all(s.shape == (3, 4, adapter.hidden_size) for s in states.values())
    key, settings = store.key, store.meta["settings"]
    assert (key["sampler"], key["steps"], key["pooling"]) == ("diffusion", 4, "committed")
    assert settings["sampler"]["remasking"] == "margin" and settings["sampler"]["block_length"] == 4
    assert settings["sampler"]["schedule"] == "llada" and "top_k" not in settings["sampler"]
    assert settings["diffusion_model"]["logit_shift"] is True
    assert settings["diffusion_model"]["mask_token_id"] == adapter.mask_token_id
    for row in rows:
        assert len(row["step_texts"]) == len(row["predicted_texts"]) == len(row["committed_positions"]) == 4
        assert sorted(p for step in row["committed_positions"] for p in step) == list(range(8))
        assert len(row["token_ids"]) == 8 and row["step_texts"][-1] == row["response"]
        first = row["committed_positions"][0]
        if not any(row["token_ids"][p] in adapter.stop_token_ids for p in first):  # no EOS cut at step 1
            assert row["step_texts"][0].count(row["mask_symbol"]) == 8 - len(first) == 6
    ar_order = trace_prompts(adapter, recs, tmp_path / "ar", sampler=DiffusionConfig.ar_order(4), progress=False)
    assert ar_order.key["sampler"] == "diffusion-ar" and ar_order.key["pooling"] == "all-slots"
    with pytest.raises(SriError, match="does not apply to the diffusion sampler"):
        trace_prompts(adapter, recs, tmp_path / "bad", sampler=config, pooling="producing", progress=False)


def test_trace_records_the_resolved_schedule(adapters, tmp_path) -> None:
    """An unset schedule becomes the family's own in the settings (Dream: dream-native, under Dream's algorithm
    names; LLaDA: llada), and a resume under the other schedule is refused."""
    recs = [PromptRecord(id="0", prompt="hi")]
    config = DiffusionConfig(steps=4, gen_length=8, remasking="margin")
    for name, schedule, remasking in (("dream", "dream-native", "topk_margin"), ("llada", "llada", "margin")):
        store = trace_prompts(adapters[name], recs, tmp_path / name, sampler=config, progress=False)
        sampler = store.meta["settings"]["sampler"]
        assert (sampler["schedule"], sampler["remasking"]) == (schedule, remasking)
        assert ("eps" in sampler) == (schedule == "dream-native")
        other = "llada" if schedule == "dream-native" else "dream-native"
        with pytest.raises(IncompatibleError, match="other settings"):
            trace_prompts(adapters[name], recs, tmp_path / name, sampler=replace(config, schedule=other),
                          progress=False)
    with pytest.raises(SriError, match="one block"):
        trace_prompts(adapters["dream"], recs, tmp_path / "blocks", sampler=replace(config, block_length=4),
                      progress=False)
    assert not (tmp_path / "blocks").exists()


def test_context_limit_of_a_llada_config(adapters, tmp_path) -> None:
    """LLaDA's config names its context ``max_sequence_length``; prompt + slots beyond it is refused up front."""
    with pytest.raises(SriError, match="exceeds the model's context of 2048"):
        trace_prompts(adapters["remote"], [PromptRecord(id="a", prompt="hi")], tmp_path / "t",
                      sampler=DiffusionConfig(steps=21, gen_length=2100), progress=False)
    assert not (tmp_path / "t").exists()


def test_pool_steps_keeps_diffusion_states_per_step() -> None:
    forwards = torch.arange(12, dtype=torch.float32).view(3, 2, 2)  # [F, B, D]
    phi = StateCollector([0])
    phi.forwards = {0: list(forwards)}
    out = phi.pooled([3, 2], 3, POOLINGS["all-slots"])[0]
    assert torch.equal(out[0], forwards[:, 0]) and torch.equal(out[1, 2], out[1, 1])
