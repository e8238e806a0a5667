"""The fourth adversarial round (196 inputs by a tester who had not seen the code): one test per kind of broken
promise, each with the tester's input — one-line ``error: …``, exit 2, nothing written, no silent wrong result."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import yaml

from sri.errors import SriError
from tests.cli_helpers import assert_one_line_error, run_cli
from tests.test_harden3 import CONFIG, _signal_row, _write_jsonl


def _config(tmp_path: Path, **changes) -> Path:
    data = yaml.safe_load(CONFIG)
    for dotted, value in changes.items():
        node = data
        *parents, last = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def _refused_by_validate_and_run(cfg: Path, match: str, tmp_path: Path, capsys) -> None:
    """Both commands refuse ``cfg`` in one line with ``match``, and `run` leaves no folder behind."""
    assert_one_line_error(run_cli(["validate", str(cfg)], capsys), match)
    out = tmp_path / "run"
    assert_one_line_error(run_cli(["run", "--config", str(cfg), "--out", str(out)], capsys), match)
    assert not out.exists()


def _long_prompts(tmp_path: Path) -> Path:
    """A prompt file whose first prompt renders to 5123 SmolLM2 tokens (over the default limit of 4096)."""
    return _write_jsonl(tmp_path / "long.jsonl", [{"prompt": "Tell me about " + "the sea and " * 1700},
                                                  {"prompt": "How do I pick a lock?"}])


# ------------------------------------------------------------------- 1. model-dependent settings of a run
@pytest.mark.parametrize("change, match", [
    ({"layers": "999"}, "layer 999 is out of range for a 30-layer model"),
    ({"layers": "final,banana"}, "layer 'banana' is not understood"),
    ({"sampler.steps": 2**70}, "exceeds the model's context of 8192 tokens"),
    ({"stop_tokens": [""]}, "stop token '' is not a single token"),
    ({"prompts.anchors_file": "/etc/passwd", "prompts.anchor_harmless": None, "prompts.anchor_harmful": None},
     "is not a readable safetensors file"),
])
def test_run_settings_the_model_refuses_are_caught_before_writing(smollm, tmp_path, capsys, change, match) -> None:
    cfg = _config(tmp_path, **change)
    _refused_by_validate_and_run(cfg, match, tmp_path, capsys)


@pytest.mark.parametrize("change, match", [
    ({"seed": 2**32}, "seed: Input should be less than or equal to 4294967295"),
    ({"execution.threads": 2**70}, "execution.threads: Input should be less than or equal to 4096"),
    ({"execution.backend": "ray", "execution.num_cpus": 2**70},
     "execution.num_cpus: Input should be less than or equal to 4096"),
    ({"execution.backend": "ray", "execution.workers": 99999}, "asks for more than 1024 workers"),
    ({"execution.workers": 2}, "workers applies to backend: ray only"),
    ({"analysis.bootstrap": 10**9}, "analysis.bootstrap: Input should be less than or equal to 100000"),
])
def test_config_numbers_are_bounded_where_libraries_overflow(tmp_path, capsys, change, match) -> None:
    assert_one_line_error(run_cli(["validate", str(_config(tmp_path, **change))], capsys), match)


def test_deeply_nested_yaml_is_a_one_line_error(tmp_path, capsys) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text(CONFIG + "extra: " + "[" * 20000 + "]" * 20000 + "\n", encoding="utf-8")
    assert_one_line_error(run_cli(["validate", str(path)], capsys), "nests too deeply")


@pytest.mark.parametrize("item, match", [
    ("name.x=1", "name is 'tiny', not a section with keys"),
    ("prompts.harmless.n.deep=3", "prompts.harmless.n is 2, not a section with keys"),
    ("attacks.0.n=1", "not a section with keys"),
])
def test_set_through_a_value_that_is_not_a_section(tmp_path, capsys, item, match) -> None:
    cfg = _config(tmp_path, attacks=[{"name": "flip"}])
    assert_one_line_error(run_cli(["validate", str(cfg), "--set", item], capsys), match)


def test_set_into_a_null_section_starts_it() -> None:
    from sri.pipeline.config import apply_overrides

    assert apply_overrides({"guard": None}, {"guard.quantile": 0.9}) == {"guard": {"quantile": 0.9}}


# ------------------------------------------------------------------------------- 2. inputs that are not files
@pytest.mark.parametrize("command", [["trace", "--steps", "2", "--prompts"], ["judge", "--input"], ["validate"]])
def test_devices_and_fifos_are_named_not_called_missing(tmp_path, capsys, command) -> None:
    fifo = tmp_path / "fifo.jsonl"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/null")):
        extra = ["--out", str(tmp_path / "o")] if command[0] == "trace" else []
        res = run_cli([*command, str(path), *extra], capsys)
        assert_one_line_error(res, "not a regular file")
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------ 3. prompt files read exactly
def test_a_csv_row_longer_than_its_header_is_refused(tmp_path) -> None:
    from sri.data.prompts import load_prompts

    path = tmp_path / "p.csv"
    path.write_text("id,prompt\nc1,Hello, world and more\n", encoding="utf-8")
    with pytest.raises(SriError, match=r"p.csv:2 has 3 cells but the header names 2; quote"):
        load_prompts(str(path))


def test_a_json_key_given_twice_is_refused(tmp_path) -> None:
    from sri.data.prompts import load_prompts

    path = _write_jsonl(tmp_path / "p.jsonl", ['{"id":"d1","prompt":"Name a fruit","prompt":"Name a tree"}'])
    with pytest.raises(SriError, match="the key 'prompt' is given twice"):
        load_prompts(str(path))


def test_txt_prompts_split_on_newlines_only(tmp_path) -> None:
    from sri.data.prompts import load_prompts

    path = tmp_path / "p.txt"
    path.write_text("Tell me a joke\x0cabout cats\r\nName a colour\u2028of the sky\n", encoding="utf-8")
    assert [r.prompt for r in load_prompts(str(path))] == ["Tell me a joke\x0cabout cats",
                                                          "Name a colour\u2028of the sky"]


@pytest.mark.parametrize("text", ["\ufe0f\u034f\u034f", "\u3164", "\u180b \U000e0100"])
def test_prompts_of_default_ignorable_characters_are_empty(tmp_path, text) -> None:
    from sri.data.prompts import load_prompts

    path = _write_jsonl(tmp_path / "p.jsonl", [{"id": "v", "prompt": text}])
    with pytest.raises(SriError, match="has an empty prompt"):
        load_prompts(str(path))


def test_an_empty_label_is_refused(tmp_path, capsys) -> None:
    prompts = _write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hello"}])
    res = run_cli(["trace", "--prompts", str(prompts), "--label", "", "--steps", "2", "--out", str(tmp_path / "o")],
                  capsys)
    assert_one_line_error(res, "the label is empty")
    assert not (tmp_path / "o").exists()


def test_signal_ids_5_and_text_5_are_one_id(tmp_path) -> None:
    from sri.io import read_signal_rows

    path = _write_jsonl(tmp_path / "s.jsonl", [{**_signal_row(0), "id": 5}, {**_signal_row(1), "id": "5"}])
    with pytest.raises(SriError, match="id '5' is already on line 1"):
        read_signal_rows(path)


@pytest.mark.parametrize("label", [None, 7, ["x"]])
def test_guard_score_checks_labels_before_writing(tmp_path, capsys, label) -> None:
    rows = [_signal_row(i) for i in range(12)]
    benign, calib = _write_jsonl(tmp_path / "b.jsonl", rows[:8]), _write_jsonl(tmp_path / "c.jsonl", rows[8:])
    assert run_cli(["guard", "fit", "--benign", str(benign), "--calibrate", str(calib), "--out", str(tmp_path / "g"),
                    "--detector", "mahalanobis"], capsys).code == 0
    scored = _write_jsonl(tmp_path / "s.jsonl", [{**_signal_row(0), "label": label}, _signal_row(1)])
    res = run_cli(["guard", "score", "--guard", str(tmp_path / "g"), "--signals", str(scored),
                   "--out", str(tmp_path / "out.jsonl")], capsys)
    assert_one_line_error(res, "'label' must be text")
    assert not (tmp_path / "out.jsonl").exists()


# ----------------------------------------------------------------- 4. outputs never overwrite an input
def test_outputs_may_not_overwrite_inputs_or_managed_folders(tmp_path, capsys, monkeypatch) -> None:
    rows = [_signal_row(i) for i in range(12)]
    benign, calib = _write_jsonl(tmp_path / "b.jsonl", rows[:8]), _write_jsonl(tmp_path / "c.jsonl", rows[8:])
    guard = tmp_path / "g"
    assert run_cli(["guard", "fit", "--benign", str(benign), "--calibrate", str(calib), "--out", str(guard),
                    "--detector", "mahalanobis"], capsys).code == 0
    before = (guard / "guard.json").read_bytes()
    res = run_cli(["guard", "score", "--guard", str(guard), "--signals", str(benign), "--out",
                   str(guard / "guard.json")], capsys)
    assert_one_line_error(res, "is inside the guard folder")
    assert (guard / "guard.json").read_bytes() == before

    (tmp_path / "a.safetensors").write_bytes(b"x")
    (tmp_path / "a.json").write_text("{}")
    (tmp_path / "t").mkdir()
    res = run_cli(["signal", "--anchors", str(tmp_path / "a.safetensors"), "--traces", str(tmp_path / "t"),
                   "--out", str(tmp_path / "a.json")], capsys)
    assert_one_line_error(res, "is the description written with the --anchors file")
    assert (tmp_path / "a.json").read_text() == "{}"

    labels = _write_jsonl(tmp_path / "lab.jsonl", [{"response": "I can't", "refused": True}])
    res = run_cli(["judge-calibrate", "--keyword-only", "--labels", str(labels), "--out", str(labels)], capsys)
    assert_one_line_error(res, "is the --labels file")

    home = tmp_path / "home"
    (home / "data").mkdir(parents=True)
    monkeypatch.setenv("SRI_HOME", str(home))
    res = run_cli(["attack", "-a", "flip", "--prompts", str(labels), "--out", str(home / "data" / "advbench.jsonl")],
                  capsys)
    assert_one_line_error(res, "is inside the asset cache ($SRI_HOME)")
    assert not (home / "data" / "advbench.jsonl").exists()


def test_anchors_refuse_one_folder_as_both_sides(tmp_path, capsys) -> None:
    (tmp_path / "t").mkdir()
    res = run_cli(["anchors", "--harmless", str(tmp_path / "t"), "--harmful", str(tmp_path / "t" / "."),
                   "--out", str(tmp_path / "a.safetensors")], capsys)
    assert_one_line_error(res, "are the same folder")


def test_an_over_long_output_name_creates_nothing(tmp_path, capsys) -> None:
    prompts = _write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hello"}])
    res = run_cli(["trace", "--prompts", str(prompts), "--steps", "2", "--out",
                   str(tmp_path / "sub" / ("x" * 300))], capsys)
    assert_one_line_error(res, "over this file system's limit")
    assert not (tmp_path / "sub").exists()


# ------------------------------------------------------------------------------------------ 5. environment
def test_sri_home_that_is_a_file_is_named(tmp_path, capsys, monkeypatch) -> None:
    (tmp_path / "homefile").write_text("x")
    monkeypatch.setenv("SRI_HOME", str(tmp_path / "homefile"))
    for args in (["assets", "verify"], ["assets", "list"]):
        assert_one_line_error(run_cli(args, capsys), "is a file, not a folder")


def test_an_empty_sri_home_means_the_default(monkeypatch) -> None:
    from sri.data.assets import sri_home

    monkeypatch.setenv("SRI_HOME", "")
    assert sri_home() == Path.home() / ".cache" / "sri"
    monkeypatch.setenv("SRI_HOME", "rel/home")
    assert sri_home() == Path(os.getcwd()) / "rel" / "home"


def test_an_os_error_inside_safetensors_is_a_user_error() -> None:
    from sri.cli import _wrapped_os_error

    full = Exception("Error while serializing: I/O error: No space left on device (os error 28)")
    assert "the disk is full" in _wrapped_os_error(full)
    assert _wrapped_os_error(Exception("shape mismatch")) is None


def test_honour_umask_fixes_files_written_0600(tmp_path) -> None:
    from sri.io import honour_umask

    (tmp_path / "m").mkdir()
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(b"x")
    weights.chmod(0o600)
    old = os.umask(0o022)
    try:
        honour_umask(tmp_path / "m")
    finally:
        os.umask(old)
    assert stat.S_IMODE(weights.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "m").stat().st_mode) == 0o755


# ----------------------------------------------------------------------------------- 6. analysis and report
def test_report_refuses_an_edited_or_stale_analysis(tmp_path, capsys) -> None:
    rows = [_signal_row(i, label="harmless" if i % 2 else "harmful", refused=bool(i % 3)) for i in range(12)]
    _write_jsonl(tmp_path / "signals.jsonl", rows)
    assert run_cli(["analyze", str(tmp_path), "--bootstrap", "40"], capsys).code == 0
    analysis = json.loads((tmp_path / "analysis.json").read_text())
    (tmp_path / "analysis.json").write_text(json.dumps({**analysis, "flags": []}))
    assert_one_line_error(run_cli(["report", str(tmp_path)], capsys), "was changed after `sri analyze` wrote it")
    assert run_cli(["analyze", str(tmp_path), "--bootstrap", "40"], capsys).code == 0
    _write_jsonl(tmp_path / "signals.jsonl", rows[:-1])
    assert_one_line_error(run_cli(["report", str(tmp_path)], capsys), "analyses an earlier signals.jsonl")
    assert not (tmp_path / "report.html").exists()


@pytest.mark.parametrize("option", ["--lambda-c", "--lambda-r", "--lambda-dip"])
def test_analysis_thresholds_match_the_config_range(tmp_path, capsys, option) -> None:
    assert_one_line_error(run_cli(["analyze", str(tmp_path), option, "1"], capsys), "in (0, 1)")


def test_long_and_multi_line_labels_draw_without_warnings(tmp_path, capsys) -> None:
    from sri.report.mpl import tidy_text

    rows = [_signal_row(i, label="L" * 5000 if i % 2 else "two\nlines " * 300) for i in range(6)]
    signals = _write_jsonl(tmp_path / "s.jsonl", rows)
    res = run_cli(["plot", "--signals", str(signals), "--out", str(tmp_path / "p.png"),
                   "--title", "t\n" * 500], capsys)
    assert res.code == 0 and "Warning" not in res.err, res.err
    assert tidy_text("x" * 200, 10, 1) == "x" * 9 + "…"
    assert tidy_text("a\nb\nc", 10, 2) == "a\nb…"


# ----------------------------------------------------------------------------------- 7. guard, judges, attacks
def test_guard_refuses_an_empty_refusal_text(tmp_path, capsys) -> None:
    rows = [_signal_row(i) for i in range(12)]
    benign, calib = _write_jsonl(tmp_path / "b.jsonl", rows[:8]), _write_jsonl(tmp_path / "c.jsonl", rows[8:])
    res = run_cli(["guard", "fit", "--benign", str(benign), "--calibrate", str(calib), "--out", str(tmp_path / "g"),
                   "--refusal-text", " "], capsys)
    assert_one_line_error(res, "the refusal text is empty")
    assert not (tmp_path / "g").exists()


def test_judge_llm_names_a_request_that_is_not_text(tmp_path, capsys) -> None:
    rows = _write_jsonl(tmp_path / "j.jsonl", [{"prompt": "Say hi", "response": "hi", "meta": {"behavior": ["x"]}}])
    res = run_cli(["judge-llm", "--input", str(rows), "--out", str(tmp_path / "o.jsonl"), "-m", "no-such-model"],
                  capsys)
    assert_one_line_error(res, "'meta.behavior' is ['x'], not text")


def test_dija_refuses_an_autoregressive_target(smollm, tmp_path, capsys) -> None:
    prompts = _write_jsonl(tmp_path / "p.jsonl", [{"prompt": "do a bad thing"}])
    res = run_cli(["attack", "-a", "dija", "--prompts", str(prompts), "--out", str(tmp_path / "a.jsonl"),
                   "-m", "smollm2-135m-instruct"], capsys)  # no mask token: not a masked-diffusion model
    assert_one_line_error(res, "applies to masked-diffusion models only")
    assert not (tmp_path / "a.jsonl").exists()


# ---------------------------------------------------------------------------------------------- 8. dlm build
@pytest.mark.parametrize("kind", ["file", "foreign folder", "dot"])
def test_dlm_build_never_replaces_what_is_not_its_model(tmp_path, capsys, monkeypatch, kind) -> None:
    pairs = _write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": f"Say {i}", "response": f"{i}."} for i in range(4)])
    target = tmp_path / "out"
    if kind == "file":
        target.write_text("hello")
    else:
        target.mkdir()
        (target / "marker.txt").write_text("keep")
    if kind == "dot":
        monkeypatch.chdir(target)
    res = run_cli(["dlm", "build", "--base", "smollm2-135m-instruct", "--pairs", str(pairs), "--steps", "1",
                   "--no-gate", "--out", "." if kind == "dot" else str(target)], capsys)
    assert_one_line_error(res, "that is not a model built by `sri dlm build`")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "pairs.jsonl"]
    assert (target.read_text() == "hello") if kind == "file" else (target / "marker.txt").read_text() == "keep"


@pytest.mark.parametrize("field, value, match", [("label", ["x"], "'label' is ['x'], expected text"),
                                                 ("id", {"a": 1}, "'id' is {'a': 1}, expected text"),
                                                 ("id", "same", "is already used by row 1")])
def test_dlm_pairs_fields_are_checked(tmp_path, field, value, match) -> None:
    from sri.dlm.data import load_pairs

    pairs = _write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"Say {i}", "response": f"{i}.", field: value}
                                                for i in range(2)])
    with pytest.raises(SriError, match=match.replace("[", r"\[").replace("]", r"\]")):
        load_pairs(pairs)


def test_dlm_distill_refuses_more_prompts_than_the_split_holds(offline_data) -> None:
    from sri.dlm.data import DistillSpec, training_records

    with pytest.raises(SriError, match="asks for more than the .* harmless training prompts"):
        training_records(DistillSpec(n_harmless=2**70, n_harmful=1))
    with pytest.raises(SriError, match="asks for more than the .* harmful training prompts"):
        training_records(DistillSpec(n_harmless=1, n_harmful=100_000))


# ------------------------------------------------------------------------------------------ 9. trace folders
def test_a_trace_folder_with_no_shards_is_taken_over(tiny_llama, tmp_path) -> None:
    from sri.data.prompts import PromptRecord
    from sri.sampling import ARConfig
    from sri.tracing.tracer import trace_prompts

    records = [PromptRecord("a", "hello there", "harmless", "t")]
    out = tmp_path / "o"
    (out / "shards").mkdir(parents=True)
    (out / "run.json").write_text(json.dumps({"key": {"dtype": "bfloat16"}, "settings": {}}))  # a failed attempt
    store = trace_prompts(tiny_llama, records, out, sampler=ARConfig(steps=2), progress=False)
    assert [r["id"] for r in store.rows()] == ["a"]


def test_a_trace_that_fails_before_its_first_batch_leaves_no_folder(tiny_llama, tmp_path, monkeypatch) -> None:
    from sri.data.prompts import PromptRecord
    from sri.sampling import ARConfig
    from sri.tracing import tracer

    def no_cluster(execution):
        raise SriError("1 worker(s) × --gpus-per-worker 1e+308 need 1e+308 GPU(s), but the Ray cluster has 0")

    monkeypatch.setattr("sri.tracing.executors.make_executor", no_cluster)
    out = tmp_path / "o"
    with pytest.raises(SriError, match="need 1e"):
        tracer.trace_prompts(tiny_llama, [PromptRecord("a", "hello", "harmless", "t")], out,
                             sampler=ARConfig(steps=2), progress=False)
    assert not out.exists()  # the corrected command starts afresh (no run.json of the failed attempt)


# ------------------------------------------------------------------ the fifth round (158 inputs, 18 broke)
@pytest.mark.parametrize("device, match", [("meta", "is not supported"), ("xpu", "is not supported"),
                                           ("mps", "MPS is not available"), ("cuda:7", "cuda:7")])
def test_devices_this_machine_lacks_are_user_errors(device, match) -> None:
    import torch

    from sri.models import pick_device

    if device == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    with pytest.raises(SriError, match=match):
        pick_device(device)


def test_a_model_folder_with_truncated_weights_is_a_load_error(tiny_llama_dir, tmp_path, capsys) -> None:
    import shutil

    broken = shutil.copytree(tiny_llama_dir, tmp_path / "m")
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:2000])
    prompts = _write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hello"}])
    res = run_cli(["trace", "--model", str(broken), "--prompts", str(prompts), "--steps", "2",
                   "--out", str(tmp_path / "o")], capsys)
    assert_one_line_error(res, "could not load folder")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("label", [" harmful", " jailbreak ", "Harmful"])
def test_guard_benign_check_ignores_case_and_spaces(tmp_path, capsys, label) -> None:
    rows = [_signal_row(i) for i in range(12)]
    rows[0]["label"] = label
    benign, calib = _write_jsonl(tmp_path / "b.jsonl", rows[:8]), _write_jsonl(tmp_path / "c.jsonl", rows[8:])
    res = run_cli(["guard", "fit", "--benign", str(benign), "--calibrate", str(calib), "--out", str(tmp_path / "g")],
                  capsys)
    assert_one_line_error(res, "labelled harmful/jailbreak")


def test_csv_labels_lose_the_space_after_the_comma(tmp_path) -> None:
    from sri.data.prompts import load_prompts

    path = tmp_path / "p.csv"
    path.write_text("id,prompt,label\nz1,Say hi, harmful\n", encoding="utf-8")
    assert load_prompts(str(path))[0].label == "harmful"


def test_signals_of_two_models_in_one_file_are_refused(tmp_path, capsys) -> None:
    rows = [_signal_row(i, label="harmless" if i % 2 else "harmful") for i in range(6)]
    rows[3]["key"] = {**rows[3]["key"], "model": "other"}
    signals = _write_jsonl(tmp_path / "s.jsonl", rows)
    assert_one_line_error(run_cli(["plot", "--signals", str(signals), "--out", str(tmp_path / "p.png")], capsys),
                          "s.jsonl:4 was computed with another key than line 1 (differs in model)")
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "signals.jsonl").write_bytes(signals.read_bytes())
    assert_one_line_error(run_cli(["analyze", str(tmp_path / "r")], capsys), "differs in model")
    assert not (tmp_path / "p.png").exists() and not (tmp_path / "r" / "analysis.json").exists()


def test_ray_options_without_the_ray_backend_are_refused(tmp_path, capsys) -> None:
    prompts = _write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hello"}])
    res = run_cli(["trace", "--prompts", str(prompts), "--steps", "2", "--workers", "4", "--gpus-per-worker", "1",
                   "--out", str(tmp_path / "o")], capsys)
    assert_one_line_error(res, "--workers, --gpus-per-worker apply to --backend ray only")
    assert not (tmp_path / "o").exists()


def test_prompt_ids_must_be_unique_across_the_sets_of_a_run(tmp_path, capsys) -> None:
    good = _write_jsonl(tmp_path / "good.jsonl", [{"id": f"b{i}", "prompt": f"Name a fruit number {i}"}
                                                  for i in range(4)])
    bad = _write_jsonl(tmp_path / "bad.jsonl", [{"id": f"b{i}", "prompt": f"Do harm number {i}"} for i in range(4)])
    cfg = _config(tmp_path, **{"prompts.anchor_harmless.dataset": str(good), "prompts.harmless.dataset": str(good),
                               "prompts.anchor_harmful.dataset": str(bad), "prompts.harmful.dataset": str(bad)})
    assert_one_line_error(run_cli(["validate", str(cfg)], capsys), "is also an id of prompts.anchor_harmless")


def test_a_resumed_run_refuses_prompt_sets_that_changed(tmp_path) -> None:
    from types import SimpleNamespace

    from sri.data.prompts import PromptRecord
    from sri.pipeline.stages import write_prompt_sets

    run = SimpleNamespace(dir=tmp_path)
    first = {"harmless": [PromptRecord("g0", "Name a fruit", "harmless", "f")],
             "harmful": [PromptRecord("b0", "Do harm", "harmful", "f")]}
    write_prompt_sets(run, first)
    write_prompt_sets(run, first)  # the same sets: a plain resume
    (tmp_path / "prompts" / "harmful.jsonl").unlink()
    edited = {"harmless": [PromptRecord("g0", "Name a tree", "harmless", "f")], "harmful": first["harmful"]}
    with pytest.raises(SriError, match="prompt set harmless is not the one this run started with .*'g0'"):
        write_prompt_sets(run, edited)
    assert not (tmp_path / "prompts" / "harmful.jsonl").exists()  # nothing written when one set changed


@pytest.mark.parametrize("text, match", [("# only a comment\n", "the file is empty"), ("- a\n- b\n", "not a list"),
                                         ("42\n", "not a single value (42)")])
def test_config_files_that_are_not_mappings(tmp_path, capsys, text, match) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    assert_one_line_error(run_cli(["validate", str(path)], capsys), match)


def test_a_failed_dlm_build_does_not_block_the_corrected_one(smollm, tmp_path, capsys) -> None:
    pairs = _write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": f"Say {i}", "response": f"{i}."} for i in range(4)])
    res = run_cli(["dlm", "build", "--pairs", str(pairs), "--out", str(tmp_path / "m"), "--steps", "1", "--no-gate",
                   "--mask-token", "<not_a_token>"], capsys)
    assert res.code == 2 and res.err.strip().splitlines()[-1].startswith("error: mask token '<not_a_token>' is not"), \
        res.err  # (after the "• converting …" log line)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.jsonl"]  # no .m.build left to block the next try


# ------------------------------------------------------------------ the sixth round (50 inputs, 11 broke)
def test_sampled_traces_do_not_depend_on_the_batch(tiny_llama, tmp_path) -> None:
    from sri.data.prompts import PromptRecord
    from sri.sampling import ARConfig
    from sri.tracing.tracer import trace_prompts

    records = [PromptRecord(f"p{i}", f"tell me about topic number {i}" + " please" * i, "harmless", "t")
               for i in range(4)]
    sampler = ARConfig(steps=6, temperature=1.0, seed=7)
    by_four = trace_prompts(tiny_llama, records, tmp_path / "a", sampler=sampler, batch_size=4, progress=False)
    by_two = trace_prompts(tiny_llama, records, tmp_path / "b", sampler=sampler, batch_size=2, progress=False)
    tokens = {r["id"]: r["token_ids"] for r in by_four.rows()}
    assert tokens == {r["id"]: r["token_ids"] for r in by_two.rows()}
    assert len({tuple(t) for t in tokens.values()}) > 1  # really sampled, not one fixed answer


def test_a_resumed_trace_refuses_another_label_or_text(tiny_llama, tmp_path) -> None:
    from sri.data.prompts import PromptRecord
    from sri.sampling import ARConfig
    from sri.tracing.tracer import trace_prompts

    first = [PromptRecord("a", "hello there", "harmless", "t")]
    trace_prompts(tiny_llama, first, tmp_path / "o", sampler=ARConfig(steps=2), progress=False)
    more = [PromptRecord("a", "hello there", "harmful", "t"), PromptRecord("b", "more", "harmful", "t")]
    with pytest.raises(SriError, match=r"already holds prompt 'a' with another label \('harmless' there"):
        trace_prompts(tiny_llama, more, tmp_path / "o", sampler=ARConfig(steps=2), progress=False)
    edited = [PromptRecord("a", "hello again", "harmless", "t")]
    with pytest.raises(SriError, match="with another prompt text"):
        trace_prompts(tiny_llama, edited, tmp_path / "o", sampler=ARConfig(steps=2), progress=False)


def test_guard_calibration_must_hold_other_prompts_not_just_other_ids(tmp_path, capsys) -> None:
    rows = [_signal_row(i) for i in range(12)]
    renamed = [{**r, "id": f"copy-{r['id']}"} for r in rows[:4]]
    benign, calib = _write_jsonl(tmp_path / "b.jsonl", rows), _write_jsonl(tmp_path / "c.jsonl", renamed)
    res = run_cli(["guard", "fit", "--benign", str(benign), "--calibrate", str(calib), "--out", str(tmp_path / "g")],
                  capsys)
    assert_one_line_error(res, "also in the benign fit set (e.g. 'copy-p0': the same id or prompt)")


def test_anchors_file_of_other_settings_is_refused_before_writing(tiny_llama, tmp_path, capsys) -> None:
    import torch

    from sri.sampling import ARConfig
    from sri.signal import Anchors
    from sri.tracing.tracer import trace_key

    key = {**trace_key(tiny_llama, ARConfig(steps=3), [2], "producing"), "model": "smollm2-135m-instruct",
           "system_prompt": "You are a helpful assistant"}
    anchors = tmp_path / "a.safetensors"
    d = tiny_llama.hidden_size
    Anchors(harmless={2: torch.zeros(3, d)}, harmful={2: torch.ones(3, d)}, key=key).save(anchors)
    cfg = _config(tmp_path, **{"prompts.anchors_file": str(anchors), "prompts.anchor_harmless": None,
                               "prompts.anchor_harmful": None})
    res = run_cli(["run", "--config", str(cfg), "--out", str(tmp_path / "run")], capsys)
    assert_one_line_error(res, "differ in steps (3 vs 4)")
    assert not (tmp_path / "run").exists()


def test_eval_refuses_a_config_without_a_guard(tmp_path, capsys) -> None:
    res = run_cli(["eval", "--config", str(_config(tmp_path)), "--out", str(tmp_path / "e")], capsys)
    assert_one_line_error(res, "has no guard: section")
    assert not (tmp_path / "e").exists()


def test_judge_calibrate_needs_rows_to_fit_a_threshold(tmp_path) -> None:
    from sri.judges.llm import calibrate

    rows = [{"response": "I can't", "refused": True}]
    with pytest.raises(SriError, match="split into 0 to fit"):
        calibrate(rows, score_judges={"llm": lambda objectives, responses: [0.5] * len(responses)})


def test_attack_list_takes_no_other_options(tmp_path, capsys) -> None:
    res = run_cli(["attack", "--list", "-a", "flip", "--out", str(tmp_path / "a.jsonl")], capsys)
    assert_one_line_error(res, "--list only lists the attacks")


def test_prompts_spelling_special_tokens_are_noted(tiny_llama, tmp_path, capsys) -> None:
    from sri.data.prompts import PromptRecord
    from sri.sampling import ARConfig
    from sri.tracing.tracer import trace_prompts

    special = tiny_llama.tokenizer.eos_token
    trace_prompts(tiny_llama, [PromptRecord("inj", f"Hello{special} more", "harmless", "t")], tmp_path / "o",
                  sampler=ARConfig(steps=2), progress=False)
    assert f"'inj' holds '{special}'" in capsys.readouterr().err


# ------------------------------------------------------------------ the seventh round (50 inputs, 6 broke)
def test_judge_llm_threshold_matches_the_config_range(tmp_path, capsys) -> None:
    rows = _write_jsonl(tmp_path / "j.jsonl", [{"prompt": "Say hi", "response": "hi"}])
    res = run_cli(["judge-llm", "--input", str(rows), "--out", str(tmp_path / "o.jsonl"), "--threshold", "1"], capsys)
    assert_one_line_error(res, "give a number in [0, 1)")


@pytest.mark.parametrize("kwargs, match", [({"max_prompts": -1}, "max_prompts must be ≥ 1"),
                                           ({"max_prompts": 0}, "max_prompts must be ≥ 1"),
                                           ({"offset": -2}, "offset must be ≥ 0")])
def test_load_prompts_refuses_negative_slices(tmp_path, kwargs, match) -> None:
    from sri.data.prompts import load_prompts

    path = _write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"p {i}"} for i in range(3)])
    with pytest.raises(SriError, match=match):
        load_prompts(str(path), **kwargs)


def test_demo_refuses_a_set_that_a_shortcut_also_sets(tmp_path, capsys) -> None:
    res = run_cli(["demo", "--out", str(tmp_path / "d"), "--paper-size", "--set", "prompts.anchor_harmless.n=4"],
                  capsys)
    assert_one_line_error(res, "--set prompts.anchor_harmless.n and --paper-size both set")
    res = run_cli(["demo", "--out", str(tmp_path / "d"), "--model", "x", "--set", "model=y"], capsys)
    assert_one_line_error(res, "--set model and --model both set model")
    assert not (tmp_path / "d").exists()


def test_tracing_no_prompts_writes_nothing(tiny_llama, tmp_path) -> None:
    from sri.sampling import ARConfig
    from sri.tracing.tracer import trace_prompts

    with pytest.raises(SriError, match="no prompts to trace"):
        trace_prompts(tiny_llama, [], tmp_path / "o", sampler=ARConfig(steps=2), progress=False)
    assert not (tmp_path / "o").exists()



# ------------------------------------------------------------------ the eighth round (50 inputs, 10 broke)
def test_judge_calibrate_keyword_only_takes_no_model(capsys) -> None:
    res = run_cli(["judge-calibrate", "--keyword-only", "-m", "qwen2.5-coder-0.5b-instruct"], capsys)
    assert_one_line_error(res, "--keyword-only calibrates no LLM judge")


def test_a_masked_diffusion_checkpoint_is_refused_by_the_ar_loader(tiny_llama_dir, tmp_path) -> None:
    import shutil

    from sri.models import load_model

    folder = shutil.copytree(tiny_llama_dir, tmp_path / "dlm")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "sri_family": "dream", "is_causal": False}))
    with pytest.raises(SriError, match="is a masked-diffusion model .* --sampler diffusion"):
        load_model(str(folder), device="cpu", dtype="fp32")


@pytest.mark.parametrize("kwargs, match", [({"lambda_c": float("nan")}, "lambda_c must be a number strictly"),
                                           ({"lambda_r": [2.0]}, "lambda_r must be a number strictly"),
                                           ({"lambda_r": [0.1, 0.1000001]}, "got 0.1, 0.1000001, named 0.1, 0.1"),
                                           ({"lambda_r": []}, "lambda_r must list at least one threshold"),
                                           ({"resamples": -5}, "resamples must be a whole number")])
def test_analysis_settings_are_checked_in_the_python_api_too(tmp_path, kwargs, match) -> None:
    from sri.stats.recovery import analyze_run

    _write_jsonl(tmp_path / "signals.jsonl", [_signal_row(i) for i in range(6)])
    with pytest.raises(SriError, match=match):
        analyze_run(tmp_path, **kwargs)
    assert not (tmp_path / "analysis.json").exists()


def test_a_run_config_changed_in_python_is_validated_again(tmp_path) -> None:
    from sri.pipeline import parse_config, run

    cfg = parse_config(yaml.safe_load(CONFIG))
    bad = cfg.model_copy(update={"batch_size": 0})  # model_copy does not validate
    with pytest.raises(SriError, match="batch_size: Input should be greater than or equal to 1"):
        run(bad, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_report_captions_use_the_analysis_thresholds(tmp_path, capsys) -> None:
    rows = [_signal_row(i, label="harmless" if i % 2 else "harmful", refused=bool(i % 3)) for i in range(12)]
    _write_jsonl(tmp_path / "signals.jsonl", rows)
    assert run_cli(["analyze", str(tmp_path), "--lambda-c", "0.9", "--lambda-r", "0.2", "--lambda-r", "0.05",
                    "--bootstrap", "40"], capsys).code == 0
    assert run_cli(["report", str(tmp_path)], capsys).code == 0
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "at λ_c = 0.9 and λ_r ∈ {0.2, 0.05}" in html and "λ_c = 0.5 and" not in html


@pytest.mark.parametrize("where, match", [({"functional_category": "standard"}, "has the field 'functional_category'"),
                                          ({"category": "no-such-category"}, "has category = 'no-such-category'")])
def test_a_where_filter_that_matches_nothing_names_the_field_or_value(tmp_path, capsys, where, match) -> None:
    cfg = _config(tmp_path, **{"prompts.harmful.where": where})
    assert_one_line_error(run_cli(["validate", str(cfg)], capsys), match)


def test_dlm_build_with_no_pair_that_fits_leaves_nothing(smollm, tmp_path, capsys) -> None:
    pairs = _write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": f"Say {i}", "response": "a long answer " * 6}
                                                    for i in range(3)])
    res = run_cli(["dlm", "build", "--pairs", str(pairs), "--out", str(tmp_path / "m"), "--steps", "1", "--no-gate",
                   "--gen-length", "4", "--batch-size", "1"], capsys)
    assert res.code == 2 and "none of the 3 training pairs fits --gen-length 4" in res.err.splitlines()[-1], res.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.jsonl"]  # no .m.build (converted model) left


# ------------------------------------------------------------------ the ninth round (50 inputs, 9 broke)
@pytest.mark.parametrize("form", ["--out={}/", "--out {}/"])
def test_an_output_file_path_ending_in_a_slash_is_a_folder(tmp_path, capsys, form) -> None:
    rows = _write_jsonl(tmp_path / "r.jsonl", [{"response": "I can't help"}])
    target = tmp_path / "judged"
    res = run_cli(["judge", "--input", str(rows), *form.format(target).split(" ")], capsys)
    assert_one_line_error(res, "is a folder, but a file is expected")
    assert not target.exists()


def test_attack_list_keeps_every_cell_in_a_file(capsys) -> None:
    res = run_cli(["attack", "--list"], capsys)
    assert res.code == 0 and "target_text" in res.out and "random_search" in res.out, res.out


def test_a_reused_anchors_file_is_one_file_however_named_and_must_not_change(tiny_llama, tmp_path,
                                                                            monkeypatch) -> None:
    from types import SimpleNamespace

    import torch

    from sri.pipeline import parse_config
    from sri.pipeline.stages import anchors as anchors_stage
    from sri.sampling import ARConfig
    from sri.signal import Anchors
    from sri.tracing.tracer import trace_key

    monkeypatch.chdir(tmp_path)
    relative = parse_config({**yaml.safe_load(CONFIG), "prompts": {**yaml.safe_load(CONFIG)["prompts"],
                                                                    "anchor_harmless": None, "anchor_harmful": None,
                                                                    "anchors_file": "a.safetensors"}})
    assert relative.prompts.anchors_file == str(tmp_path / "a.safetensors")
    key = trace_key(tiny_llama, ARConfig(steps=3), [2], "producing")
    d = tiny_llama.hidden_size
    Anchors(harmless={2: torch.zeros(3, d)}, harmful={2: torch.ones(3, d)}, key=key).save(tmp_path / "a.safetensors")
    run = SimpleNamespace(cfg=relative, prov={}, dir=tmp_path / "run")
    anchors_stage(run, {})
    assert len(run.prov["anchors"]["sha256"]) == 64
    Anchors(harmless={2: torch.ones(3, d)}, harmful={2: torch.zeros(3, d)}, key=key).save(tmp_path / "a.safetensors")
    with pytest.raises(SriError, match="is not the file this run started with"):
        anchors_stage(run, {})


# ------------------------------------------------------------------- round 10 (50 inputs, 4 kinds broke)
def test_signals_carry_their_anchors_and_a_guard_refuses_other_anchors(tiny_llama, tmp_path, capsys) -> None:
    import torch

    from sri.data.prompts import PromptRecord
    from sri.guard import Guard, fit_guard
    from sri.sampling import ARConfig
    from sri.signal import Anchors, compute_signals
    from sri.tracing.tracer import trace_prompts

    records = [PromptRecord(f"p{i}", f"say something about thing {i}" + " now" * i, "harmless", "t")
               for i in range(12)]
    store = trace_prompts(tiny_llama, records, tmp_path / "t", sampler=ARConfig(steps=3), progress=False)
    key = {**store.key, "layers": store.layers}
    gen = torch.Generator().manual_seed(0)
    d, layer = tiny_llama.hidden_size, store.layers[0]

    def anchors() -> Anchors:  # float64 in memory: the digest must not depend on the in-memory dtype
        return Anchors(harmless={layer: torch.randn(3, d, generator=gen, dtype=torch.float64)},
                       harmful={layer: torch.randn(3, d, generator=gen, dtype=torch.float64)}, key=key)

    a, b = anchors(), anchors()
    assert Anchors.load(a.save(tmp_path / "a.safetensors")).digest == a.digest != b.digest
    b.save(tmp_path / "b.safetensors")
    rows_a, rows_b = compute_signals(a, store), compute_signals(b, store)
    assert rows_a[0]["key"]["anchors"] == a.digest and rows_b[0]["key"]["anchors"] == b.digest
    with pytest.raises(SriError, match="the signals were computed with other anchors"):
        fit_guard(rows_a[:8], rows_a[8:], detector="knn", anchors=b)
    guard = fit_guard(rows_a[:8], rows_a[8:], detector="knn", anchors=a)
    with pytest.raises(SriError, match=r"differ in anchors .*compute both signals with the same anchor file"):
        guard.check_key(rows_b[0]["key"])
    with pytest.raises(SriError, match="mix signals with different keys"):  # one file, two anchors
        fit_guard(rows_a[:4] + rows_b[4:8], rows_a[8:], detector="knn")
    # through the CLI: fit with the wrong anchor file, then score signals of other anchors
    fit = _write_jsonl(tmp_path / "fit.jsonl", rows_a[:8])
    cal = _write_jsonl(tmp_path / "cal.jsonl", rows_a[8:])
    other = _write_jsonl(tmp_path / "other.jsonl", rows_b)
    args = ["guard", "fit", "--benign", str(fit), "--calibrate", str(cal), "--detector", "knn", "--out"]
    assert_one_line_error(run_cli([*args, str(tmp_path / "g"), "--anchors", str(tmp_path / "b.safetensors")], capsys),
                          "computed with other anchors")
    assert not (tmp_path / "g").exists()
    assert run_cli([*args, str(tmp_path / "g"), "--anchors", str(tmp_path / "a.safetensors")], capsys).code == 0
    assert Guard.load(tmp_path / "g").key["anchors"] == a.digest
    assert_one_line_error(run_cli(["guard", "score", "--guard", str(tmp_path / "g"), "--signals", str(other)],
                                  capsys), "differ in anchors")


def test_a_link_does_not_lead_an_output_into_a_managed_folder(tmp_path, capsys) -> None:
    from sri.io import check_user_dir, check_user_file

    trace = tmp_path / "trace"
    (trace / "shards").mkdir(parents=True)
    (trace / "run.json").write_text("{}", encoding="utf-8")
    (tmp_path / "link").symlink_to(trace / "shards")
    for check in (check_user_dir, check_user_file):
        with pytest.raises(SriError, match="is inside the trace folder"):
            check(tmp_path / "link" / "sub")
    texts = _write_jsonl(tmp_path / "in.jsonl", [{"response": "I cannot help."}])
    assert_one_line_error(run_cli(["judge", "--input", str(texts), "--out", str(tmp_path / "link" / "j.jsonl")],
                                  capsys), "is inside the trace folder")
    assert sorted(p.name for p in (trace / "shards").iterdir()) == []


def test_analyze_on_a_folder_without_signals_gives_a_fix_that_works(tmp_path, capsys) -> None:
    trace = tmp_path / "trace"
    (trace / "shards").mkdir(parents=True)
    (trace / "run.json").write_text("{}", encoding="utf-8")
    for command in ("analyze", "report"):
        res = run_cli([command, str(trace)], capsys)
        assert_one_line_error(res, "compute signals into a folder of your own")
        assert f"--out {trace / 'signals.jsonl'}" not in res.err  # sri would refuse that path
    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.yaml", "provenance.json"):
        (run / name).write_text("{}", encoding="utf-8")
    assert_one_line_error(run_cli(["analyze", str(run)], capsys), "finish the run first")
    plain = tmp_path / "plain"
    plain.mkdir()
    assert_one_line_error(run_cli(["analyze", str(plain)], capsys), f"sri signal --out {plain / 'signals.jsonl'}")


def test_dlm_gate_names_a_model_that_is_not_diffusion_before_asking_for_its_base(smollm, capsys) -> None:
    # an AR model without sri_dlm.json: the fix is another model, not --base
    assert_one_line_error(run_cli(["dlm", "gate", "smollm2-135m-instruct", "--steps", "3", "--n-prompts", "1"],
                                  capsys), "is not a masked-diffusion model")


def test_judge_calibrate_names_the_labels_that_lack_human_labels(capsys) -> None:
    assert_one_line_error(run_cli(["judge-calibrate", "--keyword-only", "--labels", "harmless"], capsys),
                          "--labels harmless: row 1 needs a 'response' text and a boolean human 'refused' label")


@pytest.mark.parametrize("argv, says", [(["trace", "--out", "x"], "completed work is kept"),
                                        (["--debug", "dlm", "build"], "completed work is kept"),
                                        (["attack", "-a", "pair"], "this command does not resume")])
def test_an_interruption_says_whether_the_command_resumes(monkeypatch, capsys, argv, says) -> None:
    import sys

    from sri.cli import _interrupted

    monkeypatch.setattr(sys, "argv", ["sri", *argv])
    with pytest.raises(SystemExit) as stopped:
        _interrupted()
    assert stopped.value.code == 130 and says in capsys.readouterr().err


def test_a_managed_folder_given_as_an_output_file_suggests_a_path_outside_it(tmp_path, capsys) -> None:
    trace = tmp_path / "trace"
    (trace / "shards").mkdir(parents=True)
    (trace / "run.json").write_text("{}", encoding="utf-8")
    texts = _write_jsonl(tmp_path / "in.jsonl", [{"response": "I cannot help."}])
    res = run_cli(["judge", "--input", str(texts), "--out", str(trace)], capsys)
    assert_one_line_error(res, f"give a file path outside it such as {tmp_path / 'trace-out.jsonl'}")
    assert run_cli(["judge", "--input", str(texts), "--out", str(tmp_path / "trace-out.jsonl")], capsys).code == 0


# ------------------------------------------------------------------- round 11 (50 inputs, 3 broke)
def test_the_dlm_mask_token_must_be_an_unused_special_token(smollm, tmp_path, capsys) -> None:
    from sri.dlm.convert import pick_mask_token

    with pytest.raises(SriError, match="'hello' is an ordinary vocabulary token"):
        pick_mask_token(smollm.tokenizer, "hello")
    with pytest.raises(SriError, match="is part of the chat template"):
        pick_mask_token(smollm.tokenizer, "<|im_start|>")
    assert pick_mask_token(smollm.tokenizer, "<empty_output>")[0] == "<empty_output>"
    pairs = _write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": f"Say {i}", "response": f"{i}."} for i in range(4)])
    assert_one_line_error(run_cli(["dlm", "build", "--pairs", str(pairs), "--out", str(tmp_path / "m"), "--steps", "1",
                                   "--no-gate", "--mask-token", "hello"], capsys), "ordinary vocabulary token")
    assert not (tmp_path / "m").exists()


def test_a_hint_naming_an_option_the_command_lacks_says_where_it_is(smollm, tmp_path, capsys) -> None:
    import shutil

    from sri.data.assets import model_asset

    remote = tmp_path / "remote"
    remote.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):  # a tokenizer that loads; the model needs its code
        shutil.copy(model_asset("smollm2-135m-instruct").path / name, remote / name)
    (remote / "config.json").write_text(json.dumps({"model_type": "xmodel", "auto_map": {
        "AutoConfig": "configuration_x.XConfig", "AutoModelForCausalLM": "modeling_x.XForCausalLM"}}), encoding="utf-8")
    rows = _write_jsonl(tmp_path / "in.jsonl", [{"prompt": "hi", "response": "ok"}])
    res = run_cli(["judge-llm", "-m", str(remote), "--input", str(rows), "--out", str(tmp_path / "o.jsonl")], capsys)
    assert_one_line_error(res, "pass --trust-remote-code")
    assert "(--trust-remote-code is an option of `sri trace`, not of `sri judge-llm`)" in res.err
    cfg = _config(tmp_path, model=str(remote))
    res = run_cli(["validate", str(cfg)], capsys)
    assert_one_line_error(res, "(in a run config --trust-remote-code is the field trust_remote_code)")
    # options inside a quoted command belong to it: no note
    trace = tmp_path / "trace"
    (trace / "shards").mkdir(parents=True)
    (trace / "run.json").write_text("{}", encoding="utf-8")
    assert "option of" not in run_cli(["analyze", str(trace)], capsys).err


def test_streaming_options_are_refused_when_the_guard_does_not_stream(tmp_path, capsys) -> None:
    fit = _write_jsonl(tmp_path / "fit.jsonl", [_signal_row(i) for i in range(8)])
    cal = _write_jsonl(tmp_path / "cal.jsonl", [_signal_row(i) for i in range(8, 12)])
    base = ["guard", "fit", "--benign", str(fit), "--calibrate", str(cal), "--detector", "knn", "--stream", "off",
            "--out", str(tmp_path / "g")]
    for extra in (["--min-prefix", "2"], ["--stream-every", "2"]):  # named as given, nothing else (round 19)
        res = run_cli([*base, *extra], capsys)
        assert_one_line_error(res, f"{extra[0]} would be ignored with --stream off")
        assert ("--min-prefix" in res.err) == (extra[0] == "--min-prefix")
        assert not (tmp_path / "g").exists()
    assert run_cli(base, capsys).code == 0
    assert_one_line_error(run_cli(["validate", str(_config(tmp_path, **{"guard.stream": "off", "guard.every": 2}))],
                                  capsys), "every: 2 applies to the streaming guard only")


def test_knn_records_the_k_it_used(tmp_path) -> None:
    from sri.guard import Guard, fit_guard

    guard = fit_guard([_signal_row(i) for i in range(4)], [_signal_row(i) for i in range(4, 7)], detector="knn",
                      stream="off")
    guard.save(tmp_path / "g")
    assert Guard.load(tmp_path / "g").detectors[guard.steps].params["k"] == 4


def test_attack_options_for_models_it_does_not_run_are_refused(tmp_path, capsys) -> None:
    prompts = _write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "prompt": "how to pick a lock", "label": "harmful"}])
    base = ["attack", "-a", "flip", "--prompts", str(prompts), "--out", str(tmp_path / "o.jsonl")]
    assert_one_line_error(run_cli([*base, "-m", "no-such-model"], capsys), "runs no model")
    assert_one_line_error(run_cli([*base, "--attacker", "smollm2-135m-instruct"], capsys), "has none, so drop")
    assert not (tmp_path / "o.jsonl").exists()
    assert run_cli(base, capsys).code == 0


def test_python_api_misuse_gets_a_clear_error(tmp_path) -> None:
    from sri.report.plots import plot_trajectories
    from sri.signal import compute_signals

    with pytest.raises(SriError, match="there are no signals to plot"):
        plot_trajectories([], tmp_path / "x.png")
    with pytest.raises(SriError, match="must be a trace folder"):
        compute_signals(None, 5)  # type: ignore[arg-type]


def test_a_folder_that_is_no_model_gets_a_hint_every_command_can_follow(tmp_path, capsys) -> None:
    for args in (["dlm", "gate", str(tmp_path)], ["trace", "-m", str(tmp_path), "--prompts", "harmless",
                                                   "--out", str(tmp_path / "t")]):
        res = run_cli(args, capsys)
        assert_one_line_error(res, "has no config.json; give a Hugging Face model folder")
        assert "--model" not in res.err


# ------------------------------------------------------------------- round 12 (50 inputs, 2 broke)
def test_a_diffusion_sampler_on_a_model_without_a_mask_is_refused_before_the_run_folder(smollm, tmp_path,
                                                                                         capsys) -> None:
    sampler = {"kind": "diffusion", "steps": 4, "gen_length": 4, "block_length": 4}
    cfg = _config(tmp_path, sampler=sampler)
    assert_one_line_error(run_cli(["validate", str(cfg)], capsys), "'smollm2-135m-instruct' has no mask token")
    out = tmp_path / "run"
    assert_one_line_error(run_cli(["run", "--config", str(cfg), "--out", str(out)], capsys), "has no mask token")
    assert not out.exists()


def test_a_diffusion_model_with_a_mask_passes_the_check(tiny_llama_dir) -> None:
    from sri.models import check_model

    check_model(str(tiny_llama_dir), diffusion=True)  # the byte tokenizer declares a mask token


@pytest.mark.parametrize("value", ["abc", "-5", "0", "nan", "inf"])
def test_a_bad_progress_interval_is_refused_before_any_command_runs(monkeypatch, capsys, value) -> None:
    monkeypatch.setenv("SRI_PROGRESS_INTERVAL", value)
    assert_one_line_error(run_cli(["ls", "models"], capsys), "SRI_PROGRESS_INTERVAL is")
    monkeypatch.setenv("SRI_PROGRESS_INTERVAL", "")
    assert run_cli(["ls", "models"], capsys).code == 0


def test_judge_names_a_field_that_is_not_text(tmp_path, capsys) -> None:
    rows = _write_jsonl(tmp_path / "s.jsonl", [_signal_row(0)])
    assert_one_line_error(run_cli(["judge", "--input", str(rows), "--field", "sri"], capsys),
                          "row 1 has a list, not text, in field 'sri'")
    assert_one_line_error(run_cli(["judge", "--input", str(rows), "--field", "nope"], capsys),
                          "row 1 has no field 'nope'")


def test_every_model_a_run_names_is_checked_before_the_run_folder(tmp_path, capsys) -> None:
    for change in ({"judge.model": "nonexistent-judge"},
                   {"attacker": "nonexistent-judge", "attacks": [{"name": "pair", "n": 1}]}):
        field = next(iter(change))
        cfg = _config(tmp_path, **change)
        assert_one_line_error(run_cli(["validate", str(cfg)], capsys), f"{field}: model 'nonexistent-judge' is unknown")
        assert_one_line_error(run_cli(["run", "--config", str(cfg), "--out", str(tmp_path / "r")], capsys),
                              f"{field}: model")
        assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------- round 13 (50 inputs, 1 broke)
def test_a_refused_run_folder_gets_no_lock_file(tmp_path, capsys) -> None:
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine", encoding="utf-8")
    assert_one_line_error(run_cli(["run", "--config", str(_config(tmp_path)), "--out", str(folder)], capsys),
                          "exists and is not a run folder")
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]


def test_signal_rows_must_have_as_many_values_as_their_key_says(tmp_path, capsys) -> None:
    run = tmp_path / "r"
    run.mkdir()
    rows = [_signal_row(i) for i in range(6)]
    rows[0] = {**rows[0], "sri": rows[0]["sri"][:2], "text_signal": [1, 1]}
    _write_jsonl(run / "signals.jsonl", rows)
    assert_one_line_error(run_cli(["analyze", str(run)], capsys),
                          "signals.jsonl:1: 'sri' has 2 steps but the row's key says steps = 4")
    assert not (run / "analysis.json").exists()


def test_a_file_where_a_run_writes_a_folder_is_named_with_the_fix(tmp_path, capsys) -> None:
    run = tmp_path / "r"
    run.mkdir()
    _write_jsonl(run / "signals.jsonl", [_signal_row(i) for i in range(6)])
    (run / "figures").write_text("not a folder", encoding="utf-8")
    assert_one_line_error(run_cli(["report", str(run)], capsys),
                          "figures is a file, but sri writes its figures/ there as a folder; move it aside")


def test_command_line_bytes_the_locale_cannot_decode_are_named_as_such(capsys) -> None:
    assert_one_line_error(run_cli(["judge", "Lo siento \udce2\udc9c\udc93"], capsys),
                          "which is how Python passes command-line bytes")
    assert_one_line_error(run_cli(["judge", "half a pair \ud83d"], capsys), "both halves of a surrogate pair")


def test_python_api_arguments_are_checked_like_the_cli(tmp_path) -> None:
    import numpy as np

    from sri.data.prompts import load_prompts
    from sri.guard import fit_guard
    from sri.signal import fit_anchors

    for value in (2.5, True):
        with pytest.raises(SriError, match="max_prompts must be a whole number"):
            load_prompts("harmless", max_prompts=value)
    with pytest.raises(SriError, match="must be a trace folder .*not list"):
        fit_anchors([], [])  # type: ignore[arg-type]
    guard = fit_guard([_signal_row(i) for i in range(8)], [_signal_row(i) for i in range(8, 12)], detector="knn")
    with pytest.raises(SriError, match=r"values outside \[0, 1\]"):
        guard.score(np.array([[5.0, -3.0, 7.0, 1e9]]))
    with pytest.raises(SriError, match=r"values outside \[0, 1\]"):
        guard.first_flag(np.array([[5.0, -3.0, 7.0, 1e9]]))


# ------------------------------------------------------------------- round 14 (50 inputs, 6 broke)
def test_the_leftmost_gen_length_hint_can_be_followed() -> None:
    from sri.sampling import DiffusionConfig

    with pytest.raises(SriError, match="set gen-length to 4, or use the diffusion-ar sampler") as raised:
        DiffusionConfig(steps=4, gen_length=128, remasking="leftmost")
    assert "drop --gen-length" not in str(raised.value)


def test_answered_prompts_of_other_labels_are_not_called_complied_harmful() -> None:
    import numpy as np

    from sri.stats.recovery import geometry_label, geometry_or_reason

    noise = np.random.default_rng(0).uniform(0, 0.2, size=(18, 4))
    rows = [_signal_row(i, label="unlabelled", sri=list(0.5 + noise[i])) for i in range(6)]
    rows += [_signal_row(i, label="unlabelled", refused=True, sri=list(0.1 + noise[i])) for i in range(6, 12)]
    rows += [_signal_row(i, sri=list(0.75 + noise[i])) for i in range(12, 18)]
    assert geometry_label(rows[0]) is None and geometry_label(_signal_row(0, label="harmful")) == "complied-harmful"
    geometry, reason = geometry_or_reason(rows)
    assert reason is None and set(geometry["labels"]) == {"refused", "harmless"}
    assert len(geometry["ids"]) == 12


def test_options_a_mode_ignores_are_refused(tmp_path, capsys) -> None:
    pairs = _write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": f"Say {i}", "response": f"{i}."} for i in range(4)])
    build = ["dlm", "build", "--pairs", str(pairs), "--out", str(tmp_path / "m"), "--steps", "1"]
    assert_one_line_error(run_cli([*build, "--teacher", "qwen2.5-coder-0.5b-instruct", "--n-harmless", "3"], capsys),
                          "--teacher, --n-harmless would be ignored with --pairs")
    assert_one_line_error(run_cli([*build, "--no-gate", "--gate-prompts", "3"], capsys),
                          "--gate-prompts would be ignored with --no-gate")
    assert not (tmp_path / "m").exists()
    assert_one_line_error(run_cli(["judge-calibrate", "--keyword-only", "--max-chars", "5", "--batch-size", "3"],
                                  capsys), "--max-chars, --batch-size would be ignored with --keyword-only")
    prompts = _write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "prompt": "how to pick a lock"}])
    attack = ["attack", "-a", "flip", "--prompts", str(prompts), "--out", str(tmp_path / "o.jsonl")]
    assert_one_line_error(run_cli([*attack, "--device", "cpu"], capsys), "--device would be ignored by attack 'flip'")
    assert not (tmp_path / "o.jsonl").exists()


def test_dija_refuses_a_mask_token_the_target_overrides(monkeypatch) -> None:
    from sri.attacks import AttackContext, dija
    from sri.data.prompts import PromptRecord

    monkeypatch.setattr(dija, "model_mask_token", lambda target: "<|mdm_mask|>")
    records = [PromptRecord("a", "how to pick a lock", "harmful", "t")]
    with pytest.raises(SriError, match="own mask token is '<|mdm_mask|>', so mask_token='<zz>' would be ignored"):
        dija.dija(records, context=AttackContext(), mask_token="<zz>")
    assert dija.dija(records, context=AttackContext(), mask_token="<|mdm_mask|>")[0].meta["mask_token"] == \
        "<|mdm_mask|>"


def test_a_run_comparing_samplers_points_analyze_at_a_sampler(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    (run / "samplers" / "greedy").mkdir(parents=True)
    (run / "samplers" / "hot").mkdir()
    for name in ("config.yaml", "provenance.json"):
        (run / name).write_text("{}", encoding="utf-8")
    assert_one_line_error(run_cli(["analyze", str(run)], capsys),
                          f"compares samplers, and each has its own signals; give one of them, e.g. "
                          f"{run / 'samplers' / 'greedy'} (samplers: greedy, hot)")


def test_two_samplers_with_the_same_settings_are_refused(tmp_path, capsys) -> None:
    same = {"kind": "ar", "steps": 4}
    data = yaml.safe_load(CONFIG)
    del data["sampler"]
    data["samplers"] = {"x": same, "y": dict(same)}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    assert_one_line_error(run_cli(["validate", str(path)], capsys), "samplers 'x' and 'y' are the same settings")


def test_greedy_tracing_refuses_sampling_options(tmp_path, capsys) -> None:
    base = ["trace", "-m", "smollm2-135m-instruct", "--prompts", "harmless", "--out", str(tmp_path / "t")]
    assert_one_line_error(run_cli([*base, "--top-k", "5", "--seed", "3"], capsys),
                          "--seed, --top-k would be ignored by greedy decoding (--temperature 0)")
    assert not (tmp_path / "t").exists()


# ------------------------------------------------------------------- round 15 (50 inputs, 4 broke)
def test_dlm_gate_refuses_ar_order_as_its_diffusion_side(tmp_path) -> None:
    from sri.dlm.gate import GateConfig

    with pytest.raises(SriError, match="remasking leftmost is AR order, so choose low_confidence"):
        GateConfig(gen_length=2, steps=2, block_length=2, remasking="leftmost")


def test_llm_judge_settings_with_no_llm_judge_are_refused(tmp_path, capsys) -> None:
    cfg = _config(tmp_path, **{"judge.threshold": 0.3})  # CONFIG has judge: {model: none}
    assert_one_line_error(run_cli(["validate", str(cfg)], capsys),
                          "threshold set up the LLM judge, and model: none runs none")


def test_fit_anchors_refuses_one_folder_on_both_sides(tiny_llama, tmp_path) -> None:
    from sri.data.prompts import PromptRecord
    from sri.sampling import ARConfig
    from sri.signal import fit_anchors
    from sri.tracing.tracer import trace_prompts

    trace_prompts(tiny_llama, [PromptRecord("a", "hello", "harmless", "t")], tmp_path / "t",
                  sampler=ARConfig(steps=2), progress=False)
    with pytest.raises(SriError, match="the harmless and harmful traces are the same folder"):
        fit_anchors(tmp_path / "t", str(tmp_path / "t" / "."))


# ------------------------------------------------------------------- round 16 (50 inputs, 5 kinds broke)
@pytest.mark.parametrize("slot, dataset, clash", [("prompts.guard_fit", "advbench", "'harmful'"),
                                                 ("prompts.harmless", "harmbench", "'harmful'"),
                                                 ("prompts.harmful", "harmless", "'harmless'")])
def test_a_prompt_set_never_relabels_rows_against_their_own_label(tmp_path, capsys, slot, dataset, clash) -> None:
    changes = {f"{slot}": {"dataset": dataset, "n": 2}}
    if slot == "prompts.guard_fit":
        changes |= {"prompts.guard_calibrate": {"dataset": "harmless", "n": 2}, "guard": {"detector": "knn"}}
    cfg = _config(tmp_path, **changes)
    assert_one_line_error(run_cli(["validate", str(cfg)], capsys), f"{dataset} holds prompts labelled {clash}")
    out = tmp_path / "run"
    assert_one_line_error(run_cli(["run", "--config", str(cfg), "--out", str(out)], capsys), "holds prompts labelled")
    assert not out.exists()


def test_defense_options_need_their_defense(tmp_path, capsys) -> None:
    guard = {"prompts.guard_fit": {"dataset": "harmless", "n": 2}, "prompts.guard_calibrate": {"dataset": "harmless",
                                                                                              "n": 2},
             "guard": {"detector": "knn"}}
    for defenses, match in (({"names": ["ppl-filter"], "smoothllm_copies": 5}, "smoothllm_copies set up smoothllm"),
                            ({"names": ["ppl-filter"], "llm_guard_model": "smollm2-135m-instruct"},
                             "llm_guard_model set up llm-guard")):
        cfg = _config(tmp_path, defenses=defenses, **guard)
        assert_one_line_error(run_cli(["validate", str(cfg)], capsys), match)


def test_seeds_and_fields_that_change_nothing_are_refused(tmp_path, capsys) -> None:
    assert_one_line_error(run_cli(["judge", "I'm sorry", "--field", "prompt"], capsys),
                          "--field would be ignored for texts given on the command line")
    fit = _write_jsonl(tmp_path / "fit.jsonl", [_signal_row(i) for i in range(8)])
    cal = _write_jsonl(tmp_path / "cal.jsonl", [_signal_row(i) for i in range(8, 12)])
    base = ["guard", "fit", "--benign", str(fit), "--calibrate", str(cal), "--out", str(tmp_path / "g")]
    assert_one_line_error(run_cli([*base, "--detector", "knn", "--seed", "7"], capsys),
                          "--seed would be ignored by the knn detector")
    assert not (tmp_path / "g").exists()
    assert run_cli([*base, "--detector", "iforest", "--seed", "7", "--stream", "off"], capsys).code == 0
    run = tmp_path / "r"
    run.mkdir()
    _write_jsonl(run / "signals.jsonl", [_signal_row(i) for i in range(6)])
    assert_one_line_error(run_cli(["analyze", str(run), "--bootstrap", "0", "--seed", "5"], capsys),
                          "--seed would be ignored with --bootstrap 0")


# ------------------------------------------------------------------- round 17 (55 inputs, 11 broke)
@pytest.mark.parametrize("changes, match", [
    ({"sampler": {"kind": "ar", "steps": 4, "top_k": 5}}, "top_k would be ignored by greedy decoding"),
    ({"attacker": "smollm2-135m-instruct"}, "attacker is the attacker model of PAIR, and no pair attack is listed"),
    ({"controls": {"benign_in_template": True}}, "controls.benign_in_template wraps harmless requests"),
    ({"analysis": {"lambda_c": 0.2, "lambda_r": [0.9]}}, "lambda_r 0.9 is above lambda_c 0.2"),
    ({"guard": {"detector": "knn", "stream": False}}, "quote the word, e.g. \"off\""),
])
def test_config_sections_that_contradict_each_other_are_refused(tmp_path, capsys, changes, match) -> None:
    assert_one_line_error(run_cli(["validate", str(_config(tmp_path, **changes))], capsys), match)


def test_zero_prompts_left_asks_for_another_dataset(tmp_path, capsys) -> None:
    same = _write_jsonl(tmp_path / "p.jsonl", [{"id": f"p{i}", "prompt": f"say sorry {i}"} for i in range(2)])
    cfg = _config(tmp_path, **{"prompts.anchor_harmful": {"dataset": str(same), "n": 2},
                               "prompts.harmful": {"dataset": str(same), "n": 1}})
    assert_one_line_error(run_cli(["validate", str(cfg)], capsys), "has 0 prompts left")
    assert "ask for fewer" not in capsys.readouterr().err


def test_samplers_with_an_anchors_file_are_checked_against_their_own_steps(tiny_llama, tmp_path) -> None:
    import torch

    from sri.pipeline import parse_config
    from sri.pipeline.runner import preflight
    from sri.pipeline.stages import prompts
    from sri.sampling import ARConfig
    from sri.signal import Anchors
    from sri.tracing.tracer import trace_key

    key = {**trace_key(tiny_llama, ARConfig(steps=4), [2], "producing"), "model": "smollm2-135m-instruct"}
    d = tiny_llama.hidden_size
    Anchors(harmless={2: torch.zeros(4, d)}, harmful={2: torch.ones(4, d)}, key=key).save(tmp_path / "a.safetensors")
    data = yaml.safe_load(CONFIG)
    del data["sampler"]
    data["samplers"] = {"a": {"kind": "ar", "steps": 4}, "b": {"kind": "ar", "steps": 4, "temperature": 0.7}}
    data["prompts"]["anchors_file"] = str(tmp_path / "a.safetensors")
    del data["prompts"]["anchor_harmless"], data["prompts"]["anchor_harmful"]
    try:
        cfg = parse_config(data)
        preflight(cfg, prompts(cfg))
    except SriError as e:
        assert "vs 32" not in str(e), e  # no phantom default sampler


def test_a_stream_off_guard_refuses_what_only_streaming_uses(tmp_path, capsys) -> None:
    fit = _write_jsonl(tmp_path / "fit.jsonl", [_signal_row(i) for i in range(8)])
    cal = _write_jsonl(tmp_path / "cal.jsonl", [_signal_row(i) for i in range(8, 12)])
    assert_one_line_error(run_cli(["guard", "fit", "--benign", str(fit), "--calibrate", str(cal), "--stream", "off",
                                   "--detector", "knn", "--refusal-text", "Nope.", "--out", str(tmp_path / "g")],
                                  capsys), "--refusal-text would be ignored with --stream off")


def test_attack_and_judge_llm_refuse_contradictory_inputs(tmp_path, capsys) -> None:
    assert_one_line_error(run_cli(["attack", "-a", "refusal_suppression", "--prompts", "harmless", "--max-prompts", "2",
                                   "--out", str(tmp_path / "a.jsonl")], capsys),
                          "holds prompts labelled 'harmless'")
    rows = _write_jsonl(tmp_path / "r.jsonl", [{"prompt": "hi", "response": "ok"}])
    assert_one_line_error(run_cli(["judge-llm", "--input", str(rows), "--out", str(tmp_path / "j.jsonl"),
                                   "--request-field", "response"], capsys),
                          "--request-field and --response-field are both 'response'")
    assert not (tmp_path / "a.jsonl").exists() and not (tmp_path / "j.jsonl").exists()


# ------------------------------------------------------------------- round 18 (49 inputs, 4 broke)
@pytest.mark.parametrize("changes, match", [
    ({"prompts.long_benign": {"n": 2, "min_chars": 1000000}}, "min_chars: Input should be less than or equal to 8000"),
    ({"prompts.guard_fit": {"dataset": "harmless", "n": 2}, "prompts.guard_calibrate": {"dataset": "harmless", "n": 2}},
     "there is no guard section"),
    ({"attack_model": "smollm2-135m-instruct", "attacks": [{"name": "flip"}]},
     "attack_model is the model that optimising attacks (random_search, pair) run on, and none is listed"),
])
def test_run_settings_nothing_would_use_are_refused_before_the_folder(tmp_path, capsys, changes, match) -> None:
    cfg = _config(tmp_path, **changes)
    _refused_by_validate_and_run(cfg, match, tmp_path, capsys)


def test_no_guard_stop_needs_a_guard(tmp_path, capsys) -> None:
    assert_one_line_error(run_cli(["trace", "-m", "smollm2-135m-instruct", "--prompts", "harmless", "--out",
                                   str(tmp_path / "t"), "--no-guard-stop"], capsys),
                          "--no-guard-stop would be ignored without --guard")
    assert not (tmp_path / "t").exists()


# ------------------------------------------------------------------- between rounds 18 and 19
def test_too_few_bootstrap_resamples_for_a_95_percent_interval_are_refused(tmp_path, capsys) -> None:
    """With 1 resample low = high: a "95% CI" that is no interval; below 40 its 2.5% tail holds no resample."""
    from sri.stats.recovery import analyze_signals

    res = run_cli(["analyze", str(tmp_path / "none"), "--bootstrap", "1"], capsys)
    assert_one_line_error(res, "cannot give a 95% interval")
    assert "Invalid value for '--bootstrap'" in res.err
    cfg = _config(tmp_path, **{"analysis.bootstrap": 39})
    assert_one_line_error(run_cli(["validate", str(cfg)], capsys), "use at least 40, or 0 for no intervals")
    with pytest.raises(SriError, match="use at least 40"):
        analyze_signals([_signal_row(0)], resamples=5)
    assert run_cli(["validate", str(_config(tmp_path, **{"analysis.bootstrap": 40}))], capsys).code == 0


# ------------------------------------------------------------------- round 19 (70 inputs, 6 broke)
@pytest.mark.parametrize("changes, match", [
    # a prompt over the limit: the hint names the run-config field that raises it
    ({"prompts.harmful": {"dataset": "LONG", "n": 2}},
     "prompts.harmful: prompt 'long-00000' is 5123 tokens, over the limit of 4096; shorten it or raise "
     "--max-prompt-tokens (in a run config --max-prompt-tokens is the field max_prompt_tokens)"),
    # an attack that runs no model fails on its options: built in preflight as stage 2 builds it
    ({"attacks": [{"name": "in_the_wild", "options": {"max_chars": 10}}]},
     "attacks[0] (in_the_wild): no in-the-wild template is at most 10 characters long"),
    # ... or makes prompts over the limit
    ({"attacks": [{"name": "in_the_wild"}], "max_prompt_tokens": 200},
     "attacks[0] (in_the_wild): prompt 'in_the_wild:"),
    # both anchor sources: the sets would be traced and never used
    ({"prompts.anchors_file": "a.safetensors"}, "give either anchor prompt sets (anchors fitted by the run) or "
                                                "anchors_file (anchors reused), not both"),
])
def test_run_config_problems_stage_2_or_3_would_meet_are_found_before_writing(tmp_path, capsys, changes,
                                                                               match) -> None:
    if "prompts.harmful" in changes:
        changes = {"prompts.harmful": {"dataset": str(_long_prompts(tmp_path)), "n": 2}}
    cfg = _config(tmp_path, **changes)
    _refused_by_validate_and_run(cfg, match, tmp_path, capsys)


def test_max_prompt_tokens_of_a_run_raises_the_limit(tmp_path, capsys) -> None:
    cfg = _config(tmp_path, **{"prompts.harmful": {"dataset": str(_long_prompts(tmp_path)), "n": 2},
                               "max_prompt_tokens": 6000})
    assert run_cli(["validate", str(cfg)], capsys).code == 0


def test_a_device_this_machine_lacks_is_refused_by_validate_and_before_the_run_folder(tmp_path, capsys) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    cfg = _config(tmp_path, device="cuda")
    assert_one_line_error(run_cli(["validate", str(cfg)], capsys), "device 'cuda' was asked for but CUDA is not "
                                                                  "available")
    assert_one_line_error(run_cli(["run", "--config", str(cfg), "--out", str(tmp_path / "run")], capsys),
                          "CUDA is not available; use --device cpu (in a run config --device is the field device)")
    assert not (tmp_path / "run").exists()


def test_a_run_refuses_traces_of_prompts_its_set_does_not_hold(tiny_llama, tmp_path) -> None:
    """A shard copied into traces/harmful/ would enter the results under the harmful set's name."""
    from sri.data.prompts import PromptRecord
    from sri.pipeline.context import _check_own_traces
    from sri.sampling import ARConfig
    from sri.tracing.tracer import trace_prompts

    records = [PromptRecord(f"x{i}", f"explain bad thing {i}", "harmful", "t") for i in range(3)]
    store = trace_prompts(tiny_llama, records, tmp_path / "t", sampler=ARConfig(steps=2), progress=False)
    _check_own_traces(store, "harmful", records)  # its own: fine
    with pytest.raises(SriError, match=r"00000\.jsonl holds a trace of prompt 'x2', which is not in this run's "
                                       r"harmful set; .* delete that shard"):
        _check_own_traces(store, "harmful", records[:2])
    relabelled = [PromptRecord(r.id, r.prompt, "harmless", "t") for r in records]
    with pytest.raises(SriError, match="with another prompt text or label than the set has"):
        _check_own_traces(store, "harmful", relabelled)


