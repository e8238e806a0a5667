"""Issue 11, the kinds not covered by test_run_folders / test_assets / test_key / test_bad_input: one test per
kind with the issue's example input and the right value — the CLI's error boundary, BOMs and undecodable bytes,
mathtext, small and malformed analysis inputs, numbers and names, misleading messages, help in 80 columns."""

from __future__ import annotations

import json

import pytest

from sri.cli.app import app
from sri.errors import SriError
from sri.io import read_signal_rows, safe_child, write_jsonl
from tests.cli_helpers import assert_one_line_error, run_cli


def _signal_row(i: int, label: str = "harmless", refused: bool = False, steps: int = 4, **extra) -> dict:
    return {"id": f"p{i}", "label": label, "refused": refused, "prompt": f"prompt {i}", "response": f"answer {i}",
            "sri": [0.9 - 0.1 * ((i + t) % 3) for t in range(steps)], "text_signal": [1] * steps,
            "key": {"model": "m", "layer": 2}, **extra}


# ------------------------------------------------------------------------------------------ error boundary
def test_internal_error_is_one_line_with_a_saved_traceback(monkeypatch, tmp_path, capsys) -> None:
    import sri.cli.pipeline as pipeline_cli

    def boom():
        raise RuntimeError("something inside broke\nsecond line")

    monkeypatch.setattr(pipeline_cli, "_registries", boom)
    monkeypatch.setenv("SRI_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SRI_DEBUG", raising=False)
    res = run_cli(["ls"], capsys)
    assert_one_line_error(res, "internal error", code=1)
    assert "RuntimeError: something inside broke" in res.err and "second line" not in res.err
    saved = list((tmp_path / "home" / "logs").glob("sri-crash-*.txt"))
    assert len(saved) == 1 and str(saved[0]) in res.err
    assert "Traceback" in saved[0].read_text() and "second line" in saved[0].read_text()

    shown = run_cli(["--debug", "ls"], capsys)
    assert shown.code == 1 and "Traceback" in shown.err and "RuntimeError" in shown.err
    monkeypatch.setenv("SRI_DEBUG", "1")
    assert "Traceback" in run_cli(["ls"], capsys).err


def test_user_and_usage_errors_are_one_line_exit_2(monkeypatch, capsys) -> None:
    monkeypatch.delenv("SRI_DEBUG", raising=False)
    assert_one_line_error(run_cli(["ls", "nothing"], capsys), "error: 'nothing' is not a kind")
    assert_one_line_error(run_cli(["trace", "--stepz", "3"], capsys), "No such option: --stepz")
    assert_one_line_error(run_cli(["trace", "--prompts", "x", "--out", "y", "--steps", "abc"], capsys), "--steps")
    assert_one_line_error(run_cli(["nosuchcommand"], capsys), "nosuchcommand")
    markup = run_cli(["ls", "[bold]x[/bold]"], capsys)  # user text is never rich markup
    assert_one_line_error(markup, "'[bold]x[/bold]' is not a kind")
    debug = run_cli(["--debug", "ls", "nothing"], capsys)
    assert debug.code == 2 and "Traceback" in debug.err and debug.err.rstrip().splitlines()[-1].startswith("error:")


def test_os_errors_about_paths_are_user_errors(tmp_path, capsys) -> None:
    long = "x" * 300
    res = run_cli(["trace", "--prompts", long, "--out", str(tmp_path / "o")], capsys)
    assert_one_line_error(res, "the path is too long")
    assert not (tmp_path / "o").exists()
    res = run_cli(["trace", "--prompts", str(tmp_path / "p.jsonl"), "--out", str(tmp_path / long)], capsys)
    assert_one_line_error(res, "the path is too long")


# ------------------------------------------------------------------------------------------ kind 1: encodings
def test_bom_is_stripped_in_every_format(tmp_path) -> None:
    from sri.data.prompts import load_prompts

    bom = b"\xef\xbb\xbf"
    (tmp_path / "p.txt").write_bytes(bom + b"hello there\n")
    (tmp_path / "p.csv").write_bytes(bom + b"prompt,label\nhello there,x\n")
    (tmp_path / "p.jsonl").write_bytes(bom + b'{"prompt": "hello there"}\n')
    for name in ("p.txt", "p.csv", "p.jsonl"):
        assert [r.prompt for r in load_prompts(tmp_path / name)] == ["hello there"], name
    assert load_prompts(tmp_path / "p.csv")[0].label == "x"  # the BOM no longer hides the first column


