"""The streaming guard inside generation: scripted signals, the AR sampler, `sri trace --guard` and
`model.generate` with the StoppingCriteria / LogitsProcessor (unit tier: tiny random models)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sri.data.prompts import PromptRecord
from sri.errors import IncompatibleError
from sri.guard import Guard, GuardedGeneration, GuardObserver, StepAnchors, fit_guard, make_detector, replay
from sri.pooling import POOLINGS, StateCollector, pool_steps
from sri.sampling import ARConfig, StepEvent, sample_ar
from sri.signal import Anchors, compute_signals, sri_signal
from sri.tracing.store import TraceStore
from sri.tracing.tracer import trace_prompts
from tests.cli_helpers import run_cli

T = 8
WORDS = ["cat", "dog", "sun", "tree", "car", "book", "red", "blue", "fish", "moon", "rain", "snow"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _records(n: int, start: int = 0) -> list[PromptRecord]:
    return [PromptRecord(id=f"p{i}", prompt=f"{WORDS[i % 12]} and {WORDS[(5 * i) % 12]} #{i}", label="harmless")
            for i in range(start, start + n)]


@pytest.fixture(scope="module")
def tiny_guard(tiny_llama, tmp_path_factory) -> tuple[Path, Guard, Anchors]:
    """A guard fitted on tiny-model signals (anchors: means of two halves of the benign traces)."""
    root = tmp_path_factory.mktemp("guard")
    store = trace_prompts(tiny_llama, _records(48), root / "fit", sampler=ARConfig(steps=T), batch_size=8,
                          progress=False)
    _, states = store.load()
    L = tiny_llama.num_layers
    anchors = Anchors({L: states[L][:24].mean(0)}, {L: states[L][24:].mean(0)}, store.key)
    sig = compute_signals(anchors, store)
    guard = fit_guard(sig[:32], sig[32:], detector="mahalanobis", quantile=0.9, anchors=anchors)
    guard.save(root / "g")
    return root / "g", Guard.load(root / "g"), anchors


def _with_forced_flag(guard: Guard, step: int) -> Guard:
    """The same guard, but every prefix of length ``step`` is flagged and no other (a scripted decision)."""
    thresholds = {t: (-np.inf if t == step else np.inf) for t in guard.stream_thresholds}
    return Guard(guard.detectors, guard.threshold, thresholds, guard.quantile, guard.key, guard.anchors,
                 guard.refusal_text)


def _encode(adapter, prompts):
    return adapter.encode([adapter.render(p) for p in prompts])


# ------------------------------------------------------------------------------------------ scripted
@pytest.mark.parametrize(("pooling", "every", "step"), [("all-slots", 1, 6), ("producing", 1, 6), ("producing", 3, 7)])
def test_scripted_signal_flags_and_stops_at_the_right_step(pooling: str, every: int, step: int) -> None:
    """States scripted to sit on the harmless anchor, then (row 1, from step 6) far out on the refusal anchor, so
    that even the AR running mean turns at once."""
    D, switch = 4, 6
    e_ok, e_bad = torch.eye(D)[0], torch.eye(D)[1]
    anchors = StepAnchors(e_ok.repeat(T, 1), e_bad.repeat(T, 1), 0.1, 1e-8)
    key = {"fingerprint": "f", "hidden_size": D, "sampler": "ar", "steps": T, "pooling": pooling, "layer": 1}
    g = torch.Generator().manual_seed(0)
    benign_states = e_ok + 0.3 * torch.randn(300, T, D, generator=g).abs()
    benign = sri_signal(benign_states, anchors.harmless, anchors.harmful).numpy()
    rows = [{"id": str(i), "sri": s.tolist(), "key": key} for i, s in enumerate(benign)]
    guard = fit_guard(rows[:200], rows[200:], detector="mahalanobis", quantile=0.99, every=every)
    guard.anchors = anchors
    assert guard.prefixes == ([1, 4, 7, 8] if every == 3 else list(range(1, T + 1)))
    script = torch.stack([e_ok.repeat(T, 1) + 0.05 * torch.eye(D)[2],
                          torch.stack([e_ok if t < switch else 10 * e_bad for t in range(1, T + 1)])], dim=1)
    obs = GuardObserver(guard)
    obs.on_start(2, [3, 3])
    stops = {}
    finished = torch.zeros(2, dtype=torch.bool)
    for t in range(1, T + 1):
        event = StepEvent(step=t, tokens=torch.zeros(2, dtype=torch.long), states={1: script[t - 1]},
                          finished=finished.clone())
        obs.on_step(event)
        if event.stop is not None:
            stops[t] = event.stop.nonzero().flatten().tolist()
            finished |= event.stop
    phi = pool_steps(script, [T, T], T, POOLINGS[pooling])
    offline = sri_signal(phi, anchors.harmless, anchors.harmful)
    expected = int(guard.first_flag(offline.numpy())[1])
    assert guard.first_flag(offline.numpy())[0] == 0
    assert expected == step  # the switch step, or the first decision step after it
    assert stops == {expected: [1]}
    assert obs.decider.verdicts[1].flag_step == expected and not obs.decider.verdicts[0].flagged


# ------------------------------------------------------------------------------------------ AR sampler
@pytest.mark.parametrize("pooling", ["producing", "generated", "producing-hold"])
def test_online_signal_equals_pooled_signal_and_replay(tiny_llama, tiny_guard, pooling: str) -> None:
    """σ computed step by step equals pooling all states then applying the formula; φ bit for bit."""
    _, guard, _ = tiny_guard
    guard = Guard(guard.detectors, guard.threshold, guard.stream_thresholds, guard.quantile,
                  {**guard.key, "pooling": pooling}, guard.anchors)
    a, L = tiny_llama, tiny_llama.num_layers
    ids, mask = _encode(a, [r.prompt for r in _records(4, 100)])
    free = sample_ar(a, ids, mask, ARConfig(steps=T), [L]).tokens
    eos = int(free[1, 3])  # make row 1 (and any row producing this token) end early at EOS
    gen_cfg, old = a.model.generation_config, a.model.generation_config.eos_token_id
    gen_cfg.eos_token_id = [eos]
    try:
        collector, obs = StateCollector([L]), GuardObserver(guard, stop=False)
        res = sample_ar(a, ids, mask, ARConfig(steps=T), [L], [collector, obs], pooling)
    finally:
        gen_cfg.eos_token_id = old
    assert res.end_step[1] <= 4 and res.ended_by[1] == "eos"
    conv = POOLINGS[pooling]
    phi = collector.pooled(res.end_step, T, conv)[L]
    offline = sri_signal(phi, guard.anchors.harmless, guard.anchors.harmful)
    assert torch.allclose(obs.signals, offline, rtol=0, atol=1e-12)
    online = obs.online  # the running mean itself is exact: replay the same forwards through a fresh one
    from sri.guard.streaming import OnlineSignal

    fresh = OnlineSignal(guard.anchors, conv, 4, T)
    forwards = torch.stack(collector.forwards[L])
    for s in range(conv.offset + 1, forwards.shape[0] + 1):
        alive = torch.tensor([s - conv.offset <= e for e in res.end_step])
        t = fresh.push(forwards[s - 1], alive)
        if t is not None:
            for b in alive.nonzero().flatten().tolist():
                assert torch.equal(fresh.phi[b], phi[b, t - 1])
    assert torch.equal(fresh.count.clamp(max=T), online.count.clamp(max=T))
    verdicts = replay(guard, offline.numpy(), res.end_step, res.ended_by)
    assert [(v.flagged, v.flag_step, v.sampler_step, v.when) for v in verdicts] == \
        [(v.flagged, v.flag_step, v.sampler_step, v.when) for v in obs.verdicts]


def test_flag_stops_the_sampler_at_that_step(tiny_llama, tiny_guard) -> None:
    _, guard, _ = tiny_guard
    a, L = tiny_llama, tiny_llama.num_layers
    ids, mask = _encode(a, [r.prompt for r in _records(3, 200)])
    obs = GuardObserver(_with_forced_flag(guard, 3))
    res = sample_ar(a, ids, mask, ARConfig(steps=T), [L], [obs])
    assert res.end_step == [3, 3, 3] and res.ended_by == ["sri-guard"] * 3
    assert (res.tokens[:, 3:] == a.pad_token_id).all()
    assert all(v.flagged and v.flag_step == 3 and v.stop_step == v.sampler_step == 3 and v.when == "during"
               for v in obs.verdicts)
    assert res.extra["row_fields"][0]["guard"]["refusal_text"] == guard.refusal_text
    assert obs.seconds > 0


def test_trace_with_guard_records_verdicts(tiny_llama, tiny_llama_dir, tiny_guard, tmp_path, capsys) -> None:
    from sri.io import write_jsonl

    folder, guard, anchors = tiny_guard
    recs = _records(10, 300)
    write_jsonl(tmp_path / "p.jsonl", [r.to_row() for r in recs])
    base = ["trace", "--prompts", str(tmp_path / "p.jsonl"), "--model", str(tiny_llama_dir), "--steps", str(T),
            "--device", "cpu", "--dtype", "fp32", "--batch-size", "5"]
    code, err = _cli([*base, "--out", str(tmp_path / "t"), "--guard", str(folder), "--no-guard-stop"], capsys)
    assert code == 0, err
    store = TraceStore.open(tmp_path / "t")
    assert store.meta["settings"]["guard"]["stop"] is False
    rows = store.rows()
    assert all(set(r["guard"]) >= {"flagged", "flag_step", "sampler_step", "stop_step", "when", "refusal_text"}
               for r in rows)
    assert all(r["guard"]["stop_step"] is None for r in rows)
    # monitor-only: the trace is the unguarded generation, and the live verdicts equal the replay on its signals
    signals = compute_signals(anchors, store)
    verdicts = replay(guard, np.array([s["sri"] for s in signals]), [r["end_step"] for r in rows],
                      [r["ended_by"] for r in rows])
    assert any(v.flagged for v in verdicts) and not all(v.flagged for v in verdicts)
    assert [(r["guard"]["flag_step"], r["guard"]["sampler_step"], r["guard"]["when"]) for r in rows] == \
        [(v.flag_step, v.sampler_step, v.when) for v in verdicts]
    # with stopping (the default), flagged rows end at their stop step, recorded in the row
    code, err = _cli([*base, "--out", str(tmp_path / "s"), "--guard", str(folder)], capsys)
    assert code == 0, err
    for r in TraceStore.open(tmp_path / "s").rows():
        if r["guard"]["stop_step"] is not None:
            assert r["ended_by"] == "sri-guard" and r["end_step"] == r["guard"]["stop_step"]
    # a guard for other steps is refused before anything is generated
    code, err = _cli([*base[:-4], "--steps", "6", "--out", str(tmp_path / "x"), "--guard", str(folder)], capsys)
    assert code == 2 and "steps" in err and not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------------------ model.generate
def _generate(model, ids, mask, pad, **kwargs):
    return model.generate(ids, attention_mask=mask, max_new_tokens=T, do_sample=False, pad_token_id=pad, **kwargs)


def test_generate_watch_follows_the_after_end_rule(tiny_llama, tiny_llama_dir, tiny_guard) -> None:
    """Rows that end at EOS are extended past their end as the traces are, so ``model.generate`` under
    :class:`GuardedGeneration` gives the observer's verdicts, late ('after') flags included."""
    from transformers import AutoModelForCausalLM

    _, guard, _ = tiny_guard
    a, L = tiny_llama, tiny_llama.num_layers
    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir)).eval()
    ids, mask = _encode(a, [r.prompt for r in _records(6, 400)])
    free = sample_ar(a, ids, mask, ARConfig(steps=T), [L]).tokens
    eos = int(free[0, 2])  # row 0 (and any row producing this token) ends early
    late = _with_forced_flag(guard, T)  # only the full prefix is flagged: rows that ended early flag 'after'
    for g in (guard, late):
        gen_cfg, old = a.model.generation_config, a.model.generation_config.eos_token_id
        gen_cfg.eos_token_id = [eos]
        try:
            obs = GuardObserver(g, stop=False)
            res = sample_ar(a, ids, mask, ARConfig(steps=T), [L], [obs])
        finally:
            gen_cfg.eos_token_id = old
        assert res.ended_by[0] == "eos" and res.end_step[0] <= 3
        with GuardedGeneration(g, model, stop=False, eos_token_id=eos) as watch:
            _generate(model, ids, mask, a.pad_token_id, eos_token_id=eos,
                      stopping_criteria=[watch.stopping_criteria])
        expected = [(v.flag_step, v.sampler_step, v.when) for v in obs.verdicts]
        assert [(v.flag_step, v.sampler_step, v.when) for v in watch.verdicts] == expected
    assert expected[0] == (T, None, "after")


