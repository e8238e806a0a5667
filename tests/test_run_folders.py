"""Run folders that check themselves (issue 11, kinds 2, 3, 4, 5 and 13): output paths refused before any work,
damaged shards named and redone on resume, hand-edited run.json / guard.json refused field by field, one writer
per folder, nothing claimed before validation, and outputs that honour the umask."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file

from sri.data.prompts import PromptRecord
from sri.errors import SriError
from sri.guard import fit_guard
from sri.io import write_jsonl
from sri.sampling import ARConfig
from sri.signal import Anchors
from sri.tracing.store import TraceStore
from sri.tracing.tracer import trace_key, trace_prompts
from tests.cli_helpers import run_cli

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 3


def _fails_cleanly(args: list[str], capsys, match: str, *must_not_exist: Path) -> str:
    res = run_cli(args, capsys)
    assert res.code == 2, res.err
    assert len(res.error_lines) == 1, res.err
    assert "Traceback" not in res.err
    assert match in res.err, res.err
    for path in must_not_exist:
        assert not path.exists(), path
    return res.err


def _traces(adapter, folder: Path, ids: list[str], batch_size: int = 2) -> TraceStore:
    recs = [PromptRecord(id=i, prompt=f"tell me about {i}") for i in ids]
    store = trace_prompts(adapter, recs, folder, sampler=ARConfig(steps=STEPS), batch_size=batch_size,
                          progress=False)
    store.close()
    return store


def _anchors(adapter, path: Path) -> Path:
    n, d = adapter.num_layers, adapter.hidden_size
    key = trace_key(adapter, ARConfig(steps=STEPS), [n], "producing")
    g = torch.Generator().manual_seed(0)
    Anchors({n: torch.randn(STEPS, d, generator=g)}, {n: torch.randn(STEPS, d, generator=g)}, key, {}).save(path)
    return path


# ------------------------------------------------------------------------------------------- 2: output paths
@pytest.fixture
def blocked(tmp_path: Path) -> dict[str, Path]:
    """An existing file, an existing folder, and a path under the file."""
    f = tmp_path / "a-file.txt"
    f.write_text("mine\n")
    d = tmp_path / "a-folder"
    d.mkdir()
    (d / "keep.txt").write_text("mine\n")
    return {"file": f, "folder": d, "under": f / "x" / "out.jsonl"}


def _commands(tiny_llama_dir: Path, tmp_path: Path) -> dict[str, tuple[str, list[str]]]:
    """command → (what --out must be: file or folder, its arguments without --out)."""
    sig = tmp_path / "s.jsonl"
    sig.write_text(json.dumps({"id": "x", "label": "harmless", "refused": False, "sri": [0.5]}) + "\n")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: t\n")
    model = str(tiny_llama_dir)
    return {
        "trace": ("folder", ["trace", "--model", model, "--prompts", str(prompts), "--steps", "2"]),
        "plot": ("file", ["plot", "--signals", str(sig)]),
        "signal": ("file", ["signal", "--anchors", str(tmp_path / "a.safetensors"), "--traces", str(tmp_path)]),
        "judge": ("file", ["judge", "--input", str(prompts), "--field", "prompt"]),
        "attack": ("file", ["attack", "--attack", "flip", "--prompts", str(prompts)]),
        "anchors": ("file", ["anchors", "--harmless", str(tmp_path), "--harmful", str(tmp_path)]),
        "guard fit": ("folder", ["guard", "fit", "--benign", str(sig), "--calibrate", str(sig)]),
        "guard score": ("file", ["guard", "score", "--guard", str(tmp_path), "--signals", str(sig)]),
        "run": ("folder", ["run", "--config", str(cfg)]),
        "eval": ("folder", ["eval", "--config", str(cfg)]),
        "demo": ("folder", ["demo", "--model", model]),
    }


@pytest.mark.parametrize("command", ["trace", "plot", "signal", "judge", "attack", "anchors", "guard fit",
                                     "guard score", "run", "eval", "demo"])
def test_unusable_out_paths_are_refused_before_any_work(command, tiny_llama_dir, tmp_path, blocked, capsys) -> None:
    kind, args = _commands(tiny_llama_dir, tmp_path)[command]
    suffix = {"plot": ".png", "anchors": ".safetensors"}.get(command, ".jsonl")
    folder = blocked["folder"].with_suffix(suffix)  # an existing folder where a file is expected
    folder.mkdir(exist_ok=True)
    before = sorted(tmp_path.rglob("*"))
    if kind == "folder":  # an existing file where a folder is expected
        _fails_cleanly([*args, "--out", str(blocked["file"])], capsys, f"--out {blocked['file']} is a file")
    else:
        _fails_cleanly([*args, "--out", str(folder)], capsys, f"--out {folder} is a folder")
    _fails_cleanly([*args, "--out", str(blocked["under"].with_suffix(suffix))], capsys,
                   f"{blocked['file']} is a file, not a folder")
    assert blocked["file"].read_text() == "mine\n"
    assert sorted(tmp_path.rglob("*")) == before  # nothing written


def test_report_and_analyze_refuse_a_file_as_run_dir(blocked, capsys) -> None:
    for command in ("report", "analyze"):
        _fails_cleanly([command, str(blocked["file"])], capsys, f"RUN_DIR {blocked['file']} is a file")


def test_unwritable_out_is_refused(tmp_path, capsys, monkeypatch) -> None:
    ro = tmp_path / "read-only"
    ro.mkdir()
    sig = tmp_path / "s.jsonl"
    sig.write_text(json.dumps({"id": "x", "label": "harmless", "refused": False, "sri": [0.5]}) + "\n")
    real_access = os.access
    # root may write anywhere, so the permission check is exercised by making the folder report itself read-only
    monkeypatch.setattr("sri.io.os.access", lambda p, mode: False if Path(p) == ro else real_access(p, mode))
    _fails_cleanly(["plot", "--signals", str(sig), "--out", str(ro / "f.png")], capsys,
                   f"--out {ro / 'f.png'} is not writable", ro / "f.png")
    _fails_cleanly(["guard", "fit", "--benign", str(sig), "--calibrate", str(sig), "--out", str(ro / "g" / "h")],
                   capsys, "is not writable", ro / "g")


# ------------------------------------------------------------------------------------------- 3: damaged shards
@pytest.fixture
def traced(tiny_llama, tiny_llama_dir, tmp_path, capsys):
    """A trace folder of 4 ids in 2 shards made by `sri trace`, its prompts, and random anchors."""
    prompts = tmp_path / "p.jsonl"
    write_jsonl(prompts, [{"id": f"p{i}", "prompt": f"tell me about thing {i}"} for i in range(4)])
    cmd = ["trace", "--model", str(tiny_llama_dir), "--prompts", str(prompts), "--out", str(tmp_path / "t"),
           "--steps", str(STEPS), "--batch-size", "2"]
    res = run_cli(cmd, capsys)
    assert res.code == 0, res.err
    return {"folder": tmp_path / "t", "cmd": cmd, "anchors": _anchors(tiny_llama, tmp_path / "a.safetensors")}


def _signal(traced, tmp_path) -> list[str]:
    return ["signal", "--anchors", str(traced["anchors"]), "--traces", str(traced["folder"]), "--out",
            str(tmp_path / "s.jsonl")]


def test_every_shard_carries_the_run_key_and_row_count(traced) -> None:
    from safetensors import safe_open

    store = TraceStore.open(traced["folder"])
    for shard in sorted((traced["folder"] / "shards").glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as f:
            meta = f.metadata()
        assert json.loads(meta["key"]) == store.key and meta["rows"] == "2"


def test_truncated_shard_is_named_and_resume_redoes_it(traced, tmp_path, capsys) -> None:
    shard = traced["folder"] / "shards" / "00001.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    err = _fails_cleanly(_signal(traced, tmp_path), capsys, f"shard {shard} is damaged", tmp_path / "s.jsonl")
    assert f"delete it and re-run `sri trace --out {traced['folder']}` to redo it" in err
    b = tmp_path / "b.safetensors"
    other = shutil.copytree(traced["folder"], tmp_path / "other")  # a second folder (one folder for both is refused)
    _fails_cleanly(["anchors", "--harmless", str(traced["folder"]), "--harmful", str(other), "--out",
                    str(b)], capsys, "00001.safetensors is damaged", b)
    res = run_cli(traced["cmd"], capsys)  # re-running the trace is not "complete": it redoes the shard
    assert res.code == 0, res.err
    assert f"deleted damaged shard {shard}" in res.err and "4 traces" in res.err
    rows, states = TraceStore.open(traced["folder"]).load()
    assert sorted(r["id"] for r in rows) == ["p0", "p1", "p2", "p3"] and next(iter(states.values())).shape[0] == 4
    assert run_cli(_signal(traced, tmp_path), capsys).code == 0


def test_short_jsonl_is_caught_not_misaligned(traced, tmp_path, capsys) -> None:
    rows_file = traced["folder"] / "shards" / "00000.jsonl"
    lines = rows_file.read_text().splitlines(keepends=True)
    rows_file.write_text("".join(lines[1:]))  # one row shorter than its tensor
    _fails_cleanly(_signal(traced, tmp_path), capsys, "00000.safetensors is damaged (00000.jsonl has 1 rows, the "
                   "tensor file 2)", tmp_path / "s.jsonl")


@pytest.mark.parametrize(("edit", "message"), [
    (lambda m: m.pop("key"), "field 'key' is missing"),
    (lambda m: m["key"]["layers"].insert(0, 1), "field key.layers"),
    (lambda m: m["key"].update(layers=[0, 99]), "field key.layers is [0, 99]"),
    (lambda m: m["key"].update(steps="3"), "field key.steps is '3', not a whole number"),
    (lambda m: m["key"].update(pooling="generated"), "field key.pooling"),
    (lambda m: m["key"].update(pooling="made-up"), "field key.pooling is 'made-up'"),
    (lambda m: m.pop("settings"), "field 'settings' is missing"),
    ("list", "is a JSON list, not an object"),
])
def test_hand_edited_run_json_is_refused_naming_the_field(traced, tmp_path, capsys, edit, message) -> None:
    run = traced["folder"] / "run.json"
    meta = json.loads(run.read_text())
    if edit == "list":
        meta = [meta]
    else:
        edit(meta)
    run.write_text(json.dumps(meta))
    _fails_cleanly(_signal(traced, tmp_path), capsys, message, tmp_path / "s.jsonl")
    _fails_cleanly(["judge", "--input", str(traced["folder"])], capsys, message)


def test_shards_without_a_key_ask_for_a_new_trace(traced, tmp_path, capsys) -> None:
    shard = traced["folder"] / "shards" / "00000.safetensors"
    from safetensors.torch import load_file

    save_file(load_file(str(shard)), str(shard), metadata={"format": "sri-trace/1"})  # as older sri wrote them
    _fails_cleanly(_signal(traced, tmp_path), capsys, "carries no run key", tmp_path / "s.jsonl")


@pytest.fixture
def guard_dir(tmp_path) -> Path:
    key = {"model": "m", "fingerprint": "f", "hidden_size": 8, "sampler": "ar", "steps": 6, "pooling": "producing",
           "after_end": "repeat-state", "layer": 2}
    x = np.random.default_rng(0).beta(12, 1, size=(60, 6))

    def rows(a: np.ndarray, p: str) -> list[dict]:
        return [{"id": f"{p}{i}", "label": "harmless", "sri": r.tolist(), "key": key} for i, r in enumerate(a)]

    fit_guard(rows(x[:40], "b"), rows(x[40:], "c"), detector="mahalanobis", stream="union").save(tmp_path / "g")
    write_jsonl(tmp_path / "sig.jsonl", rows(x[:5], "s"))
    return tmp_path / "g"


@pytest.mark.parametrize(("edit", "message"), [
    (lambda m: m.pop("threshold"), "field threshold is missing"),
    (lambda m: m.update(quantile="high"), "field quantile is 'high'"),
    (lambda m: m.update(key=[1]), "field key is [1]"),
    (lambda m: m["key"].pop("steps"), "field key.steps is missing"),
    (lambda m: m.update(stream_thresholds={"3": "x"}), "field stream_thresholds.3 is 'x'"),
    (lambda m: m["detectors"].pop("6"), "has no full-signal detector"),
    (lambda m: m["detectors"]["6"].update(kind="nope"), "field detectors.6 does not rebuild a detector"),
    (lambda m: m.update(anchors={"tau": 0.1}), "field anchors is"),
    ("list", "is a JSON list, not an object"),
])
def test_hand_edited_guard_json_is_refused_naming_the_field(guard_dir, capsys, edit, message) -> None:
    path = guard_dir / "guard.json"
    meta = json.loads(path.read_text())
    if edit == "list":
        meta = [meta]
    else:
        edit(meta)
    path.write_text(json.dumps(meta))
    _fails_cleanly(["guard", "score", "--guard", str(guard_dir), "--signals", str(guard_dir.parent / "sig.jsonl")],
                   capsys, message)


# ------------------------------------------------------------------------------------------- 4: writers, inputs
_HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.ftruncate(fd, 0); os.write(fd, str(os.getpid()).encode())
print("locked", flush=True)
time.sleep(120)
"""