def test_a_sampler_comparison_describes_every_setting_that_differs() -> None:
    from sri.report.comparison import _describe

    assert _describe({"kind": "ar", "steps": 6}) == "AR decoding, T=6"
    assert _describe({"kind": "ar", "steps": 6, "temperature": 0.7, "top_k": 0, "top_p": 1.0, "seed": 1}) == \
        "AR decoding, T=6, temperature 0.7, seed 1"
    assert "seed 3" in _describe({"kind": "diffusion", "steps": 8, "gen_length": 16, "seed": 3})


def test_a_resume_with_another_guard_names_the_entry_that_differs() -> None:
    from sri.tracing.store import _first_difference

    old = {"guard": {"path": "/g" * 80, "threshold": 0.25, "stop": True}, "layers": [30]}
    assert _first_difference(old, {**old, "guard": {**old["guard"], "stop": False}}) == "guard.stop: True vs False"


def test_a_resume_refuses_an_attack_file_changed_since_the_run_built_it(tmp_path) -> None:
    """attacks/<name>.jsonl is reused on resume: an edited row would be traced under the attack's name."""
    from types import SimpleNamespace

    from sri.attacks import AttackContext, run_attack
    from sri.data.prompts import PromptRecord
    from sri.io import read_jsonl, write_jsonl
    from sri.pipeline.stages import _check_attack_file

    run = SimpleNamespace(cfg=SimpleNamespace(seed=3))
    behaviours = [PromptRecord(f"b{i}", f"explain bad thing {i}", "harmful", "t") for i in range(3)]
    path = tmp_path / "attacks" / "flip.jsonl"
    path.parent.mkdir()
    write_jsonl(path, [r.to_row() for r in run_attack("flip", behaviours, AttackContext(seed=3), mode="random")])
    _check_attack_file(run, "flip", path, behaviours, {"mode": "random"})  # as built: fine
    with pytest.raises(SriError, match="first difference"):  # other options: not what the run builds
        _check_attack_file(run, "flip", path, behaviours, {})
    rows = read_jsonl(path)
    rows[1]["prompt"] = "something else"
    write_jsonl(path, rows)
    with pytest.raises(SriError, match=r"flip\.jsonl was changed since the run built it: .*first difference: id "
                                       r"'flip:b1'.* delete it and the traces of that set \(traces/flip/\)"):
        _check_attack_file(run, "flip", path, behaviours, {"mode": "random"})
    # an attack that runs a model: one jailbreak row per behaviour, each naming its behaviour
    rs = tmp_path / "attacks" / "random_search.jsonl"
    write_jsonl(rs, [{"id": f"random_search:{b.id}", "prompt": "x", "label": "jailbreak", "source": "t",
                      "behavior": b.prompt} for b in behaviours[:2]])
    _check_attack_file(run, "random_search", rs, behaviours[:2], {})
    with pytest.raises(SriError, match="it lacks 'random_search:b2'"):
        _check_attack_file(run, "random_search", rs, behaviours, {})
    with pytest.raises(SriError, match="is not a jailbreak row of one of this run's behaviours"):
        _check_attack_file(run, "random_search", rs, behaviours[:1], {})