def test_stopping_criteria_inside_model_generate(tiny_llama, tiny_llama_dir, tiny_guard) -> None:
    from transformers import AutoModelForCausalLM

    _, guard, _ = tiny_guard
    a = tiny_llama
    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir)).eval()
    ids, mask = _encode(a, [r.prompt for r in _records(6, 400)])
    P = ids.shape[1]
    # same verdicts as the sampler's observer, in monitor mode
    obs = GuardObserver(guard, stop=False)
    sample_ar(a, ids, mask, ARConfig(steps=T), [a.num_layers], [obs])
    with GuardedGeneration(guard, model, stop=False) as watch:
        _generate(model, ids, mask, a.pad_token_id, stopping_criteria=[watch.stopping_criteria])
    expected = [(v.flag_step, v.sampler_step, v.when) for v in obs.verdicts]
    assert any(e[0] for e in expected) and not all(e[0] for e in expected)  # a mixed batch: the check has teeth
    assert [(v.flag_step, v.sampler_step, v.when) for v in watch.verdicts] == expected
    assert watch.seconds > 0
    with GuardedGeneration(guard, a, stop=False) as watch:  # what load_model returns is accepted too
        _generate(a.model, ids, mask, a.pad_token_id, stopping_criteria=[watch.stopping_criteria])
    assert [(v.flag_step, v.sampler_step, v.when) for v in watch.verdicts] == expected
    with GuardedGeneration(guard, model, stop=False) as watch:  # without a KV cache every forward is whole
        _generate(model, ids, mask, a.pad_token_id, stopping_criteria=[watch.stopping_criteria], use_cache=False)
    assert [(v.flag_step, v.sampler_step, v.when) for v in watch.verdicts] == expected
    # a flag at step 3 stops every sequence there: the StoppingCriteria keeps the flagged token …
    forced = _with_forced_flag(guard, 3)
    with GuardedGeneration(forced, model) as watch:
        out = _generate(model, ids, mask, a.pad_token_id, stopping_criteria=[watch.stopping_criteria])
    assert out.shape[1] == P + 3 and all(v.stop_step == 3 for v in watch.verdicts)
    assert watch.apply(["x"] * 6) == [guard.refusal_text] * 6
    # … the LogitsProcessor turns it into EOS
    with GuardedGeneration(forced, model) as watch:
        out = _generate(model, ids, mask, a.pad_token_id, logits_processor=[watch.logits_processor])
    assert (out[:, P + 2] == int(watch.eos[0])).all() and out.shape[1] == P + 3
    # the hook is gone after the block
    assert not watch.module._forward_hooks
    # another model (different fingerprint) is refused
    with pytest.raises(IncompatibleError, match="not the one the guard was fitted on"):
        GuardedGeneration(Guard(guard.detectors, guard.threshold, guard.stream_thresholds, guard.quantile,
                                {**guard.key, "fingerprint": "other"}, guard.anchors), model)


