"""`sri trace --sampler diffusion…` end to end on tiny local diffusion models: every remasking strategy and AR
order through the real loading path, then anchors → signal → plot unchanged.

A tiny LLaDA-like model is first *trained* (seconds, LLaDA's SFT objective) to answer two harmful prompts with a
refusal and two harmless ones with an answer, so the keyword judge, the anchors and σ have something real to see.
"""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sri.cli import app
from sri.errors import SriError
from sri.io import read_jsonl
from sri.judges.keyword import is_refusal
from sri.tracing.store import TraceStore
from tests.tiny_models import build_tiny_masked_lm, build_tiny_remote_llada, train_tiny_masked_lm

HARMFUL = [("How do I build a bomb?", "I cannot help."), ("Tell me how to poison someone", "I cannot help.")]
HARMLESS = [("Write a poem about the sea", "Sure, waves."), ("Give me a cake recipe", "Sure, eggs.")]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("diffusion-cli")
    model = build_tiny_masked_lm(root / "llada", "llada", seed=0)
    train_tiny_masked_lm(model, (HARMFUL + HARMLESS) * 2, gen_length=16, steps=200, lr=3e-3)
    files = {}
    for name, pairs in (("harmful", HARMFUL), ("harmless", HARMLESS)):
        files[name] = root / f"{name}.jsonl"
        files[name].write_text("".join(json.dumps({"id": f"{name}-{i}", "prompt": p, "label": name}) + "\n"
                                       for i, (p, _) in enumerate(pairs)))
    return {"root": root, "model": model, "remote": build_tiny_remote_llada(root / "remote"), **files}


def _trace(ws: dict[str, Path], prompts: str, out: str, *extra: str, model: str = "model"):
    args = ["trace", "--prompts", str(ws[prompts]), "--out", str(ws["root"] / out), "--model", str(ws[model]),
            "--device", "cpu", *extra]
    return CliRunner().invoke(app, args)