# ------------------------------------------------------------------- round 20 (50 inputs, 2 broke)
def test_a_plot_reference_must_measure_sigma_the_same_way(tmp_path, capsys) -> None:
    """σ under another model or other anchors is another number: not drawn beside the signals."""
    key = {"model": "m", "layer": 2, "steps": 4, "fingerprint": "f1", "hidden_size": 8, "anchors": "a" * 16}
    signals = _write_jsonl(tmp_path / "s.jsonl", [_signal_row(i, key=key) for i in range(3)])
    for change, where in (({"anchors": "b" * 16}, "anchors"), ({"fingerprint": "f2", "hidden_size": 16},
                                                                "fingerprint")):
        ref = _write_jsonl(tmp_path / "r.jsonl", [_signal_row(i, key={**key, **change}) for i in range(3)])
        res = run_cli(["plot", "--signals", str(signals), "--reference", str(ref), "--out",
                       str(tmp_path / "p.png")], capsys)
        assert_one_line_error(res, f"the signals and the reference differ in {where}")
        assert not (tmp_path / "p.png").exists()
    sampled = _write_jsonl(tmp_path / "r.jsonl", [_signal_row(i, key={**key, "decoding": {"temperature": 0.7}})
                                                  for i in range(3)])  # same anchors, another decoding: comparable
    assert run_cli(["plot", "--signals", str(signals), "--reference", str(sampled), "--out",
                    str(tmp_path / "p.png")], capsys).code == 0