def test_undecodable_bytes_name_file_line_and_offset(tmp_path, capsys) -> None:
    from sri.data.prompts import load_prompts

    f = tmp_path / "p.jsonl"
    f.write_bytes(b'{"prompt": "fine"}\n{"prompt":"caf\xe9"}\n')
    with pytest.raises(SriError, match=r"p.jsonl:2 is not valid UTF-8: byte 0xe9 at column 15, byte offset 33"):
        load_prompts(f)
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(b"# r\xe9sum\xe9 of the run\nname: x\n")
    assert_one_line_error(run_cli(["validate", str(cfg)], capsys), "c.yaml:1 is not valid UTF-8")
    assert_one_line_error(run_cli(["judge", "--input", str(f)], capsys), "p.jsonl:2 is not valid UTF-8")


# ------------------------------------------------------------------------------------------ kind 6: mathtext
def test_user_text_is_never_mathtext(tmp_path, capsys) -> None:
    rows = [_signal_row(i, label=r"$\foo$", refused=i % 2 == 0, response=r"cost: $\frac{$ and $\foo$")
            for i in range(4)]
    write_jsonl(tmp_path / "s.jsonl", rows)
    res = run_cli(["plot", "--signals", str(tmp_path / "s.jsonl"), "--out", str(tmp_path / "f.png"),
                   "--title", r"$\foo$ and $\bar{$"], capsys)
    assert res.code == 0, res.err
    assert (tmp_path / "f.png").stat().st_size > 0
    run = tmp_path / "run"
    write_jsonl(run / "signals.jsonl", [{**r, "group": r"$\group$"} for r in rows])
    res = run_cli(["report", str(run), "--panels", "2"], capsys)
    assert res.code == 0, res.err
    assert (run / "report.html").is_file()


# ------------------------------------------------------------------------------------------ kind 7: analysis
@pytest.mark.parametrize("n", [2, 3, 4])
def test_lda_on_a_few_signals_is_skipped_and_said(tmp_path, capsys, n) -> None:
    run = tmp_path / "run"
    labels = ["harmless", "harmful", "jailbreak"]
    write_jsonl(run / "signals.jsonl", [_signal_row(i, label=labels[i % 3], refused=i == 1) for i in range(n)])
    res = run_cli(["analyze", str(run), "--bootstrap", "40"], capsys)
    assert res.code == 0, res.err
    assert "LDA skipped:" in res.err
    analysis = json.loads((run / "analysis.json").read_text())
    assert analysis["geometry"] is None and "too few" in analysis["geometry_skipped"]
    res = run_cli(["report", str(run), "--panels", "1"], capsys)
    assert res.code == 0, res.err
    assert "LDA skipped:" in (run / "report.html").read_text()


def test_malformed_signal_rows_are_one_line(tmp_path, capsys) -> None:
    good = [_signal_row(i) for i in range(3)]
    bad_value = [*good[:2], {**good[2], "sri": [0.5, "x", 0.1, 0.2]}]
    no_text = [*good[:1], {k: v for k, v in good[1].items() if k != "text_signal"}, good[2]]
    for rows, match in ((bad_value, "s.jsonl:3: 'sri'[1] is 'x', not a finite number"),
                        (no_text, "s.jsonl:2 has no 'text_signal'")):
        write_jsonl(tmp_path / "s.jsonl", rows)
        assert_one_line_error(run_cli(["plot", "--signals", str(tmp_path / "s.jsonl"), "--out",
                                 str(tmp_path / "f.png")], capsys), match)
        assert not (tmp_path / "f.png").exists()
        run = tmp_path / "run"
        write_jsonl(run / "signals.jsonl", rows)
        assert_one_line_error(run_cli(["analyze", str(run)], capsys), match.replace("s.jsonl", "signals.jsonl"))
        assert_one_line_error(run_cli(["report", str(run)], capsys), match.replace("s.jsonl", "signals.jsonl"))
        assert not (run / "report.html").exists()
    write_jsonl(tmp_path / "s.jsonl", bad_value)
    assert_one_line_error(run_cli(["guard", "fit", "--benign", str(tmp_path / "s.jsonl"), "--calibrate",
                             str(tmp_path / "s.jsonl"), "--out", str(tmp_path / "g")], capsys), "'sri'[1] is 'x'")
    assert not (tmp_path / "g").exists()
    assert_one_line_error(run_cli(["guard", "score", "--guard", str(tmp_path / "g"), "--signals",
                             str(tmp_path / "s.jsonl")], capsys))
    with pytest.raises(SriError, match=r":2: 'refused' must be true or false"):
        write_jsonl(tmp_path / "r.jsonl", [good[0], {**good[1], "refused": "no"}])
        read_signal_rows(tmp_path / "r.jsonl")


