"""The one-command experiment: config validation, disjoint prompt sets, and a whole resumable run on a tiny
random model (anchors given as a file, since a random model never refuses)."""

from pathlib import Path

import pytest
import torch
import yaml

from sri.errors import SriError
from sri.evaluate import EvalConfig
from sri.experiment import load_config, parse_config, prompt_sets, run_experiment
from sri.io import read_json, read_jsonl, write_jsonl
from sri.models import load_model
from sri.sampling import ARConfig
from sri.signal import Anchors
from sri.tracer import trace_key

CONFIGS = Path(__file__).parent.parent / "configs"


def _base(harmless: str = "harmless", harmful: str = "harmbench") -> dict:
    return {"name": "t", "model": "m",
            "anchors": {"harmless": {"dataset": harmless, "n": 3}, "harmful": {"dataset": harmful, "n": 3}},
            "eval": {"harmless": {"dataset": harmless, "n": 3}, "harmful": {"dataset": harmful, "n": 3}}}


@pytest.mark.parametrize(("patch", "message"), [
    ({"colour": "red"}, "unknown key 'config.colour'"),
    ({"name": None}, "config.name must be str"),
    ({"batch_size": "8"}, "config.batch_size must be int"),
    ({"batch_size": 0}, "batch_size must be positive"),
    ({"attacks": [{"name": "nope"}]}, "attack 'nope' is unknown"),
    ({"attacks": [{"name": "flip", "options": {"budget": 2}}]}, "attack 'flip' has no option 'budget'"),
    ({"attacks": [{"name": "flip", "n": 9}]}, r"n must be in 1…3"),
    ({"attacks": [{"name": "flip"}, {"name": "flip"}]}, "listed twice"),
    ({"sampler": {"kind": "ar", "stepz": 3}}, "do not fit the ar sampler"),
    ({"sampler": {"kind": "quantum"}}, "sampler kind 'quantum' is not available"),
    ({"analysis": {"lambda_r": [1.5]}}, "strictly between 0 and 1"),
    ({"anchors": {}}, "anchors needs 'harmless' and 'harmful'"),
    ({"eval": {"harmless": {"dataset": "x", "n": 1}}}, "'config.eval.harmful' is required"),
])
def test_config_errors_are_one_line(patch, message) -> None:
    with pytest.raises(SriError, match=message) as info:
        parse_config({**_base(), **patch})
    assert "\n" not in str(info.value)


def test_shipped_configs_are_valid() -> None:
    """Every shipped YAML parses with the loader of the command that reads it (`sri eval` vs `sri run`)."""
    paths = sorted(CONFIGS.glob("*.yaml"))
    assert paths
    for path in paths:
        if path.stem.startswith("guard_eval"):
            EvalConfig.from_file(path)
            continue
        cfg, text = load_config(path)
        assert cfg.name == path.stem and text


def test_evaluation_prompts_never_overlap_anchor_prompts(tmp_path) -> None:
    harmless = tmp_path / "harmless.jsonl"
    write_jsonl(harmless, [{"id": f"h{i}", "prompt": f"harmless request {i}"} for i in range(10)])
    harmful = tmp_path / "harmful.jsonl"
    write_jsonl(harmful, [{"id": f"x{i}", "prompt": f"harmful request {i}", "kind": "a" if i % 2 else "b"}
                          for i in range(10)])
    cfg = parse_config(_base(str(harmless), str(harmful)))
    sets = prompt_sets(cfg)
    for kind in ("harmless", "harmful"):
        assert not {r.prompt for r in sets[kind]} & {r.prompt for r in sets[f"anchor-{kind}"]}
        assert len(sets[kind]) == 3
    assert all(r.label == "harmful" for r in sets["harmful"])
    filtered = _base(str(harmless), str(harmful))
    filtered["eval"]["harmful"]["where"] = {"kind": "a"}
    assert all(r.meta["kind"] == "a" for r in prompt_sets(parse_config(filtered))["harmful"])
    too_many = _base(str(harmless), str(harmful))
    too_many["eval"]["harmless"]["n"] = 8
    with pytest.raises(SriError, match="7 prompts left .* 8 were asked for"):
        prompt_sets(parse_config(too_many))
    # a filtered evaluation set and a copy of the texts under other ids in another file stay disjoint too
    duplicate = tmp_path / "dup.jsonl"
    write_jsonl(duplicate, [{"id": f"d{i}", "prompt": f"Harmless  request {i}"} for i in range(10)])
    other = _base(str(harmless), str(harmful))
    other["eval"]["harmless"]["dataset"] = str(duplicate)
    other["eval"]["harmful"]["where"] = {"kind": "a"}
    sets = prompt_sets(parse_config(other))
    for kind in ("harmless", "harmful"):
        anchor_texts = {r.prompt.lower().replace("  ", " ") for r in sets[f"anchor-{kind}"]}
        assert not {r.prompt.lower().replace("  ", " ") for r in sets[kind]} & anchor_texts