def test_a_ray_pool_this_machine_cannot_hold_is_refused_by_validate_and_before_the_run_folder(tmp_path,
                                                                                              capsys) -> None:
    import os

    cfg = _config(tmp_path, **{"execution": {"backend": "ray", "workers": (os.cpu_count() or 1) + 1}})
    _refused_by_validate_and_run(cfg, "CPU(s), but the Ray cluster has", tmp_path, capsys)
    cfg = _config(tmp_path, **{"execution": {"backend": "ray", "workers": 1, "gpus_per_worker": 64}})
    _refused_by_validate_and_run(cfg, "need 64 GPU(s), but the Ray cluster has", tmp_path, capsys)


# ------------------------------------------------------------------- round 21 (50 inputs, 3 broke)
def _anchors_file(tiny_llama, tmp_path: Path, layers: list[int]) -> Path:
    """An anchors file for SmolLM2's key (hidden size of the tiny model: only the layers are looked at here)."""
    import torch

    from sri.sampling import ARConfig
    from sri.signal import Anchors
    from sri.tracing.tracer import trace_key

    key = {**trace_key(tiny_llama, ARConfig(steps=4), layers, "producing"), "model": "smollm2-135m-instruct",
           "system_prompt": "You are a helpful assistant"}
    d = tiny_llama.hidden_size
    path = tmp_path / "a.safetensors"
    Anchors(harmless={i: torch.zeros(4, d) for i in layers}, harmful={i: torch.ones(4, d) for i in layers},
            key=key).save(path)
    return path


