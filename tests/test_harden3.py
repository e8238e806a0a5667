"""The third adversarial round: one test per kind of broken promise (every user error is one line ``error: …``,
exit 2, nothing written; no silent wrong result), each with the tester's input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sri.errors import SriError
from sri.io import read_signal_rows
from tests.cli_helpers import assert_one_line_error, run_cli


def _signal_row(i: int, label: str = "harmless", refused: bool = False, steps: int = 4, **extra) -> dict:
    return {"id": f"p{i}", "label": label, "refused": refused, "prompt": f"prompt {i}", "response": f"answer {i}",
            "sri": [0.9 - 0.1 * ((i + t) % 3) for t in range(steps)], "text_signal": [1] * steps,
            "key": {"model": "m", "layer": 2, "steps": steps}, **extra}


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


CONFIG = """name: tiny
model: smollm2-135m-instruct
sampler: {kind: ar, steps: 4}
prompts:
  anchor_harmless: {dataset: harmless, n: 2}
  anchor_harmful: {dataset: advbench, n: 2}
  harmless: {dataset: harmless, n: 2}
  harmful: {dataset: advbench, n: 2}
judge: {model: none}
"""


# ------------------------------------------------------------------------------------------ 1. attack options
@pytest.mark.parametrize("value, match", [
    ("nan", "option iterations is 'nan', expected a whole number"),
    ("abc", "option iterations is 'abc', expected a whole number"),
    ("2.5", "option iterations is 2.5, expected a whole number"),
    ("0", "random_search iterations must be positive (got 0)"),
    ("[", "is not a number, true/false or text"),
])
def test_attack_options_are_type_and_range_checked_before_any_model(tmp_path, capsys, value, match) -> None:
    prompts = _write_jsonl(tmp_path / "b.jsonl", [{"prompt": "do a bad thing"}])
    res = run_cli(["attack", "-a", "random_search", "--prompts", str(prompts), "--out", str(tmp_path / "o.jsonl"),
                   "--model", "no-such-model", "-o", f"iterations={value}"], capsys)
    assert_one_line_error(res, match)
    assert not (tmp_path / "o.jsonl").exists()


def test_attack_option_types_follow_the_defaults() -> None:
    from sri.attacks.registry import check_options

    assert check_options("pair", {"temperature": 1}) == {"temperature": 1.0}  # an int for a float is fine
    assert check_options("in_the_wild", {"max_chars": None}) == {"max_chars": None}  # int | None
    for name, options, match in [
        ("pair", {"iterations": 2.5}, "iterations is 2.5, expected a whole number"),
        ("pair", {"temperature": float("inf")}, "temperature is inf, expected a finite number"),
        ("pair", {"top_p": 2}, "top_p must be in (0, 1]"),
        ("random_search", {"early_stop": 1}, "early_stop is 1, expected true or false"),
        ("random_search", {"target_text": 5}, "target_text is 5, expected text"),
        ("random_search", {"change_tokens": 30}, "exceeds suffix_tokens"),
        ("flip", {"mode": "sideways"}, "flip mode 'sideways' is unknown"),
        ("dija", {"slots": True}, "slots is True, expected a whole number"),
    ]:
        with pytest.raises(SriError, match=match.replace("(", r"\(").replace(")", r"\)").replace("]", r"\]")):
            check_options(name, options)


def test_attack_options_in_a_config_are_checked(tmp_path) -> None:
    from sri.pipeline.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text(CONFIG + "attacks:\n  - {name: pair, options: {iterations: .nan}}\n", encoding="utf-8")
    with pytest.raises(SriError, match="option iterations is nan, expected a whole number"):
        load_config(path)


def test_text_options_keep_the_value_as_given(tmp_path, capsys) -> None:
    # target_text=123 is text for a text option (not the number 123); the run then fails on the model, not the type
    prompts = _write_jsonl(tmp_path / "b.jsonl", [{"prompt": "do a bad thing"}])
    res = run_cli(["attack", "-a", "random_search", "--prompts", str(prompts), "--out", str(tmp_path / "o.jsonl"),
                   "--model", "no-such-model", "-o", "target_text=123"], capsys)
    assert_one_line_error(res, "no-such-model")


# ------------------------------------------------------------------------------------------ 2. prompt fields
@pytest.mark.parametrize("line, match", [
    ('{"id": {"x": 1}, "prompt": "hello"}', "p.jsonl:2: field 'id' is {'x': 1}, expected text or a whole number"),
    ('{"id": ["a"], "prompt": "hello"}', "field 'id' is ['a']"),
    ('{"id": true, "prompt": "hello"}', "field 'id' is True"),
    ('{"prompt": "hello", "label": ["a"]}', "p.jsonl:2: field 'label' is ['a'], expected text"),
    ('{"prompt": "hello", "score": NaN}', "p.jsonl:2 is not valid JSON: it holds NaN"),
    ('{"prompt": "hello", "score": -Infinity}', "it holds -Infinity"),
    ('{"prompt": "\\u200b\\u200b\\u200d"}', "p.jsonl:2 has an empty prompt"),
    ('{"prompt": "\u200b\u2060\ufeff "}', "p.jsonl:2 has an empty prompt"),
])
def test_prompt_fields_of_the_wrong_type_are_refused(tmp_path, line, match) -> None:
    from sri.data.prompts import load_prompts

    f = _write_jsonl(tmp_path / "p.jsonl", ['{"id": 7, "prompt": "fine", "label": "x"}', line])
    with pytest.raises(SriError, match=match.replace("(", r"\(").replace("[", r"\[").replace("{", r"\{")):
        load_prompts(f)


def test_integer_ids_stay_fine_and_invisible_lines_of_txt_are_skipped(tmp_path) -> None:
    from sri.data.prompts import load_prompts

    f = _write_jsonl(tmp_path / "p.jsonl", ['{"id": 7, "prompt": "fine", "label": "x"}'])
    assert [(r.id, r.label) for r in load_prompts(f)] == [("7", "x")]
    t = tmp_path / "p.txt"
    t.write_text("one\n\u200b\u200d\ntwo\n", encoding="utf-8")
    assert [r.prompt for r in load_prompts(t)] == ["one", "two"]


def test_zero_width_prompt_via_the_cli_is_one_line(tmp_path, capsys) -> None:
    f = _write_jsonl(tmp_path / "zw.jsonl", ['{"prompt":"\u200b\u200b\u200d"}'])
    res = run_cli(["trace", "--prompts", str(f), "--out", str(tmp_path / "o"), "--model", "no-such-model"], capsys)
    assert_one_line_error(res, "zw.jsonl:1 has an empty prompt")
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------ 3. CSV headers
def test_duplicate_csv_columns_are_refused(tmp_path) -> None:
    from sri.data.prompts import load_prompts

    f = tmp_path / "dup.csv"
    f.write_text("prompt,prompt\nfirst,second\n", encoding="utf-8")
    with pytest.raises(SriError, match="dup.csv:1 names the column 'prompt' twice"):
        load_prompts(f)
    g = tmp_path / "dup2.csv"
    g.write_text("id,prompt,id\na,first,b\n", encoding="utf-8")
    with pytest.raises(SriError, match="names the column 'id' twice"):
        load_prompts(g)


def test_csv_rows_are_named_by_their_line(tmp_path) -> None:
    from sri.data.prompts import load_prompts

    f = tmp_path / "p.csv"
    f.write_text('prompt,label\n"two\nlines",a\n"",b\n', encoding="utf-8")
    with pytest.raises(SriError, match="p.csv:4 has an empty prompt"):
        load_prompts(f)


# ------------------------------------------------------------------------------------------ 13. messages
def test_a_symlink_loop_is_named_as_such(tmp_path, capsys) -> None:
    os.symlink(tmp_path / "loop2.jsonl", tmp_path / "loop1.jsonl")
    os.symlink(tmp_path / "loop1.jsonl", tmp_path / "loop2.jsonl")
    res = run_cli(["trace", "--prompts", str(tmp_path / "loop1.jsonl"), "--out", str(tmp_path / "o")], capsys)
    assert_one_line_error(res, "loop1.jsonl is a symbolic link loop")
    os.symlink(tmp_path / "gone.jsonl", tmp_path / "broken.jsonl")
    res = run_cli(["judge", "--input", str(tmp_path / "broken.jsonl")], capsys)
    assert_one_line_error(res, "broken.jsonl is a broken symbolic link")


def test_a_folder_given_as_anchors_is_named_as_a_folder(tmp_path, capsys) -> None:
    (tmp_path / "anchors").mkdir()
    (tmp_path / "traces").mkdir()
    res = run_cli(["signal", "--anchors", str(tmp_path / "anchors"), "--traces", str(tmp_path / "traces"),
                   "--out", str(tmp_path / "s.jsonl")], capsys)
    assert_one_line_error(res, "anchors is a directory, but a file is expected")


# ------------------------------------------------------------------------------------------ 7. σ range
@pytest.mark.parametrize("field, value", [("sri", 5.0), ("sri", -0.1), ("text_signal", 2)])
def test_signal_values_outside_0_1_are_refused_everywhere(tmp_path, capsys, field, value) -> None:
    rows = [_signal_row(i) for i in range(3)]
    rows[2][field] = [value, *rows[2][field][1:]]
    f = _write_jsonl(tmp_path / "s.jsonl", rows)
    with pytest.raises(SriError, match=f"s.jsonl:3: '{field}'\\[0\\] is {value}, outside \\[0, 1\\]"):
        read_signal_rows(f)
    res = run_cli(["plot", "--signals", str(f), "--out", str(tmp_path / "p.png")], capsys)
    assert_one_line_error(res, "outside [0, 1]")
    assert not (tmp_path / "p.png").exists()
    run = tmp_path / "run"
    run.mkdir()
    (run / "signals.jsonl").write_text(f.read_text())
    res = run_cli(["analyze", str(run)], capsys)
    assert_one_line_error(res, "outside [0, 1]")
    assert sorted(p.name for p in run.iterdir()) == ["signals.jsonl"]


# ------------------------------------------------------------------------------------------ 11. duplicate ids
def test_duplicate_signal_ids_are_refused_by_every_reader(tmp_path, capsys) -> None:
    from sri.guard import fit_guard

    rows = [_signal_row(i) for i in range(6)]
    dup = _write_jsonl(tmp_path / "dup.jsonl", [*rows[:3], rows[1]])
    with pytest.raises(SriError, match="dup.jsonl:4: id 'p1' is already on line 2"):
        read_signal_rows(dup)
    benign = _write_jsonl(tmp_path / "b.jsonl", [_signal_row(i) for i in range(10, 20)])
    res = run_cli(["guard", "fit", "--benign", str(benign), "--calibrate", str(dup), "--out", str(tmp_path / "g")],
                  capsys)
    assert_one_line_error(res, "id 'p1' is already on line 2")
    assert not (tmp_path / "g").exists()
    res = run_cli(["guard", "fit", "--benign", str(dup), "--calibrate", str(benign), "--out", str(tmp_path / "g")],
                  capsys)
    assert_one_line_error(res, "id 'p1' is already on line 2")
    with pytest.raises(SriError, match="calibration signals hold id 'p1' twice"):
        fit_guard([_signal_row(i) for i in range(10, 20)], [*rows[:3], rows[1]], detector="mahalanobis")


# ------------------------------------------------------------------------------------------ 4. judge inputs
@pytest.mark.parametrize("text", ["", "   ", "\u200b\u200d", "\ufeff\u2060"])
def test_judge_refuses_empty_text(capsys, text) -> None:
    res = run_cli(["judge", text], capsys)
    assert_one_line_error(res, "text 1 is empty")
    assert res.out == ""


def test_judge_refuses_texts_and_input_together(tmp_path, capsys) -> None:
    f = _write_jsonl(tmp_path / "r.jsonl", [{"response": "I'm sorry, I can't"}])
    res = run_cli(["judge", "hello", "--input", str(f)], capsys)
    assert_one_line_error(res, "not both")
    assert res.out == ""


@pytest.mark.parametrize("command", [["judge"], ["judge-llm"]])
def test_output_may_not_overwrite_the_input(tmp_path, capsys, command) -> None:
    f = _write_jsonl(tmp_path / "r.jsonl", [{"prompt": "p", "response": "I'm sorry, I can't"}])
    before = f.read_text()
    res = run_cli([*command, "--input", str(f), "--out", str(f)], capsys)
    assert_one_line_error(res, "is the --input file")
    assert f.read_text() == before


# ------------------------------------------------------------------------------------------ 13. --bootstrap 0
def test_bootstrap_0_does_not_claim_confidence_intervals(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    run.mkdir()
    _write_jsonl(run / "signals.jsonl", [_signal_row(i, refused=i % 2 == 0) for i in range(8)])
    res = run_cli(["analyze", str(run), "--bootstrap", "0"], capsys)
    assert res.code == 0, res.err
    assert "95%" not in res.out and "no CIs" in res.out
    res = run_cli(["analyze", str(run)], capsys)
    assert "95% bootstrap CIs" in res.out


# ------------------------------------------------------------------------------------------ 5, 6. shards
def _fake_store(folder: Path, shards: int = 2, rows_per: int = 2):
    import torch

    from sri.tracing.store import TraceStore

    key = {"model": "m", "fingerprint": "f", "hidden_size": 3, "num_layers": 2, "sampler": "ar", "steps": 2,
           "pooling": "producing", "after_end": "repeat-state", "layers": [2]}
    settings = {"sampler": {"name": "ar", "steps": 2, "temperature": 0.0}, "system_prompt": "s"}
    store = TraceStore.create(folder, {"key": key, "settings": settings, "model": {"device": "cpu"}})
    for s in range(shards):
        rows = [{"id": f"s{s}r{i}", "label": "harmless", "response": "x"} for i in range(rows_per)]
        store.append(rows, {2: torch.full((rows_per, 2, 3), float(s))})
    store.close()
    return folder


def test_a_swapped_shard_tensor_is_caught_and_named(tmp_path, capsys) -> None:
    from sri.tracing.store import DamagedShardError, TraceStore

    folder = _fake_store(tmp_path / "t")
    a, b = folder / "shards" / "00000.safetensors", folder / "shards" / "00001.safetensors"
    data_a, data_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(data_b)
    b.write_bytes(data_a)
    with pytest.raises(DamagedShardError, match="00000.safetensors is damaged .*row ids differ.*delete it and re-run "
                                                 f"`sri trace --out {folder}`"):
        TraceStore.open(folder).load()
    # resuming deletes the damaged shards so their prompts are traced again
    store = TraceStore.create(folder, {k: TraceStore.open(folder).meta[k] for k in ("key", "settings")},
                              log=lambda line: None)
    assert sorted(store.repaired) == ["00000", "00001"]
    store.close()


def test_shards_without_the_row_digest_are_refused_with_a_retrace_message(tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    from sri.errors import IncompatibleError
    from sri.tracing.store import TraceStore

    folder = _fake_store(tmp_path / "t", shards=1)
    shard = folder / "shards" / "00000.safetensors"
    with __import__("safetensors").safe_open(str(shard), framework="pt") as f:
        meta = dict(f.metadata())
    del meta["ids_sha256"]
    save_file(load_file(str(shard)), str(shard), metadata=meta)
    with pytest.raises(IncompatibleError, match="carries no digest of its row ids.*trace again"):
        TraceStore.open(folder).rows()


@pytest.mark.parametrize("edit, field", [
    (lambda m: m["settings"]["sampler"].update(steps=8), "settings.sampler.steps"),
    (lambda m: m["settings"].update(system_prompt="other"), "settings.system_prompt"),
    (lambda m: m["model"].update(device="cuda"), "model.device"),
    (lambda m: m.update(extra=1), "extra"),
])
def test_an_edited_run_json_settings_section_is_named(tmp_path, capsys, edit, field) -> None:
    from sri.errors import IncompatibleError
    from sri.tracing.store import TraceStore

    folder = _fake_store(tmp_path / "t")
    meta = json.loads((folder / "run.json").read_text())
    edit(meta)
    (folder / "run.json").write_text(json.dumps(meta))
    with pytest.raises(IncompatibleError, match=f"run.json field {field} does not match"):
        TraceStore.open(folder)
    res = run_cli(["judge", "--input", str(folder)], capsys)
    assert_one_line_error(res, f"field {field} does not match")
    other = _fake_store(tmp_path / "u")
    meta = json.loads((other / "run.json").read_text())
    meta["created"] = "2000-01-01T00:00:00+00:00"  # bookkeeping may differ
    (other / "run.json").write_text(json.dumps(meta))
    assert len(TraceStore.open(other).rows()) == 4


# ------------------------------------------------------------------------------------------ 8. guard thresholds
@pytest.mark.parametrize("edit, field", [
    (lambda m: m.update(threshold=m["threshold"] * 10), "threshold"),
    (lambda m: m["stream_thresholds"].update({k: 1e9 for k in m["stream_thresholds"]}), "stream_thresholds"),
    (lambda m: m.update(quantile=0.5), "quantile"),
    (lambda m: m.update(refusal_text="ok"), "refusal_text"),
])
def test_an_edited_guard_threshold_is_refused(tmp_path, capsys, edit, field) -> None:
    from sri.guard import Guard

    benign = _write_jsonl(tmp_path / "b.jsonl", [_signal_row(i) for i in range(20)])
    calib = _write_jsonl(tmp_path / "c.jsonl", [_signal_row(i) for i in range(20, 40)])
    res = run_cli(["guard", "fit", "--benign", str(benign), "--calibrate", str(calib), "--out", str(tmp_path / "g"),
                   "--detector", "mahalanobis"], capsys)
    assert res.code == 0, res.err
    Guard.load(tmp_path / "g")  # untouched: loads
    meta_file = tmp_path / "g" / "guard.json"
    meta = json.loads(meta_file.read_text())
    edit(meta)
    meta_file.write_text(json.dumps(meta))
    res = run_cli(["guard", "score", "--guard", str(tmp_path / "g"), "--signals", str(calib),
                   "--out", str(tmp_path / "s.jsonl")], capsys)
    assert_one_line_error(res, f"guard.json field {field}")
    assert "was edited" in res.err and not (tmp_path / "s.jsonl").exists()


# ------------------------------------------------------------------------------------------ 9. YAML
def test_a_billion_laughs_config_is_refused_in_one_short_line(tmp_path, capsys) -> None:
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for prev, name in zip("abcdefg", "bcdefgh", strict=True):
        lines.append(f"{name}: &{name} [{','.join([f'*{prev}'] * 9)}]")
    lines.append("name: *h")
    path = tmp_path / "laughs.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    res = run_cli(["validate", str(path)], capsys)
    assert_one_line_error(res, "line 2: YAML aliases (*a) are not supported")
    assert len(res.err) < 300


def test_duplicate_yaml_keys_are_refused_with_the_line(tmp_path, capsys) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("name: tiny\n" + CONFIG.replace("name: tiny\n", "name: other\n"), encoding="utf-8")
    res = run_cli(["validate", str(path)], capsys)
    assert_one_line_error(res, "line 2: key 'name' is given twice in one mapping (first on line 1)")
    path.write_text(CONFIG.replace("judge: {model: none}", "judge: {model: none, model: auto}"), encoding="utf-8")
    res = run_cli(["validate", str(path)], capsys)
    assert_one_line_error(res, "key 'model' is given twice")
    res = run_cli(["validate", str(path), "--set", "name={a: 1, a: 2}"], capsys)
    assert_one_line_error(res, "key 'a' is given twice")


def test_echoed_values_are_truncated(tmp_path, capsys) -> None:
    path = tmp_path / "long.yaml"
    path.write_text(CONFIG.replace("name: tiny", "name: [" + ", ".join(["xxxxxxxx"] * 100_000) + "]"),
                    encoding="utf-8")
    res = run_cli(["validate", str(path)], capsys)
    assert_one_line_error(res, "config: name:")
    assert len(res.err) < 400, len(res.err)


# ------------------------------------------------------------------------------------------ 10. validate models
def test_validate_resolves_the_models_like_run(tmp_path, capsys) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG, encoding="utf-8")
    for setting in ("model=nosuch-model", "attacker=nosuch-model", "attack_model=nosuch-model"):
        pair = ["--set", "attacks=[{name: pair, n: 1}]"] if setting.startswith("attack") else []
        res = run_cli(["validate", str(path), "--set", setting, *pair], capsys)
        assert_one_line_error(res, "model 'nosuch-model' is unknown")
        assert "ok:" not in res.out


# ------------------------------------------------------------------------------------------ 12. run internals
@pytest.mark.parametrize("inside", ["shards/00001.jsonl", "s.jsonl"])
def test_outputs_inside_a_trace_folder_are_refused(tmp_path, capsys, inside) -> None:
    folder = _fake_store(tmp_path / "t", shards=1)
    before = sorted(p.name for p in (folder / "shards").iterdir())
    out = folder / inside
    res = run_cli(["signal", "--anchors", str(tmp_path / "a.safetensors"), "--traces", str(folder),
                   "--out", str(out)], capsys)
    assert_one_line_error(res, f"is inside the trace folder {folder}")
    rows = _write_jsonl(tmp_path / "r.jsonl", [{"response": "I'm sorry"}])
    res = run_cli(["judge", "--input", str(rows), "--out", str(out)], capsys)
    assert_one_line_error(res, "is inside the trace folder")
    res = run_cli(["trace", "--prompts", str(rows), "--out", str(folder / "shards" / "sub")], capsys)
    assert_one_line_error(res, "is inside the trace folder")
    assert not out.exists() and sorted(p.name for p in (folder / "shards").iterdir()) == before


def test_outputs_inside_a_pipeline_run_folder_are_refused_but_its_own_analysis_is_not(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(CONFIG)
    (run / "provenance.json").write_text("{}")
    _write_jsonl(run / "signals.jsonl", [_signal_row(i, refused=i % 2 == 0) for i in range(8)])
    res = run_cli(["plot", "--signals", str(run / "signals.jsonl"), "--out", str(run / "figures" / "x.png")], capsys)
    assert_one_line_error(res, f"is inside the pipeline run folder {run}")
    res = run_cli(["analyze", str(run), "--bootstrap", "0"], capsys)
    assert res.code == 0, res.err


# ------------------------------------------------------------------------------------------- fourth round
def test_plot_reference_must_match_and_carry_labelled_rows(tmp_path, capsys) -> None:
    signals = _write_jsonl(tmp_path / "s.jsonl", [_signal_row(i) for i in range(3)])
    short = _write_jsonl(tmp_path / "r3.jsonl", [_signal_row(9, steps=3)])
    res = run_cli(["plot", "--signals", str(signals), "--reference", str(short), "--out", str(tmp_path / "a.png")],
                  capsys)
    assert_one_line_error(res, "the reference signals have 3 steps, the signals 4")
    unlabelled = _write_jsonl(tmp_path / "u.jsonl", [_signal_row(8, label="unlabelled")])
    res = run_cli(["plot", "--signals", str(signals), "--reference", str(unlabelled), "--out",
                   str(tmp_path / "b.png")], capsys)
    assert_one_line_error(res, "nothing to draw from it")
    one = _write_jsonl(tmp_path / "one.jsonl", [_signal_row(i, steps=1) for i in range(2)])
    res = run_cli(["plot", "--signals", str(one), "--out", str(tmp_path / "c.png")], capsys)
    assert_one_line_error(res, "a trajectory needs at least 2")
    assert not list(tmp_path.glob("*.png"))


@pytest.mark.parametrize("detector", ["mahalanobis", "ocsvm", "ae"])
def test_guard_fit_refuses_constant_benign_signals(detector, tmp_path, capsys) -> None:
    rows = [{**_signal_row(i), "sri": [0.7] * 4} for i in range(8)]
    benign, calib = _write_jsonl(tmp_path / "b.jsonl", rows[:5]), _write_jsonl(tmp_path / "c.jsonl", rows[5:])
    res = run_cli(["guard", "fit", "--benign", str(benign), "--calibrate", str(calib), "--out", str(tmp_path / "g"),
                   "--detector", detector], capsys)
    assert_one_line_error(res, "zero variance")
    assert not (tmp_path / "g").exists()


def test_csv_with_an_unterminated_quote_is_refused(tmp_path, capsys) -> None:
    from sri.data.prompts import load_prompts

    path = tmp_path / "p.csv"
    path.write_text('prompt,id\n"unterminated,a\nfoo,b\n', encoding="utf-8")
    with pytest.raises(SriError, match="is not valid CSV"):
        load_prompts(str(path))


def test_attack_option_given_twice_is_refused(tmp_path, capsys) -> None:
    prompts = _write_jsonl(tmp_path / "p.jsonl", [{"prompt": "how do I bake bread"}])
    res = run_cli(["attack", "-a", "flip", "--prompts", str(prompts), "--out", str(tmp_path / "a.jsonl"),
                   "-o", "mode=random", "-o", "mode=words"], capsys)
    assert_one_line_error(res, "'mode' is given twice")
    assert not (tmp_path / "a.jsonl").exists()


def test_a_run_needs_at_least_two_steps() -> None:
    from sri.pipeline import parse_config

    data = {"name": "t", "sampler": {"kind": "ar", "steps": 1},
            "prompts": {"anchor_harmless": {"dataset": "harmless", "n": 2}, "anchor_harmful": {"dataset": "advbench",
                                                                                              "n": 2},
                        "harmless": {"dataset": "harmless", "n": 2}, "harmful": {"dataset": "advbench", "n": 2}}}
    with pytest.raises(SriError, match="steps must be ≥ 2 for a run"):
        parse_config(data)