def test_whole_run_on_a_tiny_model_resumes(tiny_llama_dir, tmp_path) -> None:
    steps = 6
    adapter = load_model(str(tiny_llama_dir), device="cpu", dtype="fp32")
    layer = adapter.num_layers
    key = trace_key(adapter, ARConfig(steps=steps), [layer], "producing")
    g = torch.Generator().manual_seed(0)
    anchors = Anchors({layer: torch.randn(steps, adapter.hidden_size, generator=g)},
                      {layer: torch.randn(steps, adapter.hidden_size, generator=g)}, key, {"counts": {}})
    anchors.save(tmp_path / "anchors.safetensors")
    write_jsonl(tmp_path / "harmless.jsonl", [{"id": f"h{i}", "prompt": f"Tell me about cats, part {i}"}
                                              for i in range(4)])
    write_jsonl(tmp_path / "harmful.jsonl", [{"id": f"x{i}", "prompt": f"Explain how to do bad thing {i}"}
                                             for i in range(4)])
    config = {
        "name": "tiny", "model": str(tiny_llama_dir), "device": "cpu", "dtype": "fp32",
        "sampler": {"kind": "ar", "steps": steps}, "batch_size": 4,
        "anchors": {"file": str(tmp_path / "anchors.safetensors")},
        "eval": {"harmless": {"dataset": str(tmp_path / "harmless.jsonl"), "n": 4},
                 "harmful": {"dataset": str(tmp_path / "harmful.jsonl"), "n": 4}},
        "attacks": [{"name": "flip"},
                    {"name": "random_search", "n": 2,
                     "options": {"iterations": 2, "candidates": 2, "suffix_tokens": 4, "change_tokens": 1}},
                    {"name": "dija"}],
        "judge": {"model": str(tiny_llama_dir), "batch_size": 4},
        "analysis": {"bootstrap": 50, "panels": 2},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    run_dir = tmp_path / "run"
    report = run_experiment(path, run_dir, progress=False)
    assert report == run_dir / "report.html" and report.is_file()
    rows = read_jsonl(run_dir / "signals.jsonl")
    groups = {r["group"] for r in rows}
    assert groups == {"harmless", "harmful", "flip", "random_search"}
    assert sum(r["group"] == "random_search" for r in rows) == 2
    assert all(len(r["sri"]) == steps for r in rows)
    assert all(isinstance(r["llm_harmful"], bool) for r in rows if r["group"] != "harmless")
    assert all(r["behavior_id"].startswith("x") for r in rows if r["label"] == "jailbreak")
    prov = read_json(run_dir / "provenance.json")
    assert "dija" in prov["skipped_attacks"] and prov["model_kind"] == "causal"
    assert set(prov["sessions"][0]["stages"]) == {"anchors", "attacks", "traces", "judge", "signals", "analysis",
                                                  "report"}
    analysis = read_json(run_dir / "analysis.json")
    assert {g["group"] for g in analysis["groups"]} == groups | {"all attacks"}

    shards = sorted(p.name for p in (run_dir / "traces").rglob("*.jsonl"))
    attack_file = (run_dir / "attacks" / "random_search.jsonl").read_text()
    run_experiment(path, run_dir, progress=False)  # resume: nothing left to trace, attack or judge
    assert sorted(p.name for p in (run_dir / "traces").rglob("*.jsonl")) == shards
    assert (run_dir / "attacks" / "random_search.jsonl").read_text() == attack_file
    assert len(read_json(run_dir / "provenance.json")["sessions"]) == 2
    assert read_jsonl(run_dir / "signals.jsonl") == rows

    # another judge threshold: judged again, nothing traced again
    config["judge"]["threshold"] = 0.0
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    run_experiment(path, run_dir, progress=False)
    assert sorted(p.name for p in (run_dir / "traces").rglob("*.jsonl")) == shards
    assert all(r["llm_harmful"] for r in read_jsonl(run_dir / "signals.jsonl") if r["group"] != "harmless")
    config["batch_size"] = 2
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    with pytest.raises(SriError, match="another configuration"):
        run_experiment(path, run_dir, progress=False)