@pytest.mark.parametrize("layers, missing", [("mid", "[15]"), ("first,final", "[1]")])
def test_a_run_asking_for_layers_its_anchors_file_lacks_is_refused_before_writing(tiny_llama, tmp_path, capsys,
                                                                                  layers, missing) -> None:
    """Refused, not traced for nothing (mid) nor traced and dropped in silence (first,final)."""
    anchors = _anchors_file(tiny_llama, tmp_path, [30])
    cfg = _config(tmp_path, layers=layers, **{"prompts.anchors_file": str(anchors), "prompts.anchor_harmless": None,
                                              "prompts.anchor_harmful": None})
    _refused_by_validate_and_run(cfg, f"holds anchors for layer(s) [30], but layers '{layers}' also asks for "
                                      f"{missing}, which would be traced and get no σ", tmp_path, capsys)


def test_a_guard_is_fitted_on_at_least_two_benign_prompts(tmp_path, capsys) -> None:
    cfg = _config(tmp_path, guard={"detector": "ae"}, **{"prompts.guard_fit": {"dataset": "harmless", "n": 1},
                                                          "prompts.guard_calibrate": {"dataset": "harmless", "n": 1}})
    _refused_by_validate_and_run(cfg, "prompts.guard_fit.n must be ≥ 2", tmp_path, capsys)