def test_second_writer_is_refused_and_a_dead_writers_lock_is_not_stale(tiny_llama_dir, tmp_path, capsys) -> None:
    out = tmp_path / "t"
    out.mkdir()
    other = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(out / ".lock")], stdout=subprocess.PIPE,
                             text=True)
    try:
        assert other.stdout.readline().strip() == "locked"
        prompts = tmp_path / "p.jsonl"
        prompts.write_text('{"id": "a", "prompt": "hi"}\n')
        cmd = ["trace", "--model", str(tiny_llama_dir), "--prompts", str(prompts), "--out", str(out), "--steps", "2"]
        _fails_cleanly(cmd, capsys, f"{out} is being written by another sri process (pid {other.pid}); wait")
        assert not (out / "run.json").exists()
    finally:
        other.kill()
        other.wait()
    time.sleep(0.1)
    res = run_cli(cmd, capsys)  # the killed writer's lock went with it
    assert res.code == 0, res.err
    assert len(TraceStore.open(out)) == 1


def test_appending_through_a_store_opened_for_reading_takes_the_lock(tiny_llama, tmp_path) -> None:
    _traces(tiny_llama, tmp_path / "t", ["a", "b"])
    rows, states = TraceStore.open(tmp_path / "t").load()
    other = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(tmp_path / "t" / ".lock")],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "locked"
        with pytest.raises(SriError, match=f"being written by another sri process \\(pid {other.pid}\\)"):
            TraceStore.open(tmp_path / "t").append([{**r, "id": r["id"] + "2"} for r in rows], states)
    finally:
        other.kill()
        other.wait()
    assert len(TraceStore.open(tmp_path / "t")) == 2