def test_judge_on_an_empty_file_says_zero_rows(tmp_path, capsys) -> None:
    (tmp_path / "empty.jsonl").write_text("")
    res = run_cli(["judge", "--input", str(tmp_path / "empty.jsonl"), "--out", str(tmp_path / "j.jsonl")], capsys)
    assert res.code == 0, res.err
    assert "0/0 refusals (0 rows in" in res.err and "ZeroDivision" not in res.err
    assert (tmp_path / "j.jsonl").read_text() == ""


# ------------------------------------------------------------------------------------------ kind 8: numbers, names
@pytest.mark.parametrize("value", ["-1", "0"])
def test_max_prompts_must_be_positive(tmp_path, capsys, value) -> None:
    (tmp_path / "p.jsonl").write_text('{"prompt": "a"}\n{"prompt": "b"}\n')
    res = run_cli(["trace", "--prompts", str(tmp_path / "p.jsonl"), "--out", str(tmp_path / "o"),
                   "--max-prompts", value], capsys)
    assert_one_line_error(res, "'--max-prompts': " + value + " is out of range; give a number ≥ 1")
    assert not (tmp_path / "o").exists()


#: (command, option, a bad value, the start of the rule in the message) for every numeric option
NUMERIC = [
    (["trace"], "--steps", "0", "≥ 1"), (["trace"], "--batch-size", "-2", "≥ 1"),
    (["trace"], "--seed", "-1", "[0, 4294967295]"),
    (["trace"], "--temperature", "nan", "finite"), (["trace"], "--temperature", "-0.5", "≥ 0"),
    (["trace"], "--top-k", "-1", "≥ 0"), (["trace"], "--top-p", "0", "in (0, 1]"),
    (["trace"], "--top-p", "1.01", "in (0, 1]"), (["trace"], "--eps", "0", "in (0, 1)"),
    (["trace"], "--alg-temp", "inf", "finite"), (["trace"], "--gen-length", "0", "≥ 1"),
    (["trace"], "--block-length", "-4", "≥ 1"), (["trace"], "--cfg-scale", "-1", "≥ 0"),
    (["trace"], "--mask-id", "-5", "≥ 0"), (["trace"], "--max-prompt-tokens", "0", "≥ 1"),
    (["trace"], "--gpus-per-worker", "-1", "≥ 0"), (["trace"], "--max-failed-batches", "-1", "≥ 0"),
    (["signal"], "--layer", "-2", "≥ -1"),
    (["attack"], "--max-prompts", "0", "≥ 1"), (["attack"], "--shuffle-seed", "-1", "[0, 4294967295]"),
    (["attack"], "--seed", "-1", "[0, 4294967295]"),
    (["judge-llm"], "--threshold", "1.5", "in [0, 1)"), (["judge-llm"], "--max-chars", "0", "≥ 1"),
    (["judge-llm"], "--batch-size", "0", "≥ 1"),
    (["judge-calibrate"], "--max-rows", "0", "≥ 1"), (["judge-calibrate"], "--seed", "-1", "[0, 4294967295]"),
    (["analyze"], "--lambda-c", "2", "in (0, 1)"), (["analyze"], "--lambda-r", "-0.1", "in (0, 1)"),
    (["analyze"], "--lambda-dip", "nan", "finite"), (["analyze"], "--bootstrap", "-1", "[0, 100000]"),
    (["analyze"], "--bootstrap", str(2**70), "[0, 100000]"),
    (["report"], "--panels", "0", "≥ 1"),
    (["guard", "fit"], "--quantile", "1", "in (0, 1)"), (["guard", "fit"], "--quantile", "0", "in (0, 1)"),
    (["guard", "fit"], "--min-prefix", "0", "≥ 1"), (["guard", "fit"], "--stream-every", "0", "≥ 1"),
    (["dlm", "build"], "--steps", "0", "≥ 1"), (["dlm", "build"], "--lr", "0", "> 0"),
    (["dlm", "build"], "--minutes", "-1", "> 0"), (["dlm", "build"], "--threads", "0", "[1, 4096]"),
    (["trace"], "--seed", str(2**70), "[0, 4294967295]"), (["trace"], "--threads", str(2**70), "[1, 4096]"),
    (["guard", "fit"], "--seed", str(2**32), "[0, 4294967295]"),
    (["dlm", "build"], "--n-harmless", "-762", "≥ 1"), (["dlm", "gate", "m"], "--n-prompts", "0", "≥ 1"),
    (["dlm", "gate", "m"], "--block-length", "0", "≥ 1"), (["dlm", "distill"], "--n-harmful", "0", "≥ 1"),
]


