"""Atomic file writes and JSON/JSONL helpers: a file is either complete on disk or absent."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import stat
import sys
import tempfile
import threading
import unicodedata
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from .errors import SriError

_SURROGATE = re.compile("[\ud800-\udfff]")


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds.

    The file gets the permissions any new file would get under the process's umask (``0o666 & ~umask``), not
    mkstemp's private 0600, so collaborators can read what sri writes wherever the umask lets them.
    """
    path = Path(path)
    check_output_file(path, "output")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise SriError(f"cannot write {path} ({e.strerror or e}); choose another output path or fix the "
                       "permissions of its folder") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # after the block: writers such as safetensors replace the file rather than write into it
        os.chmod(tmp_path, 0o666 & ~current_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def current_umask() -> int:
    """The process's umask, read without changing it where the OS allows (Linux: /proc/self/status)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:  # os.umask can only be read by setting it; restore it at once
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


_UMASK_LOCK = threading.Lock()


def honour_umask(folder: str | os.PathLike[str]) -> None:
    """Give every file and folder under ``folder`` (itself included) the mode the umask asks for (0666/0777 minus
    the umask). For trees written by other libraries: safetensors writes its files 0600 whatever the umask, so a
    model saved with ``save_pretrained`` could not be read by collaborators."""
    mask = current_umask()
    for root, _, files in os.walk(folder):  # links are not followed
        os.chmod(root, 0o777 & ~mask)
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chmod(path, 0o666 & ~mask)


# ------------------------------------------------------------------------------------------- output paths
def _blocking_file(path: Path) -> Path | None:
    """The first existing ancestor of ``path`` that is not a folder (a file in the way), else None."""
    for parent in reversed(path.parents):
        if parent.exists() and not parent.is_dir():
            return parent
    return None


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(".")


def check_output_file(path: str | os.PathLike[str], option: str = "--out", suffix: str = "") -> Path:
    """Refuse (one line, naming the path and the fix) an output *file* path that cannot be written: a folder
    already there, a file where a parent folder should be, or a folder without write permission. Writes nothing."""
    given = str(path)
    path = Path(path)
    # a trailing "/" means a folder; Path (and the CLI's Path options) drop it, so look at what was typed too
    typed = {given, *(a.split("=", 1)[-1] for a in sys.argv[1:])}
    if given.endswith(("/", os.sep)) or f"{path}/" in typed or path.is_dir():
        example = path / ("out" + suffix)
        if run_folder_above(example) is not None:  # a folder sri manages: a file inside it would be refused too
            raise SriError(f"{option} {path} is a folder that sri manages, but a file is expected here; give a file "
                           f"path outside it such as {path.parent / (path.name + '-out' + suffix)}")
        raise SriError(f"{option} {path} is a folder, but a file is expected here; give a file path such as "
                       f"{example}")
    blocker = _blocking_file(path)
    if blocker is not None:
        raise SriError(f"{option} {path} cannot be created: {blocker} is a file, not a folder; choose another path")
    if path.exists() and not path.is_file():
        raise SriError(f"{option} {path} exists and is not a regular file; choose another path")
    _check_writable(path.parent, path, option)
    return path


def run_folder_above(path: str | os.PathLike[str]) -> tuple[Path, str] | None:
    """The nearest folder strictly above ``path`` that sri manages — a trace folder (``run.json`` + ``shards/``), a
    pipeline run folder (``config.yaml`` + ``provenance.json``), a guard folder (``guard.json`` +
    ``guard.safetensors``) or the asset cache ``$SRI_HOME`` — and its kind, or None. Symbolic links in ``path`` are
    followed too."""
    from .data.assets import sri_home

    home = os.path.realpath(sri_home())
    # the path as written and with its links resolved: a link must not lead into a managed folder unnoticed
    parents = dict.fromkeys([*Path(os.path.abspath(path)).parents, *Path(os.path.realpath(path)).parents])
    for parent in parents:
        if (parent / "run.json").is_file() and (parent / "shards").is_dir():
            return parent, "trace folder"
        if (parent / "config.yaml").is_file() and (parent / "provenance.json").is_file():
            return parent, "pipeline run folder"
        if (parent / "guard.json").is_file() and (parent / "guard.safetensors").is_file():
            return parent, "guard folder"
        if os.path.realpath(parent) == home:
            return parent, "asset cache ($SRI_HOME)"
    return None


def check_not_in_run_folder(path: str | os.PathLike[str], option: str = "--out") -> None:
    """Refuse a user's output path inside a folder sri manages: sri treats what it finds there as its own (a file
    in ``shards/`` would be deleted as a damaged shard, a run folder's files are rewritten)."""
    found = run_folder_above(path)
    if found is not None:
        folder, kind = found
        raise SriError(f"{option} {path} is inside the {kind} {folder}, whose contents sri manages (it could be "
                       "overwritten or deleted); write it outside that folder")


def check_user_file(path: str | os.PathLike[str], option: str = "--out", suffix: str = "") -> Path:
    """:func:`check_output_file` for a path the user gave, also refused inside a folder sri manages."""
    check_not_in_run_folder(path, option)
    return check_output_file(path, option, suffix)


def check_user_dir(path: str | os.PathLike[str], option: str = "--out") -> Path:
    """:func:`check_output_dir` for a folder the user gave, also refused inside a folder sri manages (the folder
    itself may be one: resuming it)."""
    check_not_in_run_folder(path, option)
    return check_output_dir(path, option)


#: files written together: an anchor or guard file's tensors and its JSON description
_COMPANIONS = {".safetensors": ".json", ".json": ".safetensors"}


def check_not_input(path: str | os.PathLike[str], option: str, **inputs: str | os.PathLike[str] | None) -> None:
    """Refuse an output path that writing would let overwrite an input (``inputs``: option name → path): the input
    file itself (also through a link), the file written together with it (``anchors.json`` beside
    ``anchors.safetensors``), or anything inside an input folder."""
    out = os.path.realpath(path)
    for name, given in inputs.items():
        if given is None or not os.path.exists(given):
            continue
        real = os.path.realpath(given)
        if os.path.isdir(real):
            if out == real or out.startswith(real.rstrip(os.sep) + os.sep):
                raise SriError(f"{option} {path} is inside the {name} folder {given}; writing there would change "
                               "the input — choose a path outside it")
            continue
        root, suffix = os.path.splitext(real)
        companion = root + _COMPANIONS[suffix] if suffix in _COMPANIONS else None
        if out == real:
            raise SriError(f"{option} {path} is the {name} file; writing it would overwrite the input — choose "
                           "another output path")
        if out == companion:
            raise SriError(f"{option} {path} is the description written with the {name} file {given}; writing it "
                           "would damage that input — choose another output path")


def check_output_dir(path: str | os.PathLike[str], option: str = "--out") -> Path:
    """Refuse (one line, naming the path and the fix) an output *folder* path that cannot be written: an existing
    file, a file where a parent folder should be, or no write permission. Writes nothing."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise SriError(f"{option} {path} is a file, but a folder is expected here; give a new or existing folder "
                       "path instead")
    blocker = _blocking_file(path)
    if blocker is not None:
        raise SriError(f"{option} {path} cannot be created: {blocker} is a file, not a folder; choose another path")
    _check_writable(path, path, option)
    return path


def _check_writable(where: Path, path: Path, option: str) -> None:
    existing = _nearest_existing(where)
    try:
        name_max = os.pathconf(existing, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    long = next((part for part in path.parts if len(os.fsencode(part)) > name_max), None)
    if long is not None:  # found now, before any parent folder is created for it
        raise SriError(f"{option}: the name {long[:40]}… is {len(os.fsencode(long))} bytes, over this file "
                       f"system's limit of {name_max}; choose a shorter name")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SriError(f"{option} {path} is not writable ({existing} does not allow writing); choose another path "
                       "or fix its permissions")


def safe_child(folder: str | os.PathLike[str], name: str, suffix: str = "") -> Path:
    """``folder / (name + suffix)`` for a ``name`` that came from a config, a registry or an id: one path
    component that stays inside ``folder`` (no separators, no ``..``, no leading dot, nothing empty); anything
    else is a one-line error, so no name can write outside the run folder."""
    text = str(name)
    if (not text or text in (".", "..") or text.startswith(".") or "/" in text or "\\" in text or "\0" in text
            or os.sep in text):
        raise SriError(f"name {text!r} cannot be used as a file name inside {folder} (it must be one path "
                       "component: no '/', '..' or leading '.'); rename it")
    path = Path(folder) / f"{text}{suffix}"
    if os.path.dirname(os.path.normpath(path)) != os.path.normpath(folder):
        raise SriError(f"name {text!r} would leave {folder}; rename it")
    return path


# ------------------------------------------------------------------------------------------- folder locks
class _HeldLock:
    def __init__(self, fd: int) -> None:
        self.fd, self.count = fd, 0


_LOCKS: dict[str, _HeldLock] = {}
_LOCKS_GUARD = threading.Lock()
LOCK_NAME = ".lock"


def acquire_folder_lock(folder: str | os.PathLike[str]) -> str:
    """Take the exclusive writer lock ``folder/.lock`` (``flock``; the kernel drops it when the process dies, so
    a stale lock never blocks). Re-entrant within one process; returns a handle for :func:`release_folder_lock`.
    Another process holding it → one-line :class:`SriError` naming its pid."""
    folder = Path(folder)
    key = os.path.realpath(folder)
    with _LOCKS_GUARD:
        held = _LOCKS.get(key)
        if held is None:
            try:
                folder.mkdir(parents=True, exist_ok=True)
                fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as e:
                raise SriError(f"cannot write {folder} ({e.strerror or e}); choose another --out or fix its "
                               "permissions") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                pid = _read_pid(fd)
                os.close(fd)
                if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise SriError(f"{folder} is being written by another sri process"
                                   f"{f' (pid {pid})' if pid else ''}; wait for it to finish or use another "
                                   "--out") from None
                raise SriError(f"cannot lock {folder} ({e.strerror or e}); use another --out") from None
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            held = _LOCKS[key] = _HeldLock(fd)
        held.count += 1
    return key


def release_folder_lock(key: str) -> None:
    """Release one hold of the lock taken by :func:`acquire_folder_lock` (the last one unlocks)."""
    with _LOCKS_GUARD:
        held = _LOCKS.get(key)
        if held is None:
            return
        held.count -= 1
        if held.count <= 0:
            del _LOCKS[key]
            with suppress(OSError):
                os.ftruncate(held.fd, 0)
            os.close(held.fd)  # closing the descriptor releases the flock


@contextmanager
def folder_lock(folder: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the writer lock of ``folder`` for the block (see :func:`acquire_folder_lock`). A folder the block
    created and left empty (a run that failed before writing anything) is removed again."""
    folder = Path(folder)
    existed = folder.exists()
    key = acquire_folder_lock(folder)
    try:
        yield
    finally:
        sole = getattr(_LOCKS.get(key), "count", 0) == 1
        if sole and not existed and [p.name for p in folder.iterdir()] == [LOCK_NAME]:
            with suppress(OSError):
                (folder / LOCK_NAME).unlink()
                folder.rmdir()
        release_folder_lock(key)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False, default=jsonable) + "\n")


