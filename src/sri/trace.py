"""The trace store: a run folder of shards with full provenance, appendable and resumable.

Layout::

    DIR/run.json                 provenance + compatibility key (model, sampler and its settings, layers, pooling)
    DIR/shards/NNNNN.safetensors per-step pooled states, one tensor ``layer.<i>`` of shape [N, T, D] per layer
    DIR/shards/NNNNN.jsonl       the N rows of that shard, in tensor order (id, label, prompt, texts, tokens …)

A shard is complete when its ``.jsonl`` exists; the tensor file is written (atomically) first, so a kill at
any moment leaves either a whole shard or nothing that counts. Re-running skips ids already in complete shards.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from . import __version__
from .errors import IncompatibleError, SriError
from .io import atomic_path, read_json, read_jsonl, write_json, write_jsonl

TRACE_FORMAT = "sri-trace/1"

#: fields of a compatibility key that must agree before states from two sources may be combined (traces, anchors,
#: signals, guards; :func:`sri.tracer.trace_key` says why each is there and what is deliberately left out)
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
        raise IncompatibleError(
            f"{a_name} and {b_name} differ in {where} ({va!r} vs {vb!r}); recompute one of them with the same "
            "model, system prompt, dtype, sampler settings, steps, pooling and layers")


class TraceStore:
    """A folder of traces. Use :meth:`create` to write (or resume) and :meth:`open` to read."""

    def __init__(self, folder: Path, meta: dict[str, Any]) -> None:
        self.folder = folder
        self.meta = meta

    # ------------------------------------------------------------------------------------------- opening
    @classmethod
    def create(cls, folder: str | Path, meta: dict[str, Any]) -> TraceStore:
        """Open ``folder`` for writing; if it already holds traces they must come from the same settings."""
        folder = Path(folder)
        run = folder / "run.json"
        if run.is_file():
            old = read_json(run)
            for section in ("key", "settings"):
                if old.get(section) != meta.get(section):
                    diff = _first_difference(old.get(section, {}), meta.get(section, {}))
                    raise IncompatibleError(
                        f"{folder} already holds traces made with other settings ({diff}); "
                        "use another --out folder or the same settings to resume")
            return cls(folder, old)
        if folder.exists() and any(folder.iterdir()):
            raise SriError(f"{folder} exists and is not a trace folder; choose an empty or new --out folder")
        meta = {"format": TRACE_FORMAT, "sri_version": __version__,
                "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), **meta}
        (folder / "shards").mkdir(parents=True, exist_ok=True)
        write_json(run, meta)
        return cls(folder, meta)

    @classmethod
    def open(cls, folder: str | Path) -> TraceStore:
        folder = Path(folder)
        run = folder / "run.json"
        if not run.is_file():
            raise SriError(f"{folder} is not a trace folder (no run.json); create one with `sri trace`")
        meta = read_json(run)
        if meta.get("format") != TRACE_FORMAT:
            raise SriError(f"{run} has format {meta.get('format')!r}, expected {TRACE_FORMAT}; re-run `sri trace`")
        return cls(folder, meta)

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
        """Write one shard: ``rows[i]`` belongs to ``states[layer][i]``. Atomic; returns the rows file."""
        if not rows:
            raise ValueError("empty shard")
        for layer in self.layers:
            if states[layer].shape[0] != len(rows):
                raise ValueError(f"layer {layer}: {states[layer].shape[0]} state rows for {len(rows)} rows")
        shards = self._complete_shards()
        index = int(shards[-1].stem) + 1 if shards else 0
        base = self.folder / "shards" / f"{index:05d}"
        tensors = {f"layer.{layer}": states[layer].to(torch.float32).contiguous() for layer in self.layers}
        with atomic_path(base.with_suffix(".safetensors")) as tmp:
            save_file(tensors, str(tmp), metadata={"format": TRACE_FORMAT})
        write_jsonl(base.with_suffix(".jsonl"), rows)
        return base.with_suffix(".jsonl")

    def iter_shards(self) -> Iterator[tuple[list[dict[str, Any]], dict[int, torch.Tensor]]]:
        for rows_file in self._complete_shards():
            rows = read_jsonl(rows_file)
            tensor_file = rows_file.with_suffix(".safetensors")
            if not tensor_file.is_file():
                raise SriError(f"{tensor_file} is missing; the trace folder is damaged — delete "
                               f"{rows_file.name} and re-run `sri trace` to redo that shard")
            raw = load_file(str(tensor_file))
            yield rows, {layer: raw[f"layer.{layer}"] for layer in self.layers}

    def rows(self) -> list[dict[str, Any]]:
        return [row for rows_file in self._complete_shards() for row in read_jsonl(rows_file)]

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
        return sum(len(read_jsonl(f)) for f in self._complete_shards())


def _first_difference(a: dict[str, Any], b: dict[str, Any]) -> str:
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            return f"{k}: {a.get(k)!r} vs {b.get(k)!r}"
    return "unknown difference"
