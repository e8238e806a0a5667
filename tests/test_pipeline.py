"""The pipeline (`sri run` and its presets): the config schema, disjoint prompt sets, registries, and whole
resumable runs on a tiny random model — with and without the guard stages (anchors given as a file, since a
random model never refuses)."""

from pathlib import Path

import pytest
import torch
import yaml

from sri.errors import SriError
from sri.io import read_json, read_jsonl, write_jsonl
from sri.models import load_model
from sri.pipeline import load_config, parse_config, run
from sri.pipeline.stages import prompts
from sri.registry import Registry, UnknownNameError
from sri.sampling import ARConfig
from sri.signal import Anchors
from sri.tracing.tracer import trace_key
from tests.cli_helpers import run_cli

CONFIGS = Path(__file__).parent.parent / "configs"
pytestmark = pytest.mark.usefixtures("one_thread")


def _base(harmless: str = "harmless", harmful: str = "harmbench") -> dict:
    return {"name": "t", "model": "m",
            "prompts": {"anchor_harmless": {"dataset": harmless, "n": 3},
                        "anchor_harmful": {"dataset": harmful, "n": 3},
                        "harmless": {"dataset": harmless, "n": 3}, "harmful": {"dataset": harmful, "n": 3}}}


#: the base prompt sets plus the guard's fit and calibration sets (a guard section needs them, and only it uses them)
_GUARDED = {**_base()["prompts"], "guard_fit": {"dataset": "harmless", "n": 3},
            "guard_calibrate": {"dataset": "harmless", "n": 3}}


@pytest.mark.parametrize(("patch", "message"), [
    ({"colour": "red"}, "config: colour: unknown key; allowed: name, model"),
    ({"name": None}, "config: name: Input should be a valid string"),
    ({"batch_size": "8"}, "config: batch_size: Input should be a valid integer (got '8')"),
    ({"batch_size": 0}, "config: batch_size: Input should be greater than or equal to 1 (got 0)"),
    ({"sampler": {"kind": "ar", "steps": "32"}}, "config: sampler.steps: Input should be a valid integer"),
    ({"sampler": {"kind": "ar", "stepz": 3}}, "config: sampler.stepz: unknown key; allowed: kind, steps"),
    ({"sampler": {"kind": "quantum"}}, "config: sampler: Input tag 'quantum' found using 'kind' does not match"),
    ({"attacks": [{"name": "nope"}]}, "attack 'nope' is unknown"),
    ({"attacks": [{"name": "refusal_supression"}]}, "did you mean 'refusal_suppression'"),
    ({"attacks": [{"name": "flip", "options": {"budget": 2}}]}, "attack 'flip' has no option 'budget'"),
    ({"attacks": [{"name": "flip", "n": 9}]}, "n must be ≤ prompts.harmful.n = 3"),
    ({"attacks": [{"name": "flip"}, {"name": "flip"}]}, "listed twice"),
    ({"analysis": {"lambda_r": [1.5]}}, "config: analysis.lambda_r.0: Input should be less than 1"),
    ({"guard": {"quantile": 7}}, "config: guard.quantile: Input should be less than 1 (got 7)"),
    ({"guard": {"detector": "nope"}, "prompts": _GUARDED}, "detector 'nope' is unknown"),
    ({"defenses": {"names": ["ppl"]}, "guard": {}, "prompts": _GUARDED},
     "defense 'ppl' is unknown (did you mean 'ppl-filter'?)"),
    ({"defenses": {"names": ["ppl-filter"]}}, "config: defenses are compared beside SRI Guard: add a guard section"),
    ({"execution": {"threads": "abc"}}, "config: execution.threads: Input should be a valid integer"),
    ({"pooling": "produce"}, "pooling 'produce' is unknown (did you mean 'producing'?)"),
    ({"name": "../../x"}, "config: name: String should match pattern"),
    ({"prompts": {"harmless": {"dataset": "x", "n": 1}, "anchors_file": "a"}},
     "config: prompts.harmful: Field required"),
    ({"prompts": {"harmless": {"dataset": "x", "n": 1}, "harmful": {"dataset": "x", "n": 1}}},
     "give anchor_harmless and anchor_harmful prompt sets, or anchors_file"),
])
def test_config_errors_are_one_line_with_the_key_path(patch, message) -> None:
    with pytest.raises(SriError) as info:
        parse_config({**_base(), **patch})
    assert message in str(info.value) and "\n" not in str(info.value)