@pytest.mark.parametrize(("command", "option", "value", "rule"), NUMERIC, ids=lambda v: str(v))
def test_every_numeric_option_has_its_range(capsys, command, option, value, rule) -> None:
    res = run_cli([*command, f"{option}={value}"], capsys)  # checked before any missing option or argument
    assert_one_line_error(res, f"'{option}'")
    assert rule in res.err, res.err


def test_names_never_escape_the_output_folder(tmp_path, capsys) -> None:
    (tmp_path / "p.jsonl").write_text('{"prompt": "a"}\n')
    res = run_cli(["attack", "-a", "../../x", "--prompts", str(tmp_path / "p.jsonl"), "--out",
                   str(tmp_path / "out" / "a.jsonl")], capsys)
    assert_one_line_error(res, "attack '../../x' is unknown")
    assert not (tmp_path / "out").exists() and not (tmp_path.parent / "x").exists()
    for name in ("../x", "a/b", "..", ".hidden", "", "a\\b"):
        with pytest.raises(SriError, match="cannot be used as a file name"):
            safe_child(tmp_path, name, ".jsonl")
    assert safe_child(tmp_path, "flip", ".jsonl") == tmp_path / "flip.jsonl"
    from sri.registry import Registry

    with pytest.raises(ValueError, match="no path"):
        Registry("attack").add("../evil", object())


# ------------------------------------------------------------------------------------------ kind 12: messages
def test_messages_say_what_is_wrong(tiny_llama_dir, tmp_path, capsys) -> None:
    (tmp_path / "p.jsonl").write_text('{"prompt": "hello"}\n')
    (tmp_path / "dir").mkdir()
    res = run_cli(["trace", "--model", str(tiny_llama_dir), "--prompts", str(tmp_path / "dir"), "--out",
                   str(tmp_path / "o")], capsys)
    assert_one_line_error(res, "is a directory")
    assert "does not exist" not in res.err
    res = run_cli(["trace", "--model", str(tiny_llama_dir), "--prompts", str(tmp_path / "p.jsonl"), "--out",
                   str(tmp_path / "o"), "--steps", "10000000"], capsys)
    assert_one_line_error(res, "lower --steps")
    assert "shorten the prompt" not in res.err and "10000000" in res.err
    assert not (tmp_path / "o").exists()


def test_remote_code_refusal_on_the_ar_path_names_the_flag(tmp_path, capsys) -> None:
    from tests.tiny_models import build_tiny_remote_llada

    remote = build_tiny_remote_llada(tmp_path / "remote")
    (tmp_path / "p.jsonl").write_text('{"prompt": "hello"}\n')
    res = run_cli(["trace", "--model", str(remote), "--prompts", str(tmp_path / "p.jsonl"), "--out",
                   str(tmp_path / "o")], capsys)
    assert_one_line_error(res, "--trust-remote-code")
    assert not (tmp_path / "o").exists()


def test_layer_minus_one_is_final(tiny_llama, tmp_path) -> None:
    import torch

    from sri.data.prompts import PromptRecord
    from sri.sampling import ARConfig
    from sri.signal import Anchors, compute_signals
    from sri.tracing.tracer import trace_key, trace_prompts

    store = trace_prompts(tiny_llama, [PromptRecord(id="a", prompt="hi")], tmp_path / "t",
                          sampler=ARConfig(steps=3), layers="final", batch_size=1)
    layer = tiny_llama.num_layers
    key = trace_key(tiny_llama, ARConfig(steps=3), [layer], "producing")
    g = torch.Generator().manual_seed(0)
    anchors = Anchors({layer: torch.randn(3, tiny_llama.hidden_size, generator=g)},
                      {layer: torch.randn(3, tiny_llama.hidden_size, generator=g)}, key, {"counts": {}})
    final = compute_signals(anchors, store, None)
    assert compute_signals(anchors, store, -1) == final
    assert final[0]["key"]["layer"] == layer


# ------------------------------------------------------------------------------------------ kind 14: help
def _commands(group, path=()):
    for name, cmd in sorted(group.commands.items()):
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, (*path, name))
        else:
            yield (*path, name), cmd


def test_help_in_80_columns_shows_every_option_name(monkeypatch, capsys) -> None:
    import typer

    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setenv("TERMINAL_WIDTH", "80")
    commands = list(_commands(typer.main.get_command(app)))
    assert len(commands) >= 20
    for path, cmd in commands:
        res = run_cli([*path, "--help"], capsys)
        assert res.code == 0, (path, res.err)
        for param in cmd.params:
            for name in (*param.opts, *param.secondary_opts):
                if name.startswith("-"):
                    assert name in res.out, (path, name, res.out)
    trace = run_cli(["trace", "--help"], capsys).out
    assert "--trust-remote-code" in trace and "--no-trust-remote-code" in trace
