"""Every bad input named in DEVELOPERS.md: a one-line error naming the problem and the fix, exit code 2, and
nothing half-written."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from sri.data.prompts import PromptRecord
from sri.sampling import ARConfig
from sri.signal import Anchors
from sri.tracing.tracer import trace_key, trace_prompts
from tests.cli_helpers import run_cli


def _fails_cleanly(args: list[str], capsys, match: str, must_not_exist: Path | None = None) -> None:
    res = run_cli(args, capsys)
    assert res.code == 2, res.err
    assert len(res.error_lines) == 1, res.err
    assert match in res.err, res.err
    if must_not_exist is not None:
        assert not must_not_exist.exists()


@pytest.fixture
def prompt_file(tmp_path: Path):
    def make(lines: list[str], name: str = "p.jsonl") -> Path:
        path = tmp_path / name
        path.write_text("\n".join(lines) + "\n")
        return path

    return make


def test_empty_prompt(tiny_llama_dir, prompt_file, tmp_path, capsys) -> None:
    f = prompt_file(['{"prompt": "fine"}', '{"prompt": "   "}'])
    _fails_cleanly(["trace", "--model", str(tiny_llama_dir), "--prompts", str(f), "--out", str(tmp_path / "o")],
                   capsys, "p.jsonl:2 has an empty prompt", tmp_path / "o")


def test_over_long_prompt(tiny_llama_dir, prompt_file, tmp_path, capsys) -> None:
    f = prompt_file(['{"id": "long", "prompt": "' + "word " * 50 + '"}'])
    _fails_cleanly(["trace", "--model", str(tiny_llama_dir), "--prompts", str(f), "--out", str(tmp_path / "o"),
                    "--max-prompt-tokens", "64"], capsys, "prompt 'long' is", tmp_path / "o")


def test_malformed_files(tiny_llama_dir, prompt_file, tmp_path, capsys) -> None:
    bad_json = prompt_file(['{"prompt": "ok"}', '{"prompt": '])
    _fails_cleanly(["trace", "--model", str(tiny_llama_dir), "--prompts", str(bad_json), "--out",
                    str(tmp_path / "o")], capsys, "p.jsonl:2 is not valid JSON", tmp_path / "o")
    no_col = prompt_file(["text,label", "hello,x"], "p.csv")
    _fails_cleanly(["trace", "--model", str(tiny_llama_dir), "--prompts", str(no_col), "--out",
                    str(tmp_path / "o")], capsys, "has no 'prompt' column", tmp_path / "o")
    dup = prompt_file(['{"id": "a", "prompt": "x"}', '{"id": "a", "prompt": "y"}'])
    _fails_cleanly(["trace", "--model", str(tiny_llama_dir), "--prompts", str(dup), "--out",
                    str(tmp_path / "o")], capsys, "p.jsonl:2: prompt id 'a' is already used on line 1", tmp_path / "o")
    _fails_cleanly(["trace", "--model", str(tiny_llama_dir), "--prompts", str(tmp_path / "nope.jsonl"), "--out",
                    str(tmp_path / "o")], capsys, "does not exist", tmp_path / "o")


def test_unknown_model(prompt_file, tmp_path, capsys) -> None:
    f = prompt_file(['{"prompt": "hi"}'])
    _fails_cleanly(["trace", "--model", "not-a-model", "--prompts", str(f), "--out", str(tmp_path / "o")], capsys,
                   "model 'not-a-model' is unknown", tmp_path / "o")
    folder = tmp_path / "empty-model"
    folder.mkdir()
    _fails_cleanly(["trace", "--model", str(folder), "--prompts", str(f), "--out", str(tmp_path / "o")], capsys,
                   "has no config.json", tmp_path / "o")


def test_missing_assets(prompt_file, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("SRI_HOME", str(tmp_path / "empty-home"))
    f = prompt_file(['{"prompt": "hi"}'])
    _fails_cleanly(["trace", "--model", "smollm2-135m-instruct", "--prompts", str(f), "--out", str(tmp_path / "o")],
                   capsys, "run `sri assets fetch --model smollm2-135m-instruct`", tmp_path / "o")
    _fails_cleanly(["trace", "--model", "smollm2-135m-instruct", "--prompts", "advbench", "--out",
                    str(tmp_path / "o")], capsys, "run `sri assets fetch --data`", tmp_path / "o")
    _fails_cleanly(["assets", "fetch", "--model", "gpt-17"], capsys, "is not an offline asset")


def test_bad_settings(tiny_llama_dir, prompt_file, tmp_path, capsys) -> None:
    f = prompt_file(['{"prompt": "hi"}'])
    base = ["trace", "--model", str(tiny_llama_dir), "--prompts", str(f), "--out", str(tmp_path / "o")]
    _fails_cleanly([*base, "--steps", "0"], capsys, "'--steps': 0 is out of range", tmp_path / "o")
    _fails_cleanly([*base, "--layers", "99"], capsys, "out of range", tmp_path / "o")
    _fails_cleanly([*base, "--pooling", "all-slots"], capsys, "does not apply to the ar sampler", tmp_path / "o")
    _fails_cleanly([*base, "--device", "cuda:0"] if not torch.cuda.is_available() else [*base, "--dtype", "fp8"],
                   capsys, "cuda" if not torch.cuda.is_available() else "dtype", tmp_path / "o")


def _traces(adapter, folder: Path, steps: int, prompts: list[str]):
    recs = [PromptRecord(id=str(i), prompt=p) for i, p in enumerate(prompts)]
    return trace_prompts(adapter, recs, folder, sampler=ARConfig(steps=steps), progress=False)


def test_mismatched_anchors_and_traces(tiny_llama, tiny_qwen2, tmp_path, capsys) -> None:
    _traces(tiny_llama, tmp_path / "a3", 3, ["hello"])
    _traces(tiny_llama, tmp_path / "a4", 4, ["hello"])
    _traces(tiny_qwen2, tmp_path / "q3", 3, ["hello"])
    n, d = tiny_llama.num_layers, tiny_llama.hidden_size
    key = trace_key(tiny_llama, ARConfig(steps=3), [n], "producing")
    anchors = Anchors({n: torch.randn(3, d)}, {n: torch.randn(3, d)}, key, {})
    anchors.save(tmp_path / "anchors.safetensors")
    out = tmp_path / "signals.jsonl"
    ok = run_cli(["signal", "--anchors", str(tmp_path / "anchors.safetensors"), "--traces", str(tmp_path / "a3"),
                  "--out", str(out)], capsys)
    assert ok.code == 0 and len(out.read_text().splitlines()) == 1
    out.unlink()
    _fails_cleanly(["signal", "--anchors", str(tmp_path / "anchors.safetensors"), "--traces", str(tmp_path / "a4"),
                    "--out", str(out)], capsys, "differ in steps", out)
    _fails_cleanly(["signal", "--anchors", str(tmp_path / "anchors.safetensors"), "--traces", str(tmp_path / "q3"),
                    "--out", str(out)], capsys, "differ in fingerprint", out)
    _fails_cleanly(["anchors", "--harmless", str(tmp_path / "a3"), "--harmful", str(tmp_path / "q3"), "--out",
                    str(tmp_path / "x.safetensors")], capsys, "differ in fingerprint", tmp_path / "x.safetensors")
    _fails_cleanly(["signal", "--anchors", str(tmp_path / "missing.safetensors"), "--traces", str(tmp_path / "a3"),
                    "--out", str(out)], capsys, "does not exist", out)


def test_anchor_sets_that_would_be_empty(tiny_llama, tmp_path, capsys) -> None:
    _traces(tiny_llama, tmp_path / "h", 3, ["hello", "world"])
    _traces(tiny_llama, tmp_path / "x", 3, ["do harm", "more harm"])
    # the tiny random model never writes a refusal phrase, so the refusal anchor would be empty
    _fails_cleanly(["anchors", "--harmless", str(tmp_path / "h"), "--harmful", str(tmp_path / "x"), "--out",
                    str(tmp_path / "a.safetensors")], capsys, "refusal anchor would be empty",
                   tmp_path / "a.safetensors")


def test_bad_signal_file_for_plot(tmp_path, capsys) -> None:
    f = tmp_path / "s.jsonl"
    f.write_text(json.dumps({"id": "x", "label": "harmless"}) + "\n")
    _fails_cleanly(["plot", "--signals", str(f), "--out", str(tmp_path / "f.png")], capsys,
                   "s.jsonl:1 has no 'refused'", tmp_path / "f.png")


# ------------------------------------------------------------------ undecodable text, tokenizers, templates
LONE_SURROGATE = '{"prompt": "\\ud83d"}'  # a JSONL line with half a surrogate pair (an emoji cut in two)


def _model_variant(base: Path, dest: Path, *, tokenizer: dict | None = None, config: dict | None = None,
                   generation: dict | None = None, template: str | None = None) -> Path:
    """A copy of a tiny model folder with keys of its tokenizer_config / config / generation_config set (``None``
    → JSON null) and, with ``template``, another chat template."""
    shutil.copytree(base, dest)
    for name, patch in (("tokenizer_config.json", tokenizer), ("config.json", config),
                        ("generation_config.json", generation)):
        if patch:
            data = json.loads((dest / name).read_text())
            data.update(patch)
            (dest / name).write_text(json.dumps(data))
    if template is not None:
        (dest / "chat_template.jinja").write_text(template)
    return dest


@pytest.fixture(scope="module")
def bad_models(tmp_path_factory) -> dict[str, Path]:
    from tests.tiny_models import build_tiny_causal_lm

    root = tmp_path_factory.mktemp("bad-models")
    base = build_tiny_causal_lm(root / "base", "llama", layers=1, hidden=32, heads=2, kv_heads=1)
    no_tokens = {"eos_token": None, "pad_token": None}
    no_ids = {"eos_token_id": None, "pad_token_id": None}
    return {
        # the tokenizer has neither pad nor EOS; EOS only in generation_config.json
        "eos-in-generation-config": _model_variant(base, root / "gen-eos", tokenizer=no_tokens, config=no_ids,
                                                   generation={"pad_token_id": None}),
        "no-eos-anywhere": _model_variant(base, root / "no-eos", tokenizer=no_tokens, config=no_ids,
                                          generation=no_ids),
        "raising-template": _model_variant(base, root / "raising", template="{{ raise_exception('no') }}"),
    }


def test_lone_surrogate_in_prompts(tiny_llama_dir, prompt_file, tmp_path, capsys) -> None:
    f = prompt_file(['{"prompt": "fine"}', LONE_SURROGATE])
    _fails_cleanly(["trace", "--model", str(tiny_llama_dir), "--prompts", str(f), "--out", str(tmp_path / "o")],
                   capsys, "p.jsonl:2: prompt holds a lone surrogate (\\ud83d)", tmp_path / "o")
    _fails_cleanly(["attack", "--attack", "refusal_suppression", "--prompts", str(f), "--out",
                    str(tmp_path / "a.jsonl")], capsys, "p.jsonl:2: prompt holds a lone surrogate",
                   tmp_path / "a.jsonl")
    # a valid pair of surrogate escapes is one character and fine
    ok = prompt_file(['{"prompt": "hi \\ud83d\\ude00"}'], "ok.jsonl")
    assert run_cli(["attack", "--attack", "refusal_suppression", "--prompts", str(ok), "--out",
                    str(tmp_path / "ok-out.jsonl")], capsys).code == 0


def test_undecodable_text_in_other_inputs(tmp_path, capsys) -> None:
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"response": "fine"}\n{"response": "I\'m sorry \\udc00"}\n')
    _fails_cleanly(["judge", "--input", str(rows), "--out", str(tmp_path / "j.jsonl")], capsys,
                   "rows.jsonl:2: response holds a lone surrogate (\\udc00)", tmp_path / "j.jsonl")
    signals = tmp_path / "signals.jsonl"
    signals.write_text('{"id": "a", "label": "harmless", "sri": [0.1], "key": {"note": "\\ud800"}}\n')
    _fails_cleanly(["guard", "fit", "--benign", str(signals), "--calibrate", str(signals), "--out",
                    str(tmp_path / "g")], capsys, "signals.jsonl:1: key.note holds a lone surrogate", tmp_path / "g")
    latin1 = tmp_path / "p.txt"
    latin1.write_bytes("first prompt\ncaf\xe9 prompt\n".encode("latin-1"))
    _fails_cleanly(["trace", "--model", "unused", "--prompts", str(latin1), "--out", str(tmp_path / "o")], capsys,
                   "p.txt:2 is not valid UTF-8: byte 0xe9 at column 4, byte offset 16", tmp_path / "o")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"prompt": "hi", "response": "\\ud83d"}\n')
    out = tmp_path / "dlm"
    _fails_cleanly(["dlm", "build", "--pairs", str(pairs), "--out", str(out), "--no-gate"], capsys,
                   "pairs.jsonl:1: response holds a lone surrogate", out)
    assert not list(tmp_path.glob(".dlm*"))  # nor its work folder


def test_eos_only_in_generation_config_is_used(bad_models, prompt_file, tmp_path, capsys) -> None:
    f = prompt_file(['{"id": "a", "prompt": "hi"}', '{"id": "b", "prompt": "a longer prompt"}'])
    res = run_cli(["trace", "--model", str(bad_models["eos-in-generation-config"]), "--prompts", str(f), "--out",
                   str(tmp_path / "o"), "--steps", "3", "--device", "cpu"], capsys)
    assert res.code == 0, res.err
    from sri.models import load_model

    adapter = load_model(str(bad_models["eos-in-generation-config"]), device="cpu", dtype="fp32")
    assert adapter.tokenizer.eos_token == "<|im_end|>" and adapter.tokenizer.pad_token == "<|im_end|>"


def test_no_eos_anywhere(bad_models, prompt_file, tmp_path, capsys) -> None:
    f = prompt_file(['{"prompt": "hi"}'])
    model = str(bad_models["no-eos-anywhere"])
    _fails_cleanly(["trace", "--model", model, "--prompts", str(f), "--out", str(tmp_path / "o")], capsys,
                   "set eos_token in its tokenizer_config.json", tmp_path / "o")
    message = f"'{model}' declares no end-of-sequence token"
    _run_and_eval_fail(model, tmp_path, capsys, message)


def test_chat_template_that_always_raises(bad_models, prompt_file, tmp_path, capsys) -> None:
    f = prompt_file(['{"prompt": "hi"}'])
    model = str(bad_models["raising-template"])
    message = f"the chat template of '{model}' fails to render a conversation"
    for system in ([], ["--system-prompt", ""]):
        _fails_cleanly(["trace", "--model", model, "--prompts", str(f), "--out", str(tmp_path / "o"), *system],
                       capsys, message, tmp_path / "o")
    _fails_cleanly(["attack", "--attack", "pair", "--prompts", str(f), "--model", model, "--out",
                    str(tmp_path / "a.jsonl"), "--device", "cpu"], capsys, message, tmp_path / "a.jsonl")
    _fails_cleanly(["dlm", "build", "--base", model, "--pairs", str(_pairs(tmp_path)), "--out",
                    str(tmp_path / "dlm"), "--no-gate"], capsys, message, tmp_path / "dlm")
    assert not list(tmp_path.glob(".dlm*"))
    _run_and_eval_fail(model, tmp_path, capsys, message)


def _pairs(tmp_path: Path) -> Path:
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"prompt": "hi", "response": "hello"}\n')
    return path


def _run_and_eval_fail(model: str, tmp_path: Path, capsys, message: str) -> None:
    import yaml

    prompts = tmp_path / "few.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"prompt {i}"}) + "\n" for i in range(4)))
    run_config = {"name": "t", "model": model, "device": "cpu", "dtype": "fp32",
                  "prompts": {"anchor_harmless": {"dataset": str(prompts), "n": 1},
                              "anchor_harmful": {"dataset": str(prompts), "n": 1},
                              "harmless": {"dataset": str(prompts), "n": 1},
                              "harmful": {"dataset": str(prompts), "n": 1}}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(run_config))
    _fails_cleanly(["run", "--config", str(path), "--out", str(tmp_path / "run")], capsys, message,
                   tmp_path / "run")
    _fails_cleanly(["eval", "--config", str(path), "--out", str(tmp_path / "ev")], capsys, message, tmp_path / "ev")
def test_unusable_output_paths_and_non_finite_settings(tiny_llama_dir, prompt_file, tmp_path, capsys) -> None:
    """Issue 11, kinds 2 and 5 (the full set per command is in test_run_folders.py)."""
    f = prompt_file(['{"prompt": "hi"}'])
    base = ["trace", "--model", str(tiny_llama_dir), "--prompts", str(f)]
    _fails_cleanly([*base, "--out", str(f)], capsys, f"--out {f} is a file, but a folder is expected")
    _fails_cleanly([*base, "--out", str(f / "o")], capsys, f"{f} is a file, not a folder", f / "o")
    _fails_cleanly([*base, "--out", str(tmp_path / "o"), "--temperature", "nan"], capsys,
                   "'--temperature': nan is not a finite number", tmp_path / "o")
    _fails_cleanly(["judge", "--input", str(f), "--field", "prompt", "--out", str(tmp_path)], capsys,
                   f"--out {tmp_path} is a folder, but a file is expected")