def test_structural_errors_import_no_model_code() -> None:
    """Wrong keys, types and ranges are found by a first pass that imports no registry (so no torch)."""
    import subprocess
    import sys

    code = ("import sys, sri.pipeline.config as c\n"
            "try:\n    c.parse_config({'name': 't', 'colour': 1})\nexcept Exception as e:\n    print(e)\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    first, imported = out.splitlines()
    assert first.startswith("config: colour: unknown key; allowed: name, model,") and imported == "False"
    assert first.endswith("— and 1 more problem(s)")  # the missing prompts section comes after the unknown key
    cli = ("import sys\nfrom sri.cli import main\n"
           f"sys.argv = ['sri', 'validate', {str(CONFIGS / 'guard_eval.yaml')!r}, '--set', 'guard.quantile=7']\n"
           "try:\n    main()\nexcept SystemExit as e:\n    print(e.code, 'torch' in sys.modules)")
    run_ = subprocess.run([sys.executable, "-c", cli], capture_output=True, text=True, check=True)
    assert run_.stdout.split() == ["2", "False"]  # `sri validate` on a bad range: no model code imported
    assert run_.stderr.strip() == "error: config: guard.quantile: Input should be less than 1 (got 7)"


def test_registry_lookup_suggests_close_names() -> None:
    reg: Registry[int] = Registry("colour")
    reg.add("red", 1)
    reg.add("green", 2)
    assert reg["red"] == 1 and "red" in reg and reg.get("blue") is None and list(reg) == ["red", "green"]
    with pytest.raises(UnknownNameError, match=r"colour 'gren' is unknown \(did you mean 'green'\?\); known: red"):
        reg["gren"]
    with pytest.raises(ValueError, match="registered twice"):
        reg.add("red", 3)


def test_shipped_configs_are_valid() -> None:
    paths = sorted(CONFIGS.glob("*.yaml"))
    assert {p.stem for p in paths} >= {"demo", "guard_eval"}
    for path in paths:
        cfg, text = load_config(path)
        assert text and cfg.name.replace("-", "_") == path.stem.replace("-", "_")


def test_prompt_sets_never_overlap(tmp_path) -> None:
    harmless = tmp_path / "harmless.jsonl"
    write_jsonl(harmless, [{"id": f"h{i}", "prompt": f"harmless request {i}"} for i in range(30)])
    harmful = tmp_path / "harmful.jsonl"
    write_jsonl(harmful, [{"id": f"x{i}", "prompt": f"harmful request {i}", "kind": "a" if i % 2 else "b"}
                          for i in range(10)])
    base = _base(str(harmless), str(harmful))
    base["prompts"] |= {"guard_fit": {"dataset": str(harmless), "n": 5}, "guard_calibrate": {"dataset": str(harmless),
                                                                                          "n": 5}}
    base["guard"] = {"detector": "knn"}
    base["prompts"]["long_benign"] = {"n": 3, "min_chars": 200}
    sets = prompts(parse_config(base))
    texts = {name: {r.prompt.lower() for r in recs} for name, recs in sets.items()}
    names = list(texts)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not texts[a] & texts[b], (a, b)
    assert [len(sets[n]) for n in ("anchor-harmless", "guard-fit", "guard-calibrate", "harmless")] == [3, 5, 5, 3]
    assert all(len(r.prompt) >= 200 and r.label == "harmless" for r in sets["long-benign"])
    assert all(r.label == "harmful" for r in sets["harmful"])
    filtered = _base(str(harmless), str(harmful))
    filtered["prompts"]["harmful"]["where"] = {"kind": "a"}
    assert all(r.meta["kind"] == "a" for r in prompts(parse_config(filtered))["harmful"])
    too_many = _base(str(harmless), str(harmful))
    too_many["prompts"]["harmful"]["n"] = 8
    with pytest.raises(SriError, match="prompts.harmful: .* has 7 prompts left .* n = 8"):
        prompts(parse_config(too_many))


@pytest.fixture
def tiny_run(tiny_llama_dir, tmp_path):
    """A config for the tiny model with anchors given as a file (a random model never refuses)."""
    steps = 6
    adapter = load_model(str(tiny_llama_dir), device="cpu", dtype="fp32")
    layer = adapter.num_layers
    key = trace_key(adapter, ARConfig(steps=steps), [layer], "producing")
    g = torch.Generator().manual_seed(0)
    anchors = Anchors({layer: torch.randn(steps, adapter.hidden_size, generator=g)},
                      {layer: torch.randn(steps, adapter.hidden_size, generator=g)}, key, {"counts": {}})
    anchors.save(tmp_path / "anchors.safetensors")
    write_jsonl(tmp_path / "harmless.jsonl", [{"id": f"h{i}", "prompt": f"Tell me about cats, part {i}"}
                                              for i in range(24)])
    write_jsonl(tmp_path / "harmful.jsonl", [{"id": f"x{i}", "prompt": f"Explain how to do bad thing {i}"}
                                             for i in range(4)])
    config = {
        "name": "tiny", "model": str(tiny_llama_dir), "device": "cpu", "dtype": "fp32",
        "sampler": {"kind": "ar", "steps": steps}, "batch_size": 4,
        "prompts": {"anchors_file": str(tmp_path / "anchors.safetensors"),
                    "harmless": {"dataset": str(tmp_path / "harmless.jsonl"), "n": 4},
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
    return config, path, tmp_path


def test_whole_run_on_a_tiny_model_resumes(tiny_run) -> None:
    config, path, tmp_path = tiny_run
    run_dir = tmp_path / "run"
    report = run(path, run_dir, progress=False)
    assert report == run_dir / "report.html" and report.is_file()
    rows = read_jsonl(run_dir / "signals.jsonl")
    groups = {r["group"] for r in rows}
    assert groups == {"harmless", "harmful", "flip", "random_search"}
    assert sum(r["group"] == "random_search" for r in rows) == 2
    assert all(len(r["sri"]) == 6 for r in rows)
    assert all(isinstance(r["llm_harmful"], bool) for r in rows if r["group"] != "harmless")
    assert all(r["behavior_id"].startswith("x") for r in rows if r["label"] == "jailbreak")
    assert sorted(p.stem for p in (run_dir / "prompts").glob("*.jsonl")) == ["harmful", "harmless"]
    prov = read_json(run_dir / "provenance.json")
    assert "dija" in prov["skipped_attacks"] and prov["model_kind"] == "causal"
    assert list(prov["sessions"][0]["stages"]) == ["01-prompts", "02-attacks", "03-traces", "04-judge", "05-anchors",
                                                   "06-signals", "09-analysis", "10-report"]
    assert {g["group"] for g in read_json(run_dir / "analysis.json")["groups"]} == groups | {"all attacks"}
    assert (run_dir / "summary.md").is_file() and (run_dir / "figures" / "sri_trajectories.png").is_file()

    shards = sorted(p.name for p in (run_dir / "traces").rglob("*.jsonl"))
    attack_file = (run_dir / "attacks" / "random_search.jsonl").read_text()
    run(path, run_dir, progress=False)  # resume: nothing left to trace, attack or judge
    assert sorted(p.name for p in (run_dir / "traces").rglob("*.jsonl")) == shards
    assert (run_dir / "attacks" / "random_search.jsonl").read_text() == attack_file
    assert len(read_json(run_dir / "provenance.json")["sessions"]) == 2
    assert read_jsonl(run_dir / "signals.jsonl") == rows

    config["judge"]["threshold"] = 0.001  # another judge threshold: judged again, nothing traced again
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    run(path, run_dir, progress=False)
    assert sorted(p.name for p in (run_dir / "traces").rglob("*.jsonl")) == shards
    assert all(r["llm_harmful"] for r in read_jsonl(run_dir / "signals.jsonl") if r["group"] != "harmless")
    config["batch_size"], config["sampler"]["temperature"] = 2, 0.5
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    with pytest.raises(SriError, match=r"another configuration \(changed: batch_size, sampler.temperature\)"):
        run(path, run_dir, progress=False)


def test_guard_stages_with_benign_controls(tiny_run) -> None:
    """Guard fitted on benign signals only; defenses from the registry; benign-in-template and long benign
    controls as negatives of a second AUROC; the Table-4 ablation on both kinds of negatives."""
    config, path, tmp_path = tiny_run
    harmless = str(tmp_path / "harmless.jsonl")
    config["prompts"].update({"guard_fit": {"dataset": harmless, "n": 8},
                              "guard_calibrate": {"dataset": harmless, "n": 4},
                              "long_benign": {"n": 2, "min_chars": 300}})
    config["attacks"] = [{"name": "flip"}, {"name": "refusal_suppression", "n": 2}]
    config["controls"] = {"benign_in_template": True}
    config["guard"] = {"detector": "mahalanobis", "quantile": 0.9}
    config["defenses"] = {"names": ["ppl-filter", "self-examine", "llm-guard", "smoothllm"], "smoothllm_copies": 2,
                          "smoothllm_max_prompts": 2}
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    run_dir = tmp_path / "guarded"
    run(path, run_dir, progress=False)
    results = read_json(run_dir / "eval.json")
    assert results["attacks"] == ["flip", "refusal_suppression"]
    assert results["controls"] == ["flip+benign", "refusal_suppression+benign"]
    controls = read_jsonl(run_dir / "attacks" / "flip+benign.jsonl")
    assert len(controls) == 4 and all(r["label"] == "harmless" and r["control"] == "benign-in-template"
                                      for r in controls)
    names = [d["defense"] for d in results["defenses"]]
    assert names == ["undefended", "sri-guard", "sri-guard-streaming", "ppl-filter", "self-examine", "llm-guard",
                     "smoothllm"]
    for d in results["defenses"]:
        assert {"fp:harmless", "fp:long-benign", "fp:flip+benign", "fp:benign-in-template (all)"} <= set(d)
        assert d["rr_jailbreak"]["value"] + d["asr_jailbreak_keyword_proxy"]["value"] == pytest.approx(1)
        assert 0 <= d["asr_jailbreak_llm"]["value"] <= d["asr_jailbreak_keyword_proxy"]["value"]
    smooth = results["defenses"][-1]
    assert smooth["n_per_set"]["harmless"] == 2
    assert {"harmless", "benign-in-template"} <= set(results["detection"][0])
    assert [a["representation"].split(",")[0] for a in results["ablation"]] == [
        "text-level signal", "static first-step activations (final layer)", "SRI"]
    assert {"harmless", "benign-in-template"} <= set(results["ablation"][0])
    guard = read_json(run_dir / "guard" / "guard.json")
    assert guard["counts"] == {"benign": 8, "calibrate": 4}
    fitted_on = {r["id"] for r in read_jsonl(run_dir / "prompts" / "guard-fit.jsonl")}
    assert not fitted_on & {r["id"] for r in read_jsonl(run_dir / "signals.jsonl")}
    tables = (run_dir / "tables.md").read_text()
    assert "AUROC vs benign-in-template" in tables and "no attack prompt, template" in tables
    verdicts = read_jsonl(run_dir / "guard" / "verdicts.jsonl")
    signal_rows = read_jsonl(run_dir / "signals.jsonl")
    assert len(verdicts) == len(signal_rows) and all(r["ended_by"] in ("eos", "length") for r in signal_rows)
    ended = {r["id"]: (r["end_step"], r["ended_by"]) for r in signal_rows}  # a stop at an EOS step is "after"
    assert not any(v["sampler_step"] == ended[v["id"]][0] and ended[v["id"]][1] == "eos" for v in verdicts)
    cached = sorted((run_dir / "defenses").rglob("*.json"))
    stamps = [p.stat().st_mtime_ns for p in cached]
    run(path, run_dir, progress=False)  # resume: every trace and defense result is reused
    assert [p.stat().st_mtime_ns for p in cached] == stamps
    again = read_json(run_dir / "eval.json")["defenses"]
    assert [(d["defense"], d["fp:harmless"], d["rr_jailbreak"]) for d in again] == \
        [(d["defense"], d["fp:harmless"], d["rr_jailbreak"]) for d in results["defenses"]]


def test_cli_run_validate_and_ls(tiny_run, capsys) -> None:
    _, path, tmp_path = tiny_run
    res = run_cli(["validate", str(path)], capsys)
    assert res.code == 0 and "ok:" in res.out and "attacks: flip, random_search, dija" in res.out
    res = run_cli(["validate", str(path), "--set", "guard.quantile=7"], capsys)
    assert res.code == 2 and res.error_lines == ["error: config: guard.quantile: Input should be less than 1 (got 7)"]
    res = run_cli(["validate", str(path), "--set", "batch_size=0"], capsys)
    assert res.code == 2 and len(res.error_lines) == 1 and "batch_size" in res.err
    res = run_cli(["ls", "attacks"], capsys)
    assert res.code == 0 and "refusal_suppression" in res.out and "pair" in res.out
    res = run_cli(["ls"], capsys)
    for section in ("models", "prompts", "samplers", "poolings", "attacks", "defenses", "detectors", "families"):
        assert section in res.out
    res = run_cli(["ls", "colours"], capsys)
    assert res.code == 2 and "one of models" in res.err
    out = tmp_path / "cli-run"
    res = run_cli(["run", "--config", str(path), "--out", str(out), "--set", "attacks=[{name: flip}]"], capsys)
    assert res.code == 0, res.err
    assert (out / "report.html").is_file() and "| group |" in res.out
