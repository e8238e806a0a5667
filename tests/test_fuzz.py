"""Fuzz suite (issue 11): generated prompt files, run configs and command-line arguments through the CLI runner.

Every example holds the CLI's promises: exit 0 when the input is valid, else exit 2 with exactly one error line;
never a traceback or an internal error; nothing written to ``--out`` on failure. Bounded (few examples, no
deadline) so the module runs in a couple of minutes on a 2-core machine; ``HYPOTHESIS_PROFILE=long`` runs more.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.cli_helpers import CliResult, run_cli

#: examples per test are multiplied by SRI_FUZZ_SCALE (default 1: the bounded suite of `make test`)
SCALE = max(1, int(os.environ.get("SRI_FUZZ_SCALE", "1") or 1))
FUZZ = settings(deadline=None, derandomize=SCALE == 1, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large, HealthCheck.filter_too_much])


def examples(n: int) -> settings:
    return settings(FUZZ, max_examples=n * SCALE)


_counter = itertools.count()

#: text as it can arrive from a real command line or file: no NUL (argv cannot hold one); lone surrogates only
#: in the surrogateescape range (undecodable argv bytes)
_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=30) | \
    st.sampled_from(["../../x", "..", ".", "/", "a/b", "~", "-", "--help", "$\\foo$", "[bold]x", "\udcff", " ",
                     "\n", "x" * 300, "café", "😀", "-1", "nan", "inf", "1e309", "0x10", "１"])


def _fresh(tmp_path: Path) -> Path:
    folder = tmp_path / f"ex{next(_counter)}"
    folder.mkdir()
    return folder


def _check(res: CliResult, out: Path | None, *, valid: bool | None) -> None:
    """The promises: 0 or 2; on 2 one line starting 'error:' and nothing at ``out``; never a traceback."""
    text = res.err + res.out
    assert "Traceback" not in text, text
    assert "internal error" not in text, text
    assert res.code in (0, 2), (res.code, text)
    if valid is not None:
        assert res.code == (0 if valid else 2), (res.code, text)
    if res.code == 2:
        assert len(res.error_lines) == 1, res.err
        assert res.error_lines[0].startswith("error:"), res.err
        if out is not None:
            assert not out.exists(), f"{out} written by a failed command: {res.err}"


# ------------------------------------------------------------------------------------------ prompt files
_FIELD = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True), _TEXT,
                   st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
_PROMPT = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40)


@st.composite
def prompt_files(draw) -> tuple[str, bytes, bool | None]:
    """``(suffix, bytes, valid)``: valid True/False when the generator knows, None when it may be either."""
    kind = draw(st.sampled_from(["random", "jsonl", "jsonl-typed", "csv", "txt", "encoded", "huge"]))
    bom = draw(st.booleans())
    prefix = b"\xef\xbb\xbf" if bom else b""
    if kind == "random":
        suffix = draw(st.sampled_from([".jsonl", ".csv", ".txt", ".json", ".bin"]))
        return suffix, draw(st.binary(max_size=200)), None
    if kind == "jsonl":  # well-formed rows with real prompts: valid
        prompts = draw(st.lists(_PROMPT.filter(lambda p: p.strip()), min_size=1, max_size=3))
        rows = [{"id": f"r{i}", "prompt": p} for i, p in enumerate(prompts)]
        return ".jsonl", prefix + "".join(json.dumps(r) + "\n" for r in rows).encode(), True
    if kind == "jsonl-typed":  # a prompt of the wrong type, or missing: invalid
        row = draw(st.dictionaries(st.sampled_from(["id", "label", "source", "meta"]), _FIELD, max_size=3))
        bad = draw(st.one_of(st.none(), st.booleans(), st.integers(), st.lists(_TEXT, max_size=2), st.just("  ")))
        if bad is not None:
            row["prompt"] = bad
        return ".jsonl", prefix + (json.dumps(row) + "\n").encode(), False
    if kind == "csv":
        header = draw(st.sampled_from(["prompt", "prompt,label", "text,label", "Prompt", "prompt;label", ""]))
        cells = draw(st.lists(_PROMPT.filter(lambda p: p.strip() and not set(p) & set(",;\"\r\n\x00")),
                              min_size=1, max_size=3))
        body = "".join(c + ("," + "x" if "," in header else "") + "\n" for c in cells)
        valid = header.split(",")[0] == "prompt" and ";" not in header
        return ".csv", prefix + (header + "\n" + body).encode(), valid
    if kind == "txt":
        lines = draw(st.lists(_PROMPT.filter(lambda p: "\n" not in p and "\r" not in p), min_size=1, max_size=3))
        valid = any(line.strip() for line in lines) and not any(
            ch in line for line in lines for ch in "\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")
        return ".txt", prefix + "\n".join(lines).encode() + b"\n", valid or None
    if kind == "encoded":  # the same valid row in another encoding: Latin-1 / UTF-16 bytes are one-line errors
        encoding = draw(st.sampled_from(["latin-1", "utf-16", "cp1252", "utf-8"]))
        text = '{"prompt": "caf\u00e9 cr\u00e8me"}\n'
        return ".jsonl", text.encode(encoding), encoding == "utf-8"
    # huge: one very long line, over --max-prompt-tokens
    n = draw(st.integers(5_000, 60_000))
    return ".txt", prefix + b"word " * (n // 5) + b"\n", False


@given(case=prompt_files())
@examples(24)
def test_fuzz_prompt_files_through_trace(case, tiny_llama_dir, tmp_path, capsys) -> None:
    suffix, data, valid = case
    folder = _fresh(tmp_path)
    src = folder / f"prompts{suffix}"
    src.write_bytes(data)
    out = folder / "out"
    res = run_cli(["trace", "--model", str(tiny_llama_dir), "--prompts", str(src), "--out", str(out),
                   "--steps", "2", "--max-prompts", "2", "--batch-size", "2", "--max-prompt-tokens", "256",
                   "--device", "cpu", "--dtype", "fp32"], capsys)
    _check(res, out, valid=valid)
    if res.code == 0:
        assert (out / "run.json").is_file()


# ------------------------------------------------------------------------------------------ configs
@pytest.fixture(scope="module")
def config_inputs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz-config")
    (folder / "harmless.jsonl").write_text("".join(json.dumps({"id": f"h{i}", "prompt": f"Tell me about cats {i}"})
                                                   + "\n" for i in range(12)))
    (folder / "harmful.jsonl").write_text("".join(json.dumps({"id": f"x{i}", "prompt": f"Do bad thing {i}"})
                                                  + "\n" for i in range(12)))
    return folder


def _base_config(inputs: Path, model: str) -> dict[str, Any]:
    return {"name": "fuzz", "model": model, "device": "cpu", "dtype": "fp32",
            "sampler": {"kind": "ar", "steps": 2}, "batch_size": 2, "seed": 0,
            "prompts": {"anchor_harmless": {"dataset": str(inputs / "harmless.jsonl"), "n": 2},
                        "anchor_harmful": {"dataset": str(inputs / "harmful.jsonl"), "n": 2},
                        "harmless": {"dataset": str(inputs / "harmless.jsonl"), "n": 2},
                        "harmful": {"dataset": str(inputs / "harmful.jsonl"), "n": 2}},
            "analysis": {"bootstrap": 40}}


#: (dotted path, values that are always wrong there)
_WRONG = {
    "batch_size": [0, -1, "8", 2.5, None, [], True],
    "seed": [-1, "0", 0.5, None],
    "sampler.steps": [0, -3, "32", 1.5, None],
    "sampler.temperature": [-0.1, float("nan"), float("inf"), "hot", None],
    "sampler.top_p": [0, 1.5, -1, "1"],
    "sampler.top_k": [-1, "x", 0.5],
    "prompts.harmless.n": [0, -1, "2", 2.0, None],
    "prompts.harmful.dataset": [5, None, ["a"]],
    "analysis.bootstrap": [-1, "many", None],
    "name": ["../x", "a/b", ".hidden", "", "x" * 200, 7, None, "$\\foo$"],
    "dtype": ["fp8", 16, None],
    "device": ["gpu", "cuda:x", 0],
    "attacks": [[{"name": "../../x"}], [{"name": "flip", "n": -1}], [{"name": "flip", "options": {"zzz": 1}}],
                "flip", 5, [5]],
    "samplers": [{"../x": {"kind": "ar"}}, {"a": {"kind": "nope"}}, {"a": 5}],
    "defenses": [5, "all", {"names": ["../x"]}],
}
_SECTIONS = ["", "sampler", "prompts", "prompts.harmless", "analysis"]


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    *parents, last = dotted.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value


@st.composite
def configs(draw) -> tuple[str, Any, bool]:
    """``(mutation kind, mutation, valid)``."""
    kind = draw(st.sampled_from(["wrong", "unknown-key", "raw", "valid"]))
    if kind == "wrong":
        path = draw(st.sampled_from(sorted(_WRONG)))
        return kind, (path, draw(st.sampled_from(_WRONG[path]))), False
    if kind == "unknown-key":
        section = draw(st.sampled_from(_SECTIONS))
        key = draw(st.text(st.characters(min_codepoint=97, max_codepoint=122), min_size=1, max_size=8))
        assume(key not in {"name", "model", "device", "dtype", "seed", "sampler", "samplers", "layers", "pooling",
                           "prompts", "attacks", "controls", "attacker", "judge", "guard", "defenses", "analysis",
                           "steps", "temperature", "top_k", "top_p", "kind", "dataset", "n", "where", "bootstrap",
                           "stop_tokens", "execution", "harmless", "harmful", "overrefusal", "panels"})
        return kind, (f"{section}.{key}" if section else key, draw(_FIELD)), False
    if kind == "raw":
        raw = draw(st.sampled_from([b"", b"- a\n- b\n", b"just text\n", b"name: [unclosed\n", b"\x00\x01",
                                    b"!!python/object:os.system {}\n", b"name: x\n\tbad: tab\n",
                                    b"# caf\xe9 (Latin-1 comment)\nname: x\n", b"\xff\xfe{\x00", b"a: &a [*a]\n"]))
        return kind, raw, False
    return kind, draw(st.sampled_from(["plain", "bom", "comment"])), True


@given(case=configs())
@examples(30)
def test_fuzz_configs_through_validate_and_run(case, config_inputs, tiny_llama_dir, tmp_path, capsys) -> None:
    kind, mutation, valid = case
    folder = _fresh(tmp_path)
    data = _base_config(config_inputs, str(tiny_llama_dir))
    path = folder / "config.yaml"
    if kind == "raw":
        path.write_bytes(mutation)
    else:
        if kind in ("wrong", "unknown-key"):
            _set(data, *mutation)
        text = yaml.safe_dump(data, allow_unicode=True).encode()
        if mutation == "bom":
            text = b"\xef\xbb\xbf" + text
        elif mutation == "comment":
            text = "# résumé — commentaire\n".encode() + text
        path.write_bytes(text)
    _check(run_cli(["validate", str(path)], capsys), None, valid=valid)
    if not valid:  # a failed run writes nothing (a valid one would run the whole pipeline: not here)
        out = folder / "run"
        _check(run_cli(["run", "--config", str(path), "--out", str(out)], capsys), out, valid=False)


# ------------------------------------------------------------------------------------------ CLI arguments
#: (command prefix, option, check(value) → in range?) — numeric options; the rest of each command line is
#: chosen so a value in range fails later, cheaply, with a one-line user error (a missing input).
_NUMBERS = [
    (["trace"], "--steps", lambda v: v >= 1), (["trace"], "--batch-size", lambda v: v >= 1),
    (["trace"], "--max-prompts", lambda v: v >= 1), (["trace"], "--seed", lambda v: v >= 0),
    (["trace"], "--temperature", lambda v: v >= 0), (["trace"], "--top-p", lambda v: 0 < v <= 1),
    (["trace"], "--top-k", lambda v: v >= 0), (["trace"], "--max-prompt-tokens", lambda v: v >= 1),
    (["trace"], "--max-failed-batches", lambda v: v >= 0),
    (["attack", "-a", "flip"], "--max-prompts", lambda v: v >= 1), (["attack", "-a", "flip"], "--seed",
                                                                     lambda v: v >= 0),
    (["analyze"], "--lambda-c", lambda v: 0 <= v <= 1), (["analyze"], "--bootstrap", lambda v: v == 0 or v >= 40),
    (["report"], "--panels", lambda v: v >= 1),
    (["guard", "fit"], "--quantile", lambda v: 0 < v < 1), (["guard", "fit"], "--min-prefix", lambda v: v >= 1),
    (["judge-llm"], "--threshold", lambda v: 0 <= v <= 1), (["judge-llm"], "--batch-size", lambda v: v >= 1),
    (["signal"], "--layer", lambda v: v >= -1),
]


def _rest(command: list[str], folder: Path) -> tuple[list[str], Path | None]:
    """The rest of a command line that makes an in-range value fail later with a one-line user error."""
    missing = str(folder / "missing.jsonl")
    out = folder / "out"
    if command[0] == "trace":
        return ["--prompts", missing, "--out", str(out)], out
    if command[0] == "attack":
        return ["--prompts", missing, "--out", str(out / "a.jsonl")], out
    if command[0] in ("analyze", "report"):
        return [str(folder / "no-run")], folder / "no-run"
    if command[0] == "guard":
        return ["--benign", missing, "--calibrate", missing, "--out", str(out)], out
    if command[0] == "judge-llm":
        return ["--input", missing, "--out", str(out / "j.jsonl")], out
    return ["--anchors", str(folder / "missing.safetensors"), "--traces", str(folder / "t"), "--out",
            str(out / "s.jsonl")], out


_NUMBER_TEXT = st.one_of(st.integers(-10**12, 10**12).map(str), st.floats(allow_nan=True, allow_infinity=True).map(
    repr), st.sampled_from(["", "1e3", "0x10", "1_000", " 3", "３", "true", "-0", "+5", "1.0"]), _TEXT)


def _number(text: str) -> float | None:
    """The number ``text`` names (Python's reading), or None; typer may refuse more (``1.5`` for an int)."""
    try:
        return float(text)
    except ValueError:
        return None


@given(spec=st.sampled_from(_NUMBERS), value=_NUMBER_TEXT)
@examples(60)
def test_fuzz_numeric_arguments(spec, value, tmp_path, capsys) -> None:
    command, option, in_range = spec
    folder = _fresh(tmp_path)
    rest, out = _rest(command, folder)
    res = run_cli([*command, f"{option}={value}", *rest], capsys)
    _check(res, out, valid=False)  # in range: the missing input; out of range or not a number: the option
    number = _number(value)
    if number is not None and (number != number or abs(number) == float("inf") or not in_range(number)):
        assert f"Invalid value for '{option}'" in res.err, res.err  # refused as the option, not later


_NAME_OPTIONS = [
    (["attack", "--prompts", "P", "--out", "OUT/a.jsonl"], "-a"),
    (["trace", "--prompts", "P", "--out", "OUT", "--model", "NOMODEL"], "--sampler"),
    (["trace", "--prompts", "P", "--out", "OUT", "--model", "NOMODEL"], "--pooling"),
    (["trace", "--prompts", "P", "--out", "OUT", "--model", "NOMODEL"], "--layers"),
    (["guard", "fit", "--benign", "P", "--calibrate", "P", "--out", "OUT"], "--detector"),
    (["guard", "fit", "--benign", "P", "--calibrate", "P", "--out", "OUT"], "--stream"),
    (["ls"], None),
    (["trace", "--out", "OUT", "--model", "NOMODEL"], "--prompts"),
    (["judge", "--input", "P"], "--field"),
]


@given(spec=st.sampled_from(_NAME_OPTIONS), name=_TEXT)
@examples(60)
def test_fuzz_names(spec, name, tmp_path, capsys) -> None:
    """Names (attacks, samplers, poolings, layers, detectors, kinds, prompt sources, fields) never escape --out,
    never crash: with an empty prompt file everything fails with one line and writes nothing."""
    template, option = spec
    folder = _fresh(tmp_path)
    prompts = folder / "p.jsonl"
    prompts.write_text('{"prompt": "hello"}\n{"prompt": "   "}\n')  # row 2 is invalid: a valid name still fails
    out = folder / "out"
    args = [str(prompts) if a == "P" else str(folder / "no-model") if a == "NOMODEL" else
            a.replace("OUT", str(out)) for a in template]
    args += [name] if option is None else [f"{option}={name}"]
    res = run_cli(args, capsys)
    _check(res, out, valid=None)
    assert not (folder.parent / "x").exists()
    if template[0] not in ("ls", "judge"):
        assert res.code == 2, res.err
