"""The trace store: a run folder of shards with full provenance, appendable and resumable.

Layout::

    DIR/run.json                 provenance + compatibility key (model, sampler and its settings, layers, pooling)
    DIR/shards/NNNNN.safetensors per-step pooled states, one tensor ``layer.<i>`` of shape [N, T, D] per layer
    DIR/shards/NNNNN.jsonl       the N rows of that shard, in tensor order (id, label, prompt, texts, tokens …)

    DIR/.lock                    held (``flock``) by the one process writing the folder

A shard is complete when its ``.jsonl`` exists; the tensor file is written (atomically) first, so a kill at
any moment leaves either a whole shard or nothing that counts. Re-running skips ids already in complete shards.

Every tensor file carries in its safetensors metadata the run's compatibility key, the rest of ``run.json``
(settings, model, pooling; not the volatile format/version/creation time), its row count and the sha256 of its
rows' ids in order, and every read checks each shard: readable, as many JSONL rows as tensor rows, the same ids
(a tensor file swapped between shards is caught), states of the traced layers, steps and hidden size, and the
same key and settings as ``run.json`` (whose structure is checked when the folder is opened; an edited field is
named). A damaged
shard is named with the fix; resuming (:meth:`TraceStore.create` on the folder) deletes damaged shards, says so,
and their prompts are traced again.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import sys
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .. import __version__
from ..errors import IncompatibleError, SriError, clip
from ..io import (
    LOCK_NAME,
    acquire_folder_lock,
    atomic_path,
    check_output_dir,
    read_json,
    read_jsonl,
    release_folder_lock,
    write_json,
    write_jsonl,
)

TRACE_FORMAT = "sri-trace/1"

#: fields of a compatibility key that must agree before states from two sources may be combined (traces, anchors,
#: signals, guards; :func:`sri.tracing.tracer.trace_key` says why each is there and what is deliberately left out)
KEY_FIELDS = ("fingerprint", "hidden_size", "sampler", "steps", "pooling", "after_end", "system_prompt", "dtype",
              "decoding")


def check_compatible(a: dict[str, Any], b: dict[str, Any], a_name: str, b_name: str,
                     fields: tuple[str, ...] = KEY_FIELDS) -> None:
    """Raise a one-line :class:`IncompatibleError` naming the first key field on which ``a`` and ``b`` differ.

    A field that only one of them records (an artefact made before the field joined the key) is refused with a
    message saying so; a dict-valued field (``decoding``) is reported by its first differing entry."""
    for key, name in ((a, a_name), (b, b_name)):
        if not isinstance(key, dict):
            raise IncompatibleError(f"{name} carries no readable compatibility key (got {type(key).__name__}); "
                                    "recompute it with `sri trace` and what follows it")
    for f in fields:
        if (f in a) != (f in b):
            old, new = (a_name, b_name) if f not in a else (b_name, a_name)
            raise IncompatibleError(
                f"{old} records no {f} in its compatibility key (made by an older sri, or edited) but {new} does; "
                f"recompute {old} with this version (`sri trace`, then anchors/signals/guard again)")
        va, vb = a.get(f), b.get(f)
        if va == vb:
            continue
        where = f
        if isinstance(va, dict) and isinstance(vb, dict):
            sub = next(k for k in [*va, *(k for k in vb if k not in va)] if va.get(k, ...) != vb.get(k, ...))
            where, va, vb = f"{f}.{sub}", va.get(sub, "(unset)"), vb.get(sub, "(unset)")
        fix = ("compute both signals with the same anchor file (`sri signal --anchors`)" if f == "anchors" else
               "recompute one of them with the same model, system prompt, dtype, sampler settings, steps, pooling "
               "and layers")
        raise IncompatibleError(f"{a_name} and {b_name} differ in {where} ({clip(va)} vs {clip(vb)}); {fix}")


class DamagedShardError(SriError):
    """A shard of a trace folder is unreadable or inconsistent; resuming the folder redoes it."""


class TraceStore:
    """A folder of traces. Use :meth:`create` to write (or resume) and :meth:`open` to read.

    A store opened with :meth:`create` holds the folder's writer lock until :meth:`close` (or until it is
    garbage-collected, or the process ends): a second process writing the same folder is refused.
    """

    def __init__(self, folder: Path, meta: dict[str, Any]) -> None:
        self.folder = folder
        self.meta = meta
        self._unlock: weakref.finalize | None = None
        #: shards deleted as damaged when this store was opened for writing (their prompts are traced again)
        self.repaired: list[str] = []

    # ------------------------------------------------------------------------------------------- opening
    @classmethod
    def create(cls, folder: str | Path, meta: dict[str, Any],
               log: Callable[[str], None] | None = None) -> TraceStore:
        """Open ``folder`` for writing; if it already holds traces they must come from the same settings.

        Takes the folder's writer lock first. On resume, damaged shards are deleted (one line each through
        ``log``, default stderr) so that their prompts are traced again."""
        folder = Path(folder)
        check_output_dir(folder)
        run = folder / "run.json"
        if not run.is_file() and _has_foreign_files(folder):
            raise SriError(f"{folder} exists and is not a trace folder; choose an empty or new --out folder")
        lock = acquire_folder_lock(folder)
        try:
            store = cls._create_locked(folder, run, meta, log)
        except BaseException:
            release_folder_lock(lock)
            raise
        store._unlock = weakref.finalize(store, release_folder_lock, lock)
        return store

    def _hold_lock(self) -> None:
        """Take the folder's writer lock for this store (until :meth:`close`) unless it holds it already."""
        if self._unlock is None or not self._unlock.alive:
            lock = acquire_folder_lock(self.folder)
            self._unlock = weakref.finalize(self, release_folder_lock, lock)

    @classmethod
    def _create_locked(cls, folder: Path, run: Path, meta: dict[str, Any],
                       log: Callable[[str], None] | None) -> TraceStore:
        for stale in (*folder.glob(".*.tmp"), *folder.glob("shards/.*.tmp")):  # left by a killed writer
            stale.unlink(missing_ok=True)
        shards = folder / "shards"
        if run.is_file() and shards.is_dir() and not any(shards.iterdir()):
            if log is not None:  # an attempt that failed before its first batch: nothing to keep or to match
                log(f"{folder} holds no traces yet; starting it with the current settings")
            run.unlink()
        if run.is_file():
            old = _read_run(run)
            for section in ("key", "settings"):
                if old.get(section) != meta.get(section):
                    diff = _first_difference(old.get(section, {}), meta.get(section, {}))
                    raise IncompatibleError(
                        f"{folder} already holds traces made with other settings ({diff}); "
                        "use another --out folder or the same settings to resume")
            store = cls(folder, old)
            store._repair(log or _stderr)
            return store
        if _has_foreign_files(folder):
            raise SriError(f"{folder} exists and is not a trace folder; choose an empty or new --out folder")
        meta = {"format": TRACE_FORMAT, "sri_version": __version__,
                "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), **meta}
        (folder / "shards").mkdir(parents=True, exist_ok=True)
        write_json(run, meta)
        return cls(folder, meta)

    @classmethod
    def open(cls, folder: str | Path) -> TraceStore:
        """Open ``folder`` for reading (no lock); ``run.json`` is checked field by field."""
        folder = Path(folder)
        run = folder / "run.json"
        if not run.is_file():
            raise SriError(f"{folder} is not a trace folder (no run.json); create one with `sri trace`")
        store = cls(folder, _read_run(run))
        store._check_first_key()
        return store

    def _check_first_key(self) -> None:
        """An edited ``run.json`` shows at once: its key must be the one the first shard was traced with (the
        other shards are checked as they are read)."""
        shards = self._complete_shards()
        tensor_file = shards[0].with_suffix(".safetensors") if shards else None
        if tensor_file is None or not tensor_file.is_file():
            return
        try:
            with safe_open(str(tensor_file), framework="pt") as f:
                meta = f.metadata() or {}
        except Exception:  # a damaged shard is named when it is read
            return
        self._check_key(shards[0], meta)

    def close(self) -> None:
        """Release the writer lock (a no-op for stores opened for reading)."""
        if self._unlock is not None:
            self._unlock()

    def __enter__(self) -> TraceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------- metadata
    @property
    def key(self) -> dict[str, Any]:
        return self.meta["key"]

    @property
    def layers(self) -> list[int]:
        return list(self.meta["key"]["layers"])

    @property
    def steps(self) -> int:
        return int(self.meta["key"]["steps"])

    # ------------------------------------------------------------------------------------------- shards
    def _complete_shards(self) -> list[Path]:
        return sorted((self.folder / "shards").glob("[0-9]*.jsonl"))

    def done_ids(self) -> set[str]:
        return {row["id"] for row in self.rows()}

    def append(self, rows: list[dict[str, Any]], states: dict[int, torch.Tensor]) -> Path:
        """Write one shard: ``rows[i]`` belongs to ``states[layer][i]``. Atomic; returns the rows file. The tensor
        file's metadata carries the run key and the row count, so every later read can check the shard."""
        if not rows:
            raise ValueError("empty shard")
        self._hold_lock()  # any writer, whichever way it opened the store, is the folder's only writer
        for layer in self.layers:
            if states[layer].shape[0] != len(rows):
                raise ValueError(f"layer {layer}: {states[layer].shape[0]} state rows for {len(rows)} rows")
        shards = self._complete_shards()
        index = int(shards[-1].stem) + 1 if shards else 0
        base = self.folder / "shards" / f"{index:05d}"
        tensors = {f"layer.{layer}": states[layer].to(torch.float32).contiguous() for layer in self.layers}
        metadata = {"format": TRACE_FORMAT, "key": _key_json(self.key), "rows": str(len(rows)),
                    "run": _key_json(_bound(self.meta)), "ids_sha256": _ids_digest(rows)}
        with atomic_path(base.with_suffix(".safetensors")) as tmp:
            save_file(tensors, str(tmp), metadata=metadata)
        write_jsonl(base.with_suffix(".jsonl"), rows)
        return base.with_suffix(".jsonl")

    def _shard_name(self, rows_file: Path) -> str:
        return f"shard {rows_file.with_suffix('.safetensors')}"

    def _damaged(self, rows_file: Path, what: str) -> DamagedShardError:
        return DamagedShardError(
            f"{self._shard_name(rows_file)} is damaged ({what}); delete it and re-run "
            f"`sri trace --out {self.folder}` to redo it")

    def _check_shard(self, rows_file: Path, states: bool = False
                     ) -> tuple[list[dict[str, Any]], dict[int, torch.Tensor]]:
        """The rows of one shard (and, with ``states``, its tensors) after checking it against ``run.json``.

        :class:`DamagedShardError` for an unreadable or inconsistent shard; :class:`IncompatibleError` for a
        shard whose key differs from ``run.json`` (an edited ``run.json``) or that carries no key (old sri)."""
        try:
            rows = read_jsonl(rows_file)
        except SriError as e:
            raise self._damaged(rows_file, f"{rows_file.name}: {e}") from None
        tensor_file = rows_file.with_suffix(".safetensors")
        if not tensor_file.is_file():
            raise self._damaged(rows_file, "its tensor file is missing")
        loaded: dict[int, torch.Tensor] = {}
        try:
            with safe_open(str(tensor_file), framework="pt") as f:
                meta = f.metadata() or {}
                names = set(f.keys())
                shapes = {name: tuple(f.get_slice(name).get_shape()) for name in names}
                if states:
                    loaded = {layer: f.get_tensor(f"layer.{layer}") for layer in self.layers
                              if f"layer.{layer}" in names}
        except Exception as e:  # safetensors raises its own error types for truncated or corrupt files
            raise self._damaged(rows_file, f"unreadable, truncated or corrupt: {e}") from None
        self._check_key(rows_file, meta)
        if meta.get("rows") != str(len(rows)):
            raise self._damaged(rows_file, f"{rows_file.name} has {len(rows)} rows, the tensor file "
                                           f"{meta.get('rows', '?')}")
        if "ids_sha256" not in meta:
            raise IncompatibleError(
                f"{self._shard_name(rows_file)} carries no digest of its row ids (written by an older sri); trace "
                "again into a new folder: `sri trace --out NEW_FOLDER` with the same options")
        if meta["ids_sha256"] != _ids_digest(rows):
            raise self._damaged(rows_file, f"its tensors were written for other rows than those in {rows_file.name} "
                                           "(the row ids differ: a tensor or rows file swapped or edited)")
        for layer in self.layers:
            shape = shapes.get(f"layer.{layer}")
            want = (len(rows), self.steps, int(self.key["hidden_size"]))
            if shape is None:
                raise self._damaged(rows_file, f"no states for layer {layer}")
            if shape != want:
                raise self._damaged(rows_file, f"layer {layer} states have shape {list(shape)}, expected "
                                               f"{list(want)}")
        return rows, loaded

    def _check_key(self, rows_file: Path, meta: dict[str, str]) -> None:
        tensor_file = rows_file.with_suffix(".safetensors")
        if "key" not in meta:
            raise IncompatibleError(
                f"{self._shard_name(rows_file)} carries no run key (written by an older sri); trace again into a "
                f"new folder: `sri trace --out NEW_FOLDER` with the same options")
        try:
            shard_key = json.loads(meta["key"])
        except json.JSONDecodeError:
            raise self._damaged(rows_file, "its run key is not valid JSON") from None
        if shard_key != json.loads(_key_json(self.key)):
            diff = _first_difference(self.key, shard_key if isinstance(shard_key, dict) else {})
            raise IncompatibleError(
                f"{self.folder / 'run.json'} field key.{diff.split(':')[0]} does not match the key its shards were "
                f"traced with ({diff}, run.json vs {tensor_file.name}); run.json was edited — restore it, or "
                "trace again into a new folder")
        if "run" not in meta:
            raise IncompatibleError(
                f"{self._shard_name(rows_file)} carries no copy of the run's settings (written by an older sri); "
                "trace again into a new folder: `sri trace --out NEW_FOLDER` with the same options")
        try:
            shard_run = json.loads(meta["run"])
        except json.JSONDecodeError:
            raise self._damaged(rows_file, "its copy of the run's settings is not valid JSON") from None
        mine = json.loads(_key_json(_bound(self.meta)))
        if shard_run != mine:
            where, a, b = _difference_path(mine, shard_run)
            raise IncompatibleError(
                f"{self.folder / 'run.json'} field {where} does not match the settings its shards were traced with "
                f"({clip(a)} vs {clip(b)}, run.json vs {tensor_file.name}); run.json was edited — restore it, or "
                "trace again into a new folder")

    def check(self) -> list[tuple[Path, str]]:
        """Every damaged shard with the reason (an empty list for a whole folder). Key mismatches raise."""
        damaged = []
        for rows_file in self._complete_shards():
            try:
                self._check_shard(rows_file)
            except DamagedShardError as e:
                damaged.append((rows_file, str(e)))
        return damaged

    def _repair(self, log: Callable[[str], None]) -> None:
        for rows_file, reason in self.check():
            what = reason.split(" is damaged (", 1)[-1].rsplit("); delete it", 1)[0]
            rows_file.unlink(missing_ok=True)  # first: from here on the shard no longer counts
            rows_file.with_suffix(".safetensors").unlink(missing_ok=True)
            self.repaired.append(rows_file.stem)
            log(f"deleted damaged shard {rows_file.with_suffix('.safetensors')} ({what}); its prompts are traced "
                "again")

    def iter_shards(self) -> Iterator[tuple[list[dict[str, Any]], dict[int, torch.Tensor]]]:
        for rows_file in self._complete_shards():
            yield self._check_shard(rows_file, states=True)

    def shard_rows(self) -> Iterator[tuple[Path, list[dict[str, Any]]]]:
        """``(rows file, its rows)`` per shard in order, each shard checked (readable, row counts, key) first."""
        for rows_file in self._complete_shards():
            yield rows_file, self._check_shard(rows_file)[0]

    def rows(self) -> list[dict[str, Any]]:
        """All rows, each shard checked (readable, row counts, key) first."""
        return [row for _, rows in self.shard_rows() for row in rows]

    def load(self, layers: list[int] | None = None) -> tuple[list[dict[str, Any]], dict[int, torch.Tensor]]:
        """All rows and the stacked states ``{layer: [N, T, D]}`` (empty folder → a one-line error)."""
        layers = self.layers if layers is None else layers
        missing = [layer for layer in layers if layer not in self.layers]
        if missing:
            raise IncompatibleError(f"{self.folder} has no states for layer(s) {missing} (it has {self.layers}); "
                                    "trace again with --layers including them")
        all_rows: list[dict[str, Any]] = []
        parts: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
        for rows, states in self.iter_shards():
            all_rows += rows
            for layer in layers:
                parts[layer].append(states[layer])
        if not all_rows:
            raise SriError(f"{self.folder} holds no traces yet; run `sri trace --out {self.folder}` first")
        return all_rows, {layer: torch.cat(p) for layer, p in parts.items()}

    def __len__(self) -> int:
        return len(self.rows())


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _key_json(key: dict[str, Any]) -> str:
    return json.dumps(key, sort_keys=True, ensure_ascii=False)


#: run.json fields that may differ between a shard and its folder (bookkeeping, not what was traced); the key is
#: checked on its own
_UNBOUND = ("format", "sri_version", "created", "key")


def _bound(meta: dict[str, Any]) -> dict[str, Any]:
    """What of ``run.json`` every shard is bound to: everything but :data:`_UNBOUND`."""
    return {k: v for k, v in meta.items() if k not in _UNBOUND}


def _ids_digest(rows: list[dict[str, Any]]) -> str:
    """sha256 of the shard's row ids in tensor order (ties the rows file to its tensor file)."""
    ids = json.dumps([r.get("id") for r in rows], ensure_ascii=False)
    return hashlib.sha256(ids.encode("utf-8", "surrogatepass")).hexdigest()


def _difference_path(a: Any, b: Any, prefix: str = "") -> tuple[str, Any, Any]:
    """The dotted path of the first difference of two JSON values, and the values there."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if a.get(k, ...) != b.get(k, ...):
                if k not in a or k not in b:
                    return f"{prefix}{k}", a.get(k, "(unset)"), b.get(k, "(unset)")
                return _difference_path(a[k], b[k], f"{prefix}{k}.")
    return prefix.rstrip(".") or "(all)", a, b


def _has_foreign_files(folder: Path) -> bool:
    """Whether ``folder`` holds anything besides an (empty) shards folder and a lock: then it is not ours."""
    if not folder.is_dir():
        return False
    for p in folder.iterdir():
        if p.name == LOCK_NAME or (p.name.startswith(".") and p.name.endswith(".tmp")) or (
                p.name == "shards" and p.is_dir() and not any(p.iterdir())):
            continue
        return True
    return False


_KEY_TYPES: dict[str, type | tuple[type, ...]] = {
    "model": str, "fingerprint": str, "hidden_size": int, "num_layers": int, "sampler": str, "steps": int,
    "pooling": str, "after_end": str, "layers": list}


def _read_run(run: Path) -> dict[str, Any]:
    """``run.json`` after checking its structure: one line naming the first missing or mistyped field."""
    meta = read_json(run)
    fix = "restore it, or trace again into a new folder with `sri trace`"
    if not isinstance(meta, dict):
        raise SriError(f"{run} is a JSON {type(meta).__name__}, not an object; {fix}")
    if meta.get("format") != TRACE_FORMAT:
        raise SriError(f"{run} has format {meta.get('format')!r}, expected {TRACE_FORMAT}; re-run `sri trace`")
    key = meta.get("key")
    if not isinstance(key, dict):
        raise SriError(f"{run} field 'key' is {'missing' if key is None else 'not an object'}; {fix}")
    for name, kind in _KEY_TYPES.items():
        value = key.get(name)
        if value is None:
            raise SriError(f"{run} field key.{name} is missing; {fix}")
        if not isinstance(value, kind) or isinstance(value, bool):
            raise SriError(f"{run} field key.{name} is {value!r}, not a {_type_name(kind)}; {fix}")
    for name in ("hidden_size", "num_layers", "steps"):
        if key[name] <= 0:
            raise SriError(f"{run} field key.{name} is {key[name]}, not a positive number; {fix}")
    layers = key["layers"]
    if not layers or any(not isinstance(x, int) or isinstance(x, bool) or not 0 <= x <= key["num_layers"]
                         for x in layers) or len(set(layers)) != len(layers):
        raise SriError(f"{run} field key.layers is {layers!r}, not distinct hidden-state indices in "
                       f"0..{key['num_layers']}; {fix}")
    from ..pooling import POOLINGS

    pooling = POOLINGS.get(key["pooling"])
    if pooling is None:
        raise SriError(f"{run} field key.pooling is {key['pooling']!r}, not a pooling sri knows "
                       f"({', '.join(POOLINGS)}); {fix}")
    if key["after_end"] != pooling.after_end:
        raise SriError(f"{run} field key.after_end is {key['after_end']!r}, but pooling {key['pooling']!r} uses "
                       f"{pooling.after_end!r}; {fix}")
    if not isinstance(meta.get("settings"), dict):
        raise SriError(f"{run} field 'settings' is {'missing' if 'settings' not in meta else 'not an object'}; "
                       f"{fix}")
    return meta


def _type_name(kind: type | tuple[type, ...]) -> str:
    names = {"str": "string", "int": "whole number", "list": "list", "dict": "object"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k.__name__, k.__name__) for k in kinds)


def _first_difference(a: dict[str, Any], b: dict[str, Any]) -> str:
    """``path: old vs new`` at the first differing leaf, so long entries (a guard's record) show what differs."""
    path, x, y = _difference_path(a, b)
    return "unknown difference" if path == "(all)" else f"{path}: {clip(x)} vs {clip(y)}"
