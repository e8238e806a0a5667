"""Atomic file writes and JSON/JSONL helpers: a file is either complete on disk or absent."""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import SriError

_SURROGATE = re.compile("[\ud800-\udfff]")


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False, default=_jsonable) + "\n")


def write_jsonl(path: str | os.PathLike[str], rows: Iterable[dict[str, Any]]) -> None:
    lines = [json.dumps(r, ensure_ascii=False, default=_jsonable) for r in rows]
    write_text_atomic(path, "".join(line + "\n" for line in lines))


def read_text(path: str | os.PathLike[str]) -> str:
    """A UTF-8 text file's contents; a missing file or bytes that are not UTF-8 are a one-line error (with the
    line number)."""
    path = Path(path)
    if not path.is_file():
        raise SriError(f"file {path} does not exist; check the path")
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise SriError(f"{path}:{line} is not valid UTF-8 (byte 0x{raw[e.start]:02x}); save the file as "
                       "UTF-8") from None


def lone_surrogate(obj: Any, where: str = "") -> tuple[str, str] | None:
    """``(where, escape)`` of the first lone UTF-16 surrogate (e.g. a JSON ``"\\ud83d"`` without its pair) in a
    string or in the keys/values of nested dicts and lists — ``where`` like ``prompt``, ``meta.note`` or
    ``turns[1]`` — or ``None`` if all text is valid Unicode."""
    if isinstance(obj, str):
        m = _SURROGATE.search(obj)
        return None if m is None else (where, f"\\u{ord(m.group()):04x}")
    if isinstance(obj, dict):
        for key, value in obj.items():
            inner = f"{where}.{key}" if where else str(key)
            found = lone_surrogate(key, f"the key of {inner}") or lone_surrogate(value, inner)
            if found is not None:
                return found
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            found = lone_surrogate(value, f"{where}[{i}]")
            if found is not None:
                return found
    return None


def check_text(text: str, what: str) -> None:
    """Refuse text holding a lone surrogate: no tokenizer can encode it and it cannot be written as UTF-8."""
    found = lone_surrogate(text)
    if found is not None:
        raise SriError(f"{what} holds a lone surrogate ({found[1]}), which is not valid Unicode text; remove it or "
                       "give the full character (both halves of a surrogate pair)")


def read_json(path: str | os.PathLike[str]) -> Any:
    path = Path(path)
    text = read_text(path)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise SriError(f"{path} is not valid JSON (line {e.lineno}: {e.msg}); fix or regenerate it") from None
    found = lone_surrogate(obj)
    if found is not None:
        raise SriError(f"{path}: {found[0] or 'the text'} holds a lone surrogate ({found[1]}), which is not valid "
                       "Unicode text; remove it or give the full character")
    return obj


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """One JSON object per line (blank lines skipped). Invalid JSON, non-objects, bytes that are not UTF-8 and
    text that is not valid Unicode (lone surrogates) are one-line errors naming the file and line."""
    path = Path(path)
    rows = []
    for n, line in enumerate(read_text(path).split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise SriError(f"{path}:{n} is not valid JSON ({e.msg}); fix or regenerate the file") from None
        if not isinstance(row, dict):
            raise SriError(f"{path}:{n} is not a JSON object; each line must be one object")
        if "\\u" in line:  # only a JSON escape can put a lone surrogate into text decoded as UTF-8
            found = lone_surrogate(row)
            if found is not None:
                raise SriError(f"{path}:{n}: {found[0]} holds a lone surrogate ({found[1]}), which is not valid "
                               "Unicode text; fix that line (give the full character or remove the escape)")
        rows.append(row)
    return rows


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
