"""Trace store: atomic shards, resume after interruption (in-process and a real SIGKILL), settings guard."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sri.data.prompts import PromptRecord
from sri.errors import IncompatibleError, SriError
from sri.sampling import ARConfig, StepObserver
from sri.tracing.store import TraceStore
from sri.tracing.tracer import trace_prompts

RECORDS = [PromptRecord(id=f"p{i}", prompt=f"prompt number {i} " + "x" * i) for i in range(7)]


class _Crash(StepObserver):
    """Raises during the n-th batch, like a process dying mid-run."""

    def __init__(self, batch: int) -> None:
        self.batch, self.seen = batch, 0

    def on_start(self, batch_size: int, prompt_lengths: list[int]) -> None:
        self.seen += 1
        if self.seen == self.batch:
            raise KeyboardInterrupt("simulated kill")


def test_resume_after_interruption_loses_and_duplicates_nothing(tiny_llama, tmp_path) -> None:
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        trace_prompts(tiny_llama, RECORDS, out, sampler=ARConfig(steps=4), batch_size=2, observers=[_Crash(3)],
                      progress=False)
    assert len(TraceStore.open(out)) == 4  # two complete shards of two
    store = trace_prompts(tiny_llama, RECORDS, out, sampler=ARConfig(steps=4), batch_size=2, progress=False)
    rows, states = store.load()
    ids = [r["id"] for r in rows]
    assert sorted(ids) == sorted(r.id for r in RECORDS) and len(set(ids)) == len(ids)
    assert states[tiny_llama.num_layers].shape == (7, 4, tiny_llama.hidden_size)
    # a second full run has nothing left to do
    again = trace_prompts(tiny_llama, RECORDS, out, sampler=ARConfig(steps=4), batch_size=2, progress=False)
    assert len(again) == 7


def test_orphan_tensor_file_without_rows_is_ignored_and_replaced(tiny_llama, tmp_path) -> None:
    out = tmp_path / "run"
    trace_prompts(tiny_llama, RECORDS[:2], out, sampler=ARConfig(steps=3), batch_size=2, progress=False)
    (out / "shards" / "00001.safetensors").write_bytes(b"half-written garbage")
    store = trace_prompts(tiny_llama, RECORDS[:4], out, sampler=ARConfig(steps=3), batch_size=2, progress=False)
    rows, _ = store.load()
    assert [r["id"] for r in rows] == ["p0", "p1", "p2", "p3"]


def test_resume_with_other_settings_is_refused(tiny_llama, tmp_path) -> None:
    out = tmp_path / "run"
    trace_prompts(tiny_llama, RECORDS[:2], out, sampler=ARConfig(steps=3), progress=False)
    with pytest.raises(IncompatibleError, match="other settings"):
        trace_prompts(tiny_llama, RECORDS[:2], out, sampler=ARConfig(steps=5), progress=False)
    with pytest.raises(IncompatibleError, match="other settings"):
        trace_prompts(tiny_llama, RECORDS[:2], out, sampler=ARConfig(steps=3, temperature=0.7), progress=False)


def test_non_trace_folder_is_refused(tiny_llama, tmp_path) -> None:
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("mine")
    with pytest.raises(SriError, match="not a trace folder"):
        trace_prompts(tiny_llama, RECORDS[:1], tmp_path / "stuff", sampler=ARConfig(steps=2), progress=False)
    with pytest.raises(SriError, match="no run.json"):
        TraceStore.open(tmp_path / "stuff")


def test_sigkill_mid_run_then_resume(tiny_llama_dir: Path, tmp_path) -> None:
    """A real `sri trace` process killed with SIGKILL; re-running the same command completes the folder."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"k{i}", "prompt": f"say {i} " * 3}) + "\n" for i in range(40)))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "sri", "trace", "--model", str(tiny_llama_dir), "--prompts", str(prompts),
           "--out", str(out), "--steps", "24", "--batch-size", "1", "--device", "cpu"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ})
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / "shards").glob("*.jsonl"))) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(TraceStore.open(out))
    assert 3 <= done_before < 40
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ids = [r["id"] for r in TraceStore.open(out).rows()]
    assert sorted(ids) == sorted(f"k{i}" for i in range(40))
