"""Every bad input named in DEVELOPERS.md: a one-line error naming the problem and the fix, exit code 2, and
nothing half-written."""

import json
from pathlib import Path

import pytest
import torch

from sri.data import PromptRecord
from sri.sampling import ARConfig
from sri.signal import Anchors
from sri.tracer import trace_key, trace_prompts

from .cli_helpers import run_cli


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
                   capsys, "row 2 has an empty prompt", tmp_path / "o")


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
                    str(tmp_path / "o")], capsys, "appears twice", tmp_path / "o")
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
    _fails_cleanly([*base, "--steps", "0"], capsys, "steps must be positive", tmp_path / "o")
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
    # the tiny random model never writes a refusal phrase, so the refusal anchor would be empty
    _fails_cleanly(["anchors", "--harmless", str(tmp_path / "h"), "--harmful", str(tmp_path / "h"), "--out",
                    str(tmp_path / "a.safetensors")], capsys, "refusal anchor would be empty",
                   tmp_path / "a.safetensors")


def test_bad_signal_file_for_plot(tmp_path, capsys) -> None:
    f = tmp_path / "s.jsonl"
    f.write_text(json.dumps({"id": "x", "label": "harmless"}) + "\n")
    _fails_cleanly(["plot", "--signals", str(f), "--out", str(tmp_path / "f.png")], capsys, "lacks 'sri'",
                   tmp_path / "f.png")


def test_unusable_output_paths_and_non_finite_settings(tiny_llama_dir, prompt_file, tmp_path, capsys) -> None:
    """Issue 11, kinds 2 and 5 (the full set per command is in test_run_folders.py)."""
    f = prompt_file(['{"prompt": "hi"}'])
    base = ["trace", "--model", str(tiny_llama_dir), "--prompts", str(f)]
    _fails_cleanly([*base, "--out", str(f)], capsys, f"--out {f} is a file, but a folder is expected")
    _fails_cleanly([*base, "--out", str(f / "o")], capsys, f"{f} is a file, not a folder", f / "o")
    _fails_cleanly([*base, "--out", str(tmp_path / "o"), "--temperature", "nan"], capsys,
                   "temperature must be a finite number", tmp_path / "o")
    _fails_cleanly(["judge", "--input", str(f), "--field", "prompt", "--out", str(tmp_path)], capsys,
                   f"--out {tmp_path} is a folder, but a file is expected")