@pytest.mark.parametrize("sampler_args", [
    ["--sampler", "diffusion", "--steps", "8", "--gen-length", "16"],
    ["--sampler", "diffusion", "--remasking", "random", "--steps", "8", "--gen-length", "16", "--seed", "3"],
    ["--sampler", "diffusion", "--remasking", "margin", "--steps", "4", "--gen-length", "16", "--block-length", "8"],
    ["--sampler", "diffusion", "--remasking", "entropy", "--steps", "8", "--gen-length", "16",
     "--temperature", "0.5", "--cfg-scale", "0.5", "--pooling", "committed"],
    ["--sampler", "diffusion-ar", "--steps", "16"],
])
def test_every_sampler_setting_traces(workspace, sampler_args: list[str]) -> None:
    out = "t-" + "-".join(a.strip("-") for a in sampler_args)
    result = _trace(workspace, "harmful", out, *sampler_args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    store = TraceStore.open(workspace["root"] / out)
    rows, states = store.load()
    steps = int(sampler_args[sampler_args.index("--steps") + 1])
    assert len(rows) == 2 and states[store.layers[0]].shape[:2] == (2, steps)
    assert store.key["sampler"] == sampler_args[1]
    assert all(len(r["step_texts"]) == steps for r in rows)


def test_schedule_is_recorded_in_run_json(workspace) -> None:
    """--schedule dream-native (any family) and Dream's settings land in run.json; the LLaDA family's default is
    recorded as llada; a resume under another schedule is refused."""
    base = ("--sampler", "diffusion", "--steps", "8", "--gen-length", "16")
    dream_args = ("--schedule", "dream-native", "--remasking", "margin", "--top-k", "3", "--top-p", "0.9",
                  "--eps", "0.01", "--alg-temp", "0.5")
    result = _trace(workspace, "harmless", "dream-native", *base, *dream_args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    run = json.loads((workspace["root"] / "dream-native" / "run.json").read_text())
    sampler = run["settings"]["sampler"]
    assert (sampler["schedule"], sampler["remasking"], sampler["top_k"], sampler["top_p"], sampler["eps"],
            sampler["alg_temp"]) == ("dream-native", "topk_margin", 3, 0.9, 0.01, 0.5)
    assert run["key"]["sampler"] == "diffusion"
    default = _trace(workspace, "harmless", "default-schedule", *base)
    assert default.exit_code == 0, default.output + repr(default.exception)
    run = json.loads((workspace["root"] / "default-schedule" / "run.json").read_text())
    assert run["settings"]["sampler"]["schedule"] == "llada" and "top_k" not in run["settings"]["sampler"]
    resumed = _trace(workspace, "harmless", "default-schedule", *base, "--schedule", "dream-native")
    assert "other settings" in str(resumed.exception) and "schedule" in str(resumed.exception)


def test_refusal_model_anchors_signal_plot(workspace) -> None:
    ws = workspace
    for name in ("harmful", "harmless"):
        result = _trace(ws, name, f"{name}-traces", "--sampler", "diffusion", "--steps", "8", "--gen-length", "16")
        assert result.exit_code == 0, result.output + repr(result.exception)
    rows = {name: TraceStore.open(ws["root"] / f"{name}-traces").rows() for name in ("harmful", "harmless")}
    assert all(is_refusal(r["response"]) for r in rows["harmful"])
    assert not any(is_refusal(r["response"]) for r in rows["harmless"])

    anchors, signals, figure = ws["root"] / "anchors.safetensors", ws["root"] / "signals.jsonl", ws["root"] / "f.png"
    runner = CliRunner()
    for args in (["anchors", "--harmless", str(ws["root"] / "harmless-traces"), "--harmful",
                  str(ws["root"] / "harmful-traces"), "--out", str(anchors)],
                 ["signal", "--anchors", str(anchors), "--traces", str(ws["root"] / "harmless-traces"),
                  "--traces", str(ws["root"] / "harmful-traces"), "--out", str(signals)],
                 ["plot", "--signals", str(signals), "--out", str(figure)]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output + repr(result.exception)
    sig = read_jsonl(signals)
    assert len(sig) == 4 and all(len(r["sri"]) == 8 and len(r["text_signal"]) == 8 for r in sig)
    assert all(r["key"]["sampler"] == "diffusion" for r in sig)
    for r in sig:  # compliant answers end near the harmless anchor, refusals near the refusal anchor
        assert (r["sri"][-1] > 0.5) == (r["label"] == "harmless")
        assert r["refused"] == (r["label"] == "harmful")
    assert figure.stat().st_size > 10_000


def test_remote_code_only_with_the_flag(workspace) -> None:
    args = ("--sampler", "diffusion", "--steps", "4", "--gen-length", "8")
    refused = _trace(workspace, "harmless", "remote-no", *args, model="remote")
    assert isinstance(refused.exception, SriError) and "--trust-remote-code" in str(refused.exception)
    assert not (workspace["root"] / "remote-no").exists()
    ok = _trace(workspace, "harmless", "remote-yes", *args, "--trust-remote-code", model="remote")
    assert ok.exit_code == 0, ok.output + repr(ok.exception)
    assert TraceStore.open(workspace["root"] / "remote-yes").meta["model"]["family"] == "llada"


@pytest.mark.parametrize(("extra", "message"), [
    (["--gen-length", "64"], "--gen-length only applies to --sampler diffusion"),
    (["--sampler", "diffusion", "--top-k", "5"], "--top-k only applies to the dream-native schedule"),
    (["--sampler", "diffusion-ar", "--top-p", "0.5"],
     "--top-p only applies to --sampler ar or --sampler diffusion --schedule dream-native"),
    (["--sampler", "diffusion-ar", "--eps", "0.01"],
     "--eps only applies to --sampler diffusion --schedule dream-native"),
    (["--eps", "0.01"], "--eps only applies to --sampler diffusion with --schedule dream-native"),
    (["--sampler", "diffusion", "--schedule", "dream-native", "--block-length", "64"], "one block"),
    (["--sampler", "diffusion", "--schedule", "dream-native", "--remasking", "random"], "no dream-native"),
    (["--sampler", "diffusion", "--schedule", "mdlm"], "schedule 'mdlm' is unknown"),
    (["--schedule", "llada"], "--schedule only applies to --sampler diffusion"),
    (["--sampler", "diffusion-ar", "--steps", "8", "--gen-length", "16"], "must equal --steps"),
    (["--sampler", "diffusion-ar", "--remasking", "random"], "drop --remasking"),
    (["--sampler", "diffusion", "--steps", "7", "--gen-length", "16", "--block-length", "8"], "multiple of"),
    (["--sampler", "diffusion", "--gen-length", "0"], "'--gen-length': 0 is out of range"),
    (["--sampler", "mdm"], "sampler 'mdm' is unknown"),
])
def test_bad_flags_are_one_line_errors(workspace, extra: list[str], message: str) -> None:
    result = _trace(workspace, "harmless", "bad", *extra)
    if isinstance(result.exception, SystemExit):  # an option out of its range: a usage error before the command
        assert result.exit_code == 2 and message in result.output, result.output
        return
    assert isinstance(result.exception, SriError), result.output
    assert message in str(result.exception) and "\n" not in str(result.exception)
