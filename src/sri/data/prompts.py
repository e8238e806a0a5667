"""Prompt records and loaders.

A prompt source is either a file — JSONL with a ``prompt`` field (optional ``id``, ``label``, any other fields
kept as metadata), CSV with a ``prompt`` column, or TXT with one prompt per line — or the name of an offline
dataset fetched by ``sri assets fetch --data`` (``advbench``, ``harmless``, … see ``sri assets list``).
"""

from __future__ import annotations

import csv
import io
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SriError, clip
from ..io import is_blank, missing_file, read_jsonl, read_jsonl_numbered, read_text
from .assets import DATASETS, dataset_path

#: The system prompt of the paper's protocol (PAPER.md, "Definitions"), used when rendering every prompt.
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant"

_CORE_FIELDS = ("id", "prompt", "label", "source")


@dataclass(frozen=True)
class PromptRecord:
    """One prompt to generate from. ``id`` is unique within a run and is what resuming keys on."""

    id: str
    prompt: str
    label: str = "unlabelled"
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def to_row(self) -> dict[str, Any]:
        return {"id": self.id, "prompt": self.prompt, "label": self.label, "source": self.source, **self.meta}


def load_prompts(
    source: str | Path,
    *,
    label: str | None = None,
    max_prompts: int | None = None,
    offset: int = 0,
    shuffle_seed: int | None = None,
) -> list[PromptRecord]:
    """Load prompts from a file or an offline dataset name, validated (non-empty text, unique ids).

    ``shuffle_seed`` shuffles deterministically before ``offset``/``max_prompts`` select a slice, so disjoint
    slices of one shuffled set (e.g. anchor prompts vs evaluation prompts) never overlap. A ``label`` given must
    be visible text (:class:`SriError` otherwise).
    """
    for name, value in (("max_prompts", max_prompts), ("offset", offset), ("shuffle_seed", shuffle_seed)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise SriError(f"{name} must be a whole number (got {value!r})")
    if max_prompts is not None and max_prompts < 1:
        raise SriError(f"max_prompts must be ≥ 1 (got {max_prompts}); leave it out for every prompt")
    if offset < 0:
        raise SriError(f"offset must be ≥ 0 (got {offset})")
    if label is not None and is_blank(label):
        raise SriError("the label is empty; give a label such as harmless or harmful, or leave it out to keep each "
                       "row's own")
    path = Path(source)
    if path.is_dir():
        raise SriError(f"prompt source {source} is a directory; give a JSONL/CSV/TXT file (or an offline dataset "
                       "name)")
    if path.is_file():
        rows, default_source = _read_file(path), path.stem
    elif str(source) in DATASETS:
        where = dataset_path(str(source))
        rows, default_source = [(f"{where}:{n}", row) for n, row in read_jsonl_numbered(where)], str(source)
    elif (path.is_symlink() or path.exists() or path.suffix in {".jsonl", ".json", ".csv", ".txt"}
          or path.parent != Path(".")):
        raise SriError(missing_file(path, "prompt file", "check the path"))
    else:
        raise SriError(f"'{source}' is neither a prompt file nor an offline dataset; "
                       f"use a JSONL/CSV/TXT file or one of: {', '.join(DATASETS)}")
    records = [_to_record(row, i, where, default_source, label) for i, (where, row) in enumerate(rows)]
    if not records:
        raise SriError(f"{source} holds no prompts; add at least one")
    _check_unique(records, [where for where, _ in rows])
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(records)
    end = None if max_prompts is None else offset + max_prompts
    return records[offset:end]


def _read_file(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """``(file:line, row)`` of every prompt row of a JSONL/CSV/TXT file."""
    suffix = path.suffix.lower()
    if suffix in {".jsonl", ".json"}:
        rows = [(f"{path}:{n}", row) for n, row in read_jsonl_numbered(path)]
    elif suffix == ".csv":
        reader = csv.DictReader(io.StringIO(read_text(path), newline=""), strict=True)  # no silent merges
        rows = []
        try:
            header = reader.fieldnames
            if header is None or "prompt" not in header:
                raise SriError(f"{path} has no 'prompt' column; the CSV header must name one")
            dup = next((h for i, h in enumerate(header) if h in header[:i]), None)
            if dup is not None:
                raise SriError(f"{path}:1 names the column {clip(dup)} twice; give each column a distinct name")
            start = reader.line_num + 1
            for row in reader:
                rows.append((f"{path}:{start}", row))
                start = reader.line_num + 1
        except csv.Error as e:  # an unterminated quote, a field over csv's size limit, a NUL byte
            raise SriError(f"{path}:{reader.line_num + 1} is not valid CSV ({e}); fix that line") from None
        for where, row in rows:  # a row longer than the header puts its extra cells under the key None
            if row.get(None):
                raise SriError(f"{where} has {len(header) + len(row[None])} cells but the header names "
                               f"{len(header)}; quote a cell that holds a comma (\"Hello, world\")")
            row.pop(None, None)
    elif suffix == ".txt":  # one prompt per line: split on \n (and \r\n) only, not on \f, \x85 or U+2028
        lines = [line.removesuffix("\r") for line in read_text(path).split("\n")]
        rows = [(f"{path}:{n}", {"prompt": line}) for n, line in enumerate(lines, 1) if not is_blank(line)]
    else:
        raise SriError(f"{path}: unsupported prompt file type '{suffix}'; use .jsonl, .csv or .txt")
    return rows


def _to_record(row: dict[str, Any], index: int, where: str, source: str, label: str | None) -> PromptRecord:
    """The record of one row (``where``: ``file:line``); fields of the wrong type are one-line errors, never
    turned into Python reprs."""
    text = row.get("prompt")
    if not isinstance(text, str):
        got = "" if text is None else f" (got {clip(text)})"
        raise SriError(f"{where} has no 'prompt' text field{got}; every row needs one")
    if is_blank(text):
        raise SriError(f"{where} has an empty prompt (only spaces or invisible characters); remove it or fill it in")
    row_id = row.get("id")
    if row_id is not None and (isinstance(row_id, bool) or not isinstance(row_id, (str, int))):
        raise SriError(f"{where}: field 'id' is {clip(row_id)}, expected text or a whole number; fix that row")
    for name in ("label", "source"):
        value = row.get(name)
        if value is not None and not isinstance(value, str):
            raise SriError(f"{where}: field '{name}' is {clip(value)}, expected text; fix that row")
    meta = {k: v for k, v in row.items() if k not in _CORE_FIELDS}
    return PromptRecord(
        id=str(row_id) if row_id not in (None, "") else f"{source}-{index:05d}",
        prompt=text,
        label=(label or row.get("label") or "").strip() or "unlabelled",  # a CSV's ", harmful" is 'harmful'
        source=(row.get("source") or "").strip() or source,
        meta=meta,
    )


def _check_unique(records: Sequence[PromptRecord], wheres: Sequence[str]) -> None:
    """Refuse a second row with an id already used (``wheres``: each record's ``file:line``)."""
    seen: dict[str, str] = {}
    for r, where in zip(records, wheres, strict=True):
        if r.id in seen:
            raise SriError(f"{where}: prompt id {clip(r.id)} is already used on {seen[r.id]}; ids must be unique")
        seen[r.id] = f"line {where.rsplit(':', 1)[-1]}"


def load_template(name: str) -> str:
    """A jailbreak template (with its ``{{ prompt }}`` slot) from the offline pyrit set, by id or name."""
    for row in read_jsonl(dataset_path("jailbreak-templates")):
        if name in (row["id"], row["name"]):
            if not row["has_slot"]:
                raise SriError(f"template '{name}' has no {{{{ prompt }}}} slot; choose another")
            return row["template"]
    raise SriError(f"jailbreak template '{name}' is unknown; list them in $SRI_HOME/data/jailbreak-templates.jsonl")


def fill_template(template: str, prompt: str) -> str:
    """Put ``prompt`` into the template's ``{{ prompt }}`` slot(s)."""
    return template.replace("{{ prompt }}", prompt).replace("{{prompt}}", prompt).strip()


def wrap_records(records: Sequence[PromptRecord], template: str, attack: str,
                 label: str = "jailbreak") -> list[PromptRecord]:
    """The same behaviours wrapped by a template; each keeps its source id in ``meta['behavior_id']``."""
    return [
        PromptRecord(id=f"{attack}:{r.id}", prompt=fill_template(template, r.prompt), label=label,
                     source=r.source, meta={**r.meta, "behavior_id": r.id, "behavior": r.prompt, "attack": attack})
        for r in records
    ]