def test_two_stores_in_one_process_share_the_lock_but_not_across_processes(tiny_llama, tmp_path) -> None:
    first = _traces(tiny_llama, tmp_path / "t", ["a", "b"])
    store = TraceStore.create(tmp_path / "t", {k: first.meta[k] for k in ("key", "settings")})
    again = TraceStore.create(tmp_path / "t", {k: first.meta[k] for k in ("key", "settings")})  # re-entrant
    code = "import sys; from sri.tracing.store import TraceStore; TraceStore.create(sys.argv[1], {})"
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path / "t")], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert res.returncode != 0 and f"pid {os.getpid()}" in res.stderr, res.stderr
    store.close()
    again.close()


def test_signal_refuses_a_folder_given_twice_and_repeated_ids(tiny_llama, tmp_path, capsys) -> None:
    _traces(tiny_llama, tmp_path / "t", ["a", "b"])
    _traces(tiny_llama, tmp_path / "u", ["b", "c"])
    (tmp_path / "link").symlink_to(tmp_path / "t")
    anchors = str(_anchors(tiny_llama, tmp_path / "a.safetensors"))
    out = tmp_path / "s.jsonl"
    for second in (tmp_path / "t", tmp_path / "link", f"{tmp_path}/../{tmp_path.name}/t"):
        _fails_cleanly(["signal", "--anchors", anchors, "--traces", str(tmp_path / "t"), "--traces", str(second),
                        "--out", str(out)], capsys, "is the same folder as --traces", out)
    _fails_cleanly(["signal", "--anchors", anchors, "--traces", str(tmp_path / "t"), "--traces",
                    str(tmp_path / "u"), "--out", str(out)], capsys, "id 'b' is in both", out)