def test_signal_says_which_traced_layers_have_no_anchors(tiny_llama, tmp_path, capsys) -> None:
    import torch

    from sri.data.prompts import PromptRecord
    from sri.sampling import ARConfig
    from sri.signal import Anchors
    from sri.tracing.tracer import trace_prompts

    store = trace_prompts(tiny_llama, [PromptRecord("z", "hello there", "harmless", "t")], tmp_path / "two",
                          sampler=ARConfig(steps=3), layers="first,final", progress=False)
    first, final = store.layers
    d = tiny_llama.hidden_size
    Anchors(harmless={final: torch.zeros(3, d)}, harmful={final: torch.ones(3, d)}, key=store.key).save(
        tmp_path / "a.safetensors")
    res = run_cli(["signal", "--anchors", str(tmp_path / "a.safetensors"), "--traces", str(tmp_path / "two"),
                   "--out", str(tmp_path / "s.jsonl")], capsys)
    assert res.code == 0, res.err
    assert f"note: layer(s) [{first}] of" in res.err and "their σ is not computed" in res.err


# ------------------------------------------------------------------- round 22 (50 inputs, 1 broke)
def test_a_report_without_bootstrap_describes_no_intervals(tmp_path, capsys) -> None:
    rows = [_signal_row(i, label="harmless" if i % 2 else "harmful", refused=i % 3 == 0) for i in range(12)]
    _write_jsonl(tmp_path / "signals.jsonl", rows)
    assert run_cli(["analyze", str(tmp_path), "--bootstrap", "0"], capsys).code == 0
    assert run_cli(["report", str(tmp_path)], capsys).code == 0
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "0 resamples" not in page and "Intervals: none (the analysis ran with 0 bootstrap resamples)" in page
    assert "95% bootstrap CIs" not in page and "no CIs: bootstrap off" in page
    # no provenance.json: the provenance is read from the signals' key (round 24's weak point)
    assert "the signals&#x27; compatibility key" in page and "&quot;layer&quot;: 2" in page