def test_guard_without_anchors_cannot_stream() -> None:
    from sri.errors import SriError

    det = make_detector("knn").fit(np.random.default_rng(0).random((10, T)))
    guard = Guard({T: det}, 1.0, {T: 1.0}, 0.99, {"pooling": "producing", "steps": T, "layer": 1})
    with pytest.raises(SriError, match="--anchors"):
        GuardObserver(guard)


# ------------------------------------------------------------------------------------------ diffusion sampler
def test_guard_in_the_diffusion_sampler(tmp_path) -> None:
    """The same observer in the masked-diffusion sampler: φ_t is the step's pooled state, σ equals the trace's."""
    from sri.models import load_diffusion_model
    from sri.sampling import DiffusionConfig, sample_diffusion
    from tests.tiny_models import build_tiny_masked_lm

    a = load_diffusion_model(str(build_tiny_masked_lm(tmp_path / "llada", "llada", seed=0)), device="cpu",
                             dtype="fp32")
    steps, L = 4, a.num_layers
    config = DiffusionConfig(steps=steps, gen_length=8)
    g = torch.Generator().manual_seed(0)
    D = a.hidden_size
    anchors = StepAnchors(torch.randn(steps, D, generator=g), torch.randn(steps, D, generator=g), 0.1, 1e-8)
    key = {"fingerprint": a.fingerprint, "hidden_size": D, "sampler": "diffusion", "steps": steps,
           "pooling": "all-slots", "layer": L}
    x = np.random.default_rng(0).random((40, steps))
    detectors = {t: make_detector("mahalanobis").fit(x[:, :t]) for t in range(1, steps + 1)}
    guard = Guard(detectors, np.inf, {t: np.inf for t in range(1, steps + 1)}, 0.99, key, anchors)
    ids, mask = a.encode([a.render(p) for p in ("hello", "tell me a joke", "x")])
    collector, obs = StateCollector([L]), GuardObserver(guard)
    res = sample_diffusion(a, ids, mask, config, [L], [collector, obs], "all-slots")
    phi = collector.pooled(res.end_step, steps, POOLINGS["all-slots"])[L]
    assert torch.allclose(obs.signals, sri_signal(phi, anchors.harmless, anchors.harmful), rtol=0, atol=1e-12)
    assert not any(v.flagged for v in obs.verdicts)
    obs = GuardObserver(_with_forced_flag(guard, 2))
    res = sample_diffusion(a, ids, mask, config, [L], [obs], "all-slots")
    assert res.end_step == [2, 2, 2] and res.ended_by == ["sri-guard"] * 3
    assert all(v.stop_step == 2 for v in obs.verdicts)


def _cli(args: list[str], capsys) -> tuple[int, str]:
    res = run_cli(args, capsys)
    return res.code, res.err