# ------------------------------------------------------------------------------------------- 5: validate first
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_temperature_writes_nothing(tiny_llama_dir, tmp_path, capsys, value) -> None:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    out = tmp_path / "o"
    _fails_cleanly(["trace", "--model", str(tiny_llama_dir), "--prompts", str(prompts), "--out", str(out),
                    "--temperature", value], capsys, f"'--temperature': {value} is not a finite number", out)


def _run_config(tmp_path: Path, model: str, harmless: Path, **extra) -> Path:
    config = {"name": "t", "model": model, "device": "cpu", "dtype": "fp32",
              "sampler": {"kind": "diffusion", "steps": 4, "gen_length": 4}, "judge": {"model": "none"},
              "prompts": {"anchor_harmless": {"dataset": str(harmless), "n": 1},
                          "anchor_harmful": {"dataset": str(tmp_path / "x.jsonl"), "n": 1},
                          "harmless": {"dataset": str(harmless), "n": 1},
                          "harmful": {"dataset": str(tmp_path / "x.jsonl"), "n": 1}}, **extra}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_failed_run_does_not_block_the_corrected_config(tmp_path, capsys, monkeypatch) -> None:
    from tests.tiny_models import build_tiny_remote_llada

    remote = str(build_tiny_remote_llada(tmp_path / "remote"))
    capsys.readouterr()  # transformers' "Writing model shards" bar, when no earlier test silenced it
    write_jsonl(tmp_path / "h.jsonl", [{"id": f"h{i}", "prompt": f"cats {i}"} for i in range(2)])
    write_jsonl(tmp_path / "x.jsonl", [{"id": f"x{i}", "prompt": f"bad {i}"} for i in range(2)])
    out = tmp_path / "run"
    # a missing prompt file: refused before the folder is claimed
    cfg = _run_config(tmp_path, remote, tmp_path / "missing.jsonl")
    _fails_cleanly(["run", "--config", str(cfg), "--out", str(out)], capsys, "missing.jsonl", out)
    # a remote-code model without the flag: refused; the corrected config is then accepted
    cfg = _run_config(tmp_path, remote, tmp_path / "h.jsonl")
    res = run_cli(["run", "--config", str(cfg), "--out", str(out)], capsys)  # (stage lines come first)
    assert res.code == 2 and "ships its own modelling code" in res.error_lines[-1], res.err
    reached = []
    monkeypatch.setattr("sri.pipeline.runner._run_one", lambda cfg, run_dir, *a: reached.append(cfg) or run_dir)
    from sri.pipeline import run as run_experiment

    run_experiment(_run_config(tmp_path, remote, tmp_path / "h.jsonl", trust_remote_code=True), out)
    with pytest.raises(SriError, match="ships its own modelling code"):  # checked before the folder is touched
        run_experiment(_run_config(tmp_path, remote, tmp_path / "h.jsonl", seed=5), out)
    run_experiment(_run_config(tmp_path, remote, tmp_path / "h.jsonl", seed=5, trust_remote_code=True),
                   out)  # nothing computed yet: another config takes the folder over
    assert [(c.trust_remote_code, c.seed) for c in reached] == [(True, 0), (True, 5)]
    with pytest.raises(SriError, match="another configuration"):  # but a folder with work in it stays claimed
        (out / "traces").mkdir()
        run_experiment(_run_config(tmp_path, remote, tmp_path / "h.jsonl", seed=6, trust_remote_code=True), out)


# ------------------------------------------------------------------------------------------- 13: permissions
@pytest.mark.parametrize(("umask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_outputs_honour_the_umask(tiny_llama, tmp_path, umask, file_mode, dir_mode) -> None:
    old = os.umask(umask)
    try:
        _traces(tiny_llama, tmp_path / "t", ["a", "b"])
        _anchors(tiny_llama, tmp_path / "t" / "a.safetensors")
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "t").rglob("*") if p.is_file() and p.name != ".lock"]
    assert len(files) >= 5
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {oct(file_mode)}
    assert oct((tmp_path / "t" / "shards").stat().st_mode & 0o777) == oct(dir_mode)