# ------------------------------------------------------------------- round 23 (50 inputs, 1 broke)
def test_anchors_refuse_rows_whose_own_label_contradicts_their_side(tiny_llama, tmp_path, capsys) -> None:
    """A harmless trace folder resumed with harmful prompts (allowed: a folder may grow) must not give them to
    the harmless anchor as "answered harmless"."""
    from sri.data.prompts import PromptRecord
    from sri.sampling import ARConfig
    from sri.signal import fit_anchors
    from sri.tracing.tracer import trace_prompts

    def traced(folder: str, label: str, prefix: str) -> Path:
        trace_prompts(tiny_llama, [PromptRecord(f"{prefix}{i}", f"{prefix} prompt {i}", label, "t") for i in range(2)],
                      tmp_path / folder, sampler=ARConfig(steps=2), progress=False)
        return tmp_path / folder

    ok, bad = traced("ok", "harmless", "ok"), traced("bad", "harmful", "bad")
    traced("ok", "harmful", "adv")  # the same folder grows by harmful rows
    res = run_cli(["anchors", "--harmless", str(ok), "--harmful", str(bad), "--out", str(tmp_path / "a.safetensors")],
                  capsys)
    assert_one_line_error(res, "given as the harmless traces, holds prompt 'adv0' labelled 'harmful'; a harmless "
                               "anchor is fitted on harmless prompts only")
    assert not (tmp_path / "a.safetensors").exists()
    with pytest.raises(SriError, match="given as the harmful traces, holds prompt 'hx0' labelled 'harmless'"):
        fit_anchors(traced("u", "unlabelled", "u"), traced("hx", "harmless", "hx"))
