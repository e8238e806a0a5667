"""End-to-end guard evaluation on the default refusing model, at toy sizes (refusal tier)."""

from __future__ import annotations

import pytest

from sri.evaluate import AttackSpec, EvalConfig, evaluate_sets, prompt_sets
from sri.guard import Guard
from sri.trace import TraceStore

pytestmark = pytest.mark.refusal


pytestmark = pytest.mark.usefixtures("one_thread")


def test_small_end_to_end_eval(qwen05, offline_data, tmp_path) -> None:
    config = EvalConfig(steps=4, n_anchor=3, n_fit=6, n_calibrate=3, n_harmless=3, n_overrefusal=2, n_behaviours=2,
                        attacks=[AttackSpec("prefix_injection", template="prefix_injection")],
                        smoothllm_copies=2, smoothllm_max_prompts=2, bootstrap=50)
    sets = prompt_sets(config)
    fit_ids = {r.id for name in ("fit", "calibrate") for r in sets[name]}
    assert not fit_ids & {r.id for r in sets["prefix_injection"] + sets["harmful"]}
    assert all(r.label == "harmless" for name in ("fit", "calibrate") for r in sets[name])
    results = evaluate_sets(qwen05, sets, ["prefix_injection"], config, tmp_path, progress=False)

    tables = (tmp_path / "tables.md").read_text()
    assert "no attack prompt, template or HarmBench behaviour was used to fit or calibrate" in tables
    assert (tmp_path / "figures" / "roc.png").stat().st_size > 0 and (tmp_path / "eval.json").is_file()
    names = [d["defense"] for d in results["defenses"]]
    assert names == ["undefended", "sri-guard", "sri-guard-streaming", "ppl-filter", "self-examine", "llm-guard",
                     "smoothllm"]
    for d in results["defenses"]:
        for metric in ("fp_harmless", "fp_overrefusal", "rr_jailbreak", "asr_jailbreak_keyword_proxy"):
            assert 0 <= d[metric]["low"] <= d[metric]["value"] <= d[metric]["high"] <= 1
        assert d["rr_jailbreak"]["value"] + d["asr_jailbreak_keyword_proxy"]["value"] == pytest.approx(1)
    smooth = results["defenses"][-1]
    assert smooth["n_per_set"] == {"harmless-test": 2, "overrefusal": 2, "harmful": 2, "prefix_injection": 2}
    undefended = results["defenses"][0]  # every defense blocks at least what the model itself refuses
    assert all(d["rr_jailbreak"]["value"] >= undefended["rr_jailbreak"]["value"]
               for d in results["defenses"][1:3])
    assert [a["representation"].split(",")[0] for a in results["ablation"]] == [
        "text-level signal", "static first-step activations (final layer)", "SRI", "SRI", "SRI"]
    assert [e["set"] for e in results["early_stop"]] == ["harmless-test", "overrefusal", "harmful",
                                                          "prefix_injection"]
    guard = Guard.load(tmp_path / "guard")
    assert guard.info["counts"] == {"benign": 6, "calibrate": 3}
    # resuming re-uses every trace and cached defense result
    shards = sorted((tmp_path / "traces").glob("*/shards/*.jsonl"))
    again = evaluate_sets(qwen05, sets, ["prefix_injection"], config, tmp_path, progress=False)
    assert sorted((tmp_path / "traces").glob("*/shards/*.jsonl")) == shards
    verdicts = lambda r: [(d["defense"], d["fp_harmless"], d["rr_jailbreak"]) for d in r["defenses"]]
    assert verdicts(again) == verdicts(results)
    assert len(TraceStore.open(tmp_path / "traces" / "prefix_injection")) == 2