def write_jsonl(path: str | os.PathLike[str], rows: Iterable[dict[str, Any]]) -> None:
    lines = [json.dumps(r, ensure_ascii=False, default=jsonable) for r in rows]
    write_text_atomic(path, "".join(line + "\n" for line in lines))


def missing_file(path: str | os.PathLike[str], what: str, fix: str) -> str:
    """Why the input file ``path`` cannot be read, as one line: a folder, a FIFO/device/socket, a symbolic link
    loop, a broken link, or absent — then ``fix`` (what to do when it is simply absent)."""
    path = Path(path)
    if path.is_dir():
        return f"{what} {path} is a directory, but a file is expected; give the file inside it"
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        if e.errno == errno.ELOOP:
            return f"{what} {path} is a symbolic link loop; point the link at a real file"
        if path.is_symlink():
            return f"{what} {path} is a broken symbolic link (to {os.readlink(path)}); point it at a real file"
    else:
        if not stat.S_ISREG(mode):
            kind = ("a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or
                    stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
            return f"{what} {path} is {kind}, not a regular file; save the input to a file and give that"
    return f"{what} {path} does not exist; {fix}"


def read_text(path: str | os.PathLike[str]) -> str:
    """A UTF-8 text file's contents, without a leading byte-order mark (editors on Windows add one; it would end
    up inside the first prompt or hide a CSV's first column). A missing path, a folder, or bytes that are not
    UTF-8 are a one-line error (the latter naming line, column and byte offset)."""
    path = Path(path)
    if path.is_dir():
        raise SriError(f"{path} is a directory, but a file is expected; give the file inside it")
    if not path.is_file():
        raise SriError(missing_file(path, "file", "check the path"))
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise SriError(f"cannot read {path} ({e.strerror or e}); check its permissions") from None
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
        skipped = 3
    else:
        skipped = 0
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SriError(undecodable_message(path, raw, e.start, skipped)) from None


def undecodable_message(path: str | os.PathLike[str], raw: bytes, start: int, skipped: int = 0) -> str:
    """``path:line`` is not valid UTF-8, with the byte, its column and its byte offset in the file."""
    line = raw.count(b"\n", 0, start) + 1
    column = start - (raw.rfind(b"\n", 0, start) + 1) + 1
    hint = (" (UTF-16 text? save it as UTF-8)" if raw[:2] in (b"\xff\xfe", b"\xfe\xff") or b"\x00" in raw[:64]
            else " (Latin-1 / Windows-1252 text? save it as UTF-8)")
    return (f"{path}:{line} is not valid UTF-8: byte 0x{raw[start]:02x} at column {column}, byte offset "
            f"{start + skipped}{hint}; save the file as UTF-8")


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
    if found is None:
        return
    if "\\udc80" <= found[1] <= "\\udcff":  # how Python passes command-line bytes its locale cannot decode
        raise SriError(f"{what} holds a lone surrogate ({found[1]}), which is how Python passes command-line bytes "
                       f"that are not {sys.getfilesystemencoding()} text; give UTF-8 text under a UTF-8 locale (e.g. "
                       "LC_ALL=C.UTF-8 or PYTHONUTF8=1), or remove it from the text")
    raise SriError(f"{what} holds a lone surrogate ({found[1]}), which is not valid Unicode text; remove it or "
                   "give the full character (both halves of a surrogate pair)")


class _NonStandardJSON(ValueError):
    def __init__(self, name: str, problem: str = "") -> None:
        super().__init__(name)
        self.name = name
        self.problem = problem or (f"it holds {name}, which standard JSON does not allow; write a number or null "
                                   "instead")


def _refuse_constant(name: str) -> Any:
    raise _NonStandardJSON(name)


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _NonStandardJSON(key, f"the key {key!r} is given twice in one object; keep one")
        out[key] = value
    return out


def loads_strict(text: str) -> Any:
    """``json.loads`` refusing what Python's json accepts silently: the non-standard constants ``NaN``,
    ``Infinity`` and ``-Infinity``, and a key given twice in one object (the last would win). Raised as
    :class:`ValueError` whose ``problem`` says which."""
    return json.loads(text, parse_constant=_refuse_constant, object_pairs_hook=_refuse_duplicate_keys)


#: invisible characters outside the format/control categories: Unicode's Default_Ignorable_Code_Point marks that
#: are combining marks or letters (combining grapheme joiner, Hangul fillers, Mongolian and other variation
#: selectors, Khmer inherent vowels)
_IGNORABLE = frozenset([0x034F, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x3164, 0xFFA0, *range(0x180B, 0x1810),
                        *range(0xFE00, 0xFE10), *range(0xE0100, 0xE01F0)])


def is_blank(text: str) -> bool:
    """Whether ``text`` holds nothing visible: only whitespace, invisible format or control characters
    (zero-width space/joiners, word joiner, BOM, …) and the other default-ignorable code points (variation
    selectors, combining grapheme joiner, Hangul fillers) — such a prompt is as empty as ``"   "``."""
    return all(ch.isspace() or unicodedata.category(ch) in ("Cf", "Cc") or ord(ch) in _IGNORABLE for ch in text)


def read_json(path: str | os.PathLike[str]) -> Any:
    path = Path(path)
    text = read_text(path)
    try:  # sri's own JSON files may hold NaN (an undefined metric); their readers check the fields they use
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise SriError(f"{path} is not valid JSON (line {e.lineno}: {e.msg}); fix or regenerate it") from None
    except RecursionError:
        raise SriError(f"{path} nests JSON too deeply; fix or regenerate it") from None
    found = lone_surrogate(obj)
    if found is not None:
        raise SriError(f"{path}: {found[0] or 'the text'} holds a lone surrogate ({found[1]}), which is not valid "
                       "Unicode text; remove it or give the full character")
    return obj


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """One JSON object per line (blank lines skipped). Invalid JSON, non-objects, bytes that are not UTF-8 and
    text that is not valid Unicode (lone surrogates) are one-line errors naming the file and line."""
    return [row for _, row in read_jsonl_numbered(path)]


def read_jsonl_numbered(path: str | os.PathLike[str]) -> list[tuple[int, dict[str, Any]]]:
    """:func:`read_jsonl` with each row's line number in the file."""
    path = Path(path)
    rows = []
    for n, line in enumerate(read_text(path).split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = loads_strict(line)
        except json.JSONDecodeError as e:
            raise SriError(f"{path}:{n} is not valid JSON ({e.msg}); fix or regenerate the file") from None
        except _NonStandardJSON as e:
            raise SriError(f"{path}:{n} is not valid JSON: {e.problem}") from None
        except RecursionError:
            raise SriError(f"{path}:{n} nests JSON too deeply; fix or regenerate the file") from None
        if not isinstance(row, dict):
            raise SriError(f"{path}:{n} is not a JSON object; each line must be one object")
        if "\\u" in line:  # only a JSON escape can put a lone surrogate into text decoded as UTF-8
            found = lone_surrogate(row)
            if found is not None:
                raise SriError(f"{path}:{n}: {found[0]} holds a lone surrogate ({found[1]}), which is not valid "
                               "Unicode text; fix that line (give the full character or remove the escape)")
        rows.append((n, row))
    return rows


#: fields of a `sri signal` row that the analysis commands read
SIGNAL_FIELDS = ("id", "label", "refused", "sri", "text_signal")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")


def read_signal_rows(path: str | os.PathLike[str], fields: Iterable[str] = SIGNAL_FIELDS) -> list[dict[str, Any]]:
    """The rows of a signals JSONL (`sri signal`, `sri run`), each checked for the ``fields`` the caller reads:
    ``sri`` / ``text_signal`` lists of numbers in [0, 1] of one length, ``label`` text, ``refused`` true/false,
    ``id`` (unique in the file) and ``key`` present. A ``label`` is checked wherever a row has one (the summaries
    of every reader group by it). Anything else is a one-line error naming the file, the line and the field."""
    from .errors import clip

    path = Path(path)
    fields = tuple(fields)
    numbered = read_jsonl_numbered(path)
    if not numbered:
        raise SriError(f"{path} holds no signals; create it with `sri signal`")
    length = None
    seen_ids: dict[Any, int] = {}
    for n, r in numbered:
        where = f"{path}:{n}"
        for name in fields if "label" in fields or "label" not in r else (*fields, "label"):
            if name not in r:
                raise SriError(f"{where} has no '{name}'; it is not a `sri signal` row (regenerate the file with "
                               "`sri signal`)")
            value = r[name]
            if name in ("sri", "text_signal"):
                if not isinstance(value, list) or not value:
                    raise SriError(f"{where}: '{name}' must be a non-empty list of numbers; regenerate the file "
                                   "with `sri signal`")
                bad = next((i for i, v in enumerate(value) if not _is_number(v)), None)
                if bad is not None:
                    raise SriError(f"{where}: '{name}'[{bad}] is {clip(value[bad])}, not a finite number; "
                                   "regenerate the file with `sri signal`")
                bad = next((i for i, v in enumerate(value) if not 0 <= v <= 1), None)
                if bad is not None:  # σ is a sigmoid and the text signal 0/1: outside [0, 1] is not a signal
                    raise SriError(f"{where}: '{name}'[{bad}] is {value[bad]!r}, outside [0, 1] where every "
                                   "signal value lies; regenerate the file with `sri signal`")
                steps = r.get("key", {}).get("steps") if isinstance(r.get("key"), dict) else None
                if isinstance(steps, int) and not isinstance(steps, bool) and len(value) != steps:
                    raise SriError(f"{where}: '{name}' has {len(value)} steps but the row's key says steps = {steps}; "
                                   "regenerate the file with `sri signal`")
                if length is None:
                    length = len(value)
                elif len(value) != length:
                    raise SriError(f"{where}: '{name}' has {len(value)} steps but earlier rows have {length}; use "
                                   "one step count per file")
            elif name == "label" and not isinstance(value, str):
                raise SriError(f"{where}: 'label' must be text, not {clip(value)}")
            elif name == "refused" and not isinstance(value, bool):
                raise SriError(f"{where}: 'refused' must be true or false, not {clip(value)}")
            elif name == "id" and (not isinstance(value, (str, int)) or isinstance(value, bool)):
                raise SriError(f"{where}: 'id' must be text, not {clip(value)}")
            elif name == "id":  # 5 and "5" are one id, as in prompt files
                if str(value) in seen_ids:
                    raise SriError(f"{where}: id {clip(value)} is already on line {seen_ids[str(value)]}; each "
                                   "signal needs its own id (remove the duplicate row or regenerate the file)")
                seen_ids[str(value)] = n
            elif name == "key" and not isinstance(value, dict):
                raise SriError(f"{where}: 'key' must be an object; regenerate the file with `sri signal`")
    first = numbered[0][1].get("key")
    for n, r in numbered[1:]:  # one file, one model/layer/pooling/step count: σ of two models do not mix
        key = r.get("key")
        if key is not None and first is not None and key != first:
            fields = sorted(k for k in {*key, *first} if key.get(k) != first.get(k)) if \
                isinstance(key, dict) and isinstance(first, dict) else ["key"]
            raise SriError(f"{path}:{n} was computed with another key than line {numbered[0][0]} (differs in "
                           f"{', '.join(fields[:4])}); keep one model, layer, pooling and step count per file")
    return [r for _, r in numbered]


def jsonable(obj: Any) -> Any:
    """``json.dumps`` ``default=``: numpy/torch values as lists or numbers, paths as text."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
