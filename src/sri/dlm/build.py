"""``sri dlm build``: distil → convert → train → save → gate, resumable at every stage.

Folders (``<out>`` is ``$SRI_HOME/models/<name>`` for a bare name)::

    $SRI_HOME/dlm/distill/<teacher>-<key>/   the distillation set (shared by every build that uses it)
    <out>.parent/.<name>.build/              work folder: recipe.json, init/ (converted, untrained), checkpoint/
    <out>/                                   the model: a normal HF folder + sri_dlm.json (recipe, data, training)
                                             + gate.json (the quality gate)

The work folder stays while training is unfinished (a ``--minutes`` budget ran out, or the run was interrupted):
running the same command again resumes from the checkpoint. It is removed once the planned steps are done.
"""

from __future__ import annotations

import gc
import os
import platform
import resource
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..data.assets import DEFAULT_MODEL, models_dir
from ..errors import SriError
from ..io import check_output_dir, honour_umask, read_json, write_json
from ..models.adapter import DEFAULT_SYSTEM_PROMPT
from .data import DistillSpec, distill, load_pairs
from .gate import GateConfig, heldout_sets, run_gate
from .train import TrainConfig, encode_pairs, train

DEFAULT_BASE = "smollm2-135m-instruct"


@dataclass(frozen=True)
class BuildConfig:
    """Everything that decides the built model (``minutes`` only caps one invocation and is not part of it)."""

    base: str = DEFAULT_BASE
    teacher: str = DEFAULT_MODEL
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillSpec = field(default_factory=DistillSpec)
    mask_token: str | None = None
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    pairs_file: str | None = None  # your own prompt/response JSONL instead of the distilled set

    def recipe(self) -> dict[str, Any]:
        if self.pairs_file is not None:
            data: dict[str, Any] = {"pairs_file": str(Path(self.pairs_file).resolve()),
                                    "sha256": _sha256(Path(self.pairs_file))}
        else:
            data = {"distill": asdict(self.distill), "teacher": self.teacher}
        return {"base": self.base, "data": data, "train": asdict(self.train), "mask_token": self.mask_token,
                "system_prompt": self.system_prompt}


def _sha256(path: Path) -> str:
    import hashlib

    if not path.is_file():
        from ..io import missing_file

        raise SriError(missing_file(path, "pairs file", "check the path"))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def resolve_output(out: str | None, base: str) -> Path:
    """The model folder: ``$SRI_HOME/models/<out>`` for a bare name (default ``<base>-dlm``), else the path."""
    if out is None:
        return models_dir() / f"{Path(base).name}-dlm"
    if "/" in out or os.sep in out or out.startswith((".", "~")):
        return Path(out).expanduser()
    return models_dir() / out


def work_folder(out: Path) -> Path:
    return out.parent / f".{out.name}.build"


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _host() -> dict[str, Any]:
    import torch

    return {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_average": list(os.getloadavg())}


def build_dlm(config: BuildConfig, out: Path, *, minutes: float | None = None, gate: GateConfig | None = None,
              device: str = "cpu", progress: bool = True, log: Callable[[str], None] = lambda s: None,
              stop_after: int | None = None) -> dict[str, Any]:
    """Build (or resume) the diffusion LM of ``config`` into ``out``; returns its ``sri_dlm.json`` record (with the
    gate record under ``gate`` when one ran). ``stop_after`` ends this call after that many steps (tests)."""
    from ..models import check_model, load_diffusion_model

    if config.distill.teacher != config.teacher or config.distill.system_prompt != config.system_prompt:
        raise SriError("BuildConfig.distill must use the build's teacher and system prompt")
    out = Path(os.path.abspath(out))  # "." has no name to put the sibling work and temporary folders beside
    if out.exists() and not (out.is_dir() and ((out / "sri_dlm.json").is_file() or not any(out.iterdir()))):
        kind = "a folder" if out.is_dir() else "a file"
        raise SriError(f"--out {out} is {kind} that is not a model built by `sri dlm build`; saving would replace "
                       "it — give a new folder path")
    check_output_dir(out.parent, "--out's parent folder")
    t_start = time.perf_counter()
    host_start = _host()
    done = out / "sri_dlm.json"
    if done.is_file():
        record = read_json(done)
        if record.get("recipe") != _jsonable(config.recipe()):
            raise SriError(f"{out} holds a model built with another recipe; choose another --out or delete it")
        if record["training"]["steps_done"] >= config.train.steps:
            log(f"{out} is already built ({record['training']['steps_done']} steps)")
            if gate is not None and not (out / "gate.json").is_file():
                record["gate"] = gate_model(out, config.base, gate, device=device, progress=progress, log=log)
            return record

    # everything the user gave is checked before the work folder is written
    own_pairs = load_pairs(config.pairs_file) if config.pairs_file is not None else None
    tokenizer = check_model(config.base, system_prompt=config.system_prompt)
    if config.mask_token is not None:
        from .convert import pick_mask_token

        pick_mask_token(tokenizer, config.mask_token)
    if own_pairs is None:
        check_model(config.teacher, system_prompt=config.system_prompt)
    work = work_folder(out)
    recipe_file = work / "recipe.json"
    if recipe_file.is_file() and read_json(recipe_file) != _jsonable(config.recipe()):
        if (work / "checkpoint").exists():
            raise SriError(f"{work} holds an unfinished build with another recipe; use the same settings to resume "
                           "it or delete that folder to start over")
        log(f"{work} holds an attempt with another recipe that trained nothing; starting over")
        shutil.rmtree(work)
    new_work = not work.exists()
    write_json(recipe_file, config.recipe())

    t0 = time.perf_counter()
    init = work / "init"
    try:
        data = own_pairs if own_pairs is not None else \
            distill(config.distill, progress=progress, device=device, log=log)
        gc.collect()
        distill_s = time.perf_counter() - t0
        if not (init / "config.json").is_file():
            conversion = _convert(config, init, log)
        else:
            conversion = read_json(work / "conversion.json")
        write_json(work / "conversion.json", conversion)
        adapter = load_diffusion_model(str(init), device=device, dtype="fp32", system_prompt=config.system_prompt)
        examples, too_long = encode_pairs(adapter, data.pairs, config.train.gen_length)
        if not examples:
            raise SriError(f"none of the {len(data.pairs)} training pairs fits --gen-length "
                           f"{config.train.gen_length} (answer + end token); raise --gen-length")
    except BaseException:
        if new_work and not (work / "checkpoint").exists():  # nothing trained: leave no work folder behind
            shutil.rmtree(work, ignore_errors=True)
        raise
    log(f"training on {len(examples)} pairs ({len(too_long)} longer than {config.train.gen_length} slots left out)")
    t1 = time.perf_counter()
    state = train(adapter, examples, config.train, work / "checkpoint", minutes=minutes, progress=progress, log=log,
                  stop_after=stop_after)
    train_call_s = time.perf_counter() - t1

    record = {
        "recipe": config.recipe(),
        "conversion": conversion,
        "data": {"folder": str(data.folder), **data.summary, "trained_pairs": len(examples),
                 "too_long": len(too_long)},
        "training": {"steps_done": state.step, "steps_planned": config.train.steps, "wall_s": round(state.wall_s, 1),
                     "sessions": state.sessions, "first_loss": state.losses[:1],
                     "loss_every_50": [round(sum(state.losses[i:i + 50]) / len(state.losses[i:i + 50]), 4)
                                       for i in range(0, len(state.losses), 50)],
                     "final_loss_mean_50": state.recent_loss(50),
                     "s_per_step_this_call": round(train_call_s / max(1, state.last_session_steps), 3)},
        "this_call": {"distill_s": round(distill_s, 1), "train_s": round(train_call_s, 1),
                      "peak_rss_mib": round(_peak_rss_mib(), 1), "host_at_start": host_start},
        "family": "dream (sri_family in config.json): mask token, bidirectional attention, shifted logits",
    }
    _save_model(adapter, out, record)
    del adapter
    gc.collect()
    finished = state.step >= config.train.steps
    if finished:
        shutil.rmtree(work, ignore_errors=True)
        log(f"model saved to {out}")
    else:
        log(f"stopped at step {state.step}/{config.train.steps}; model so far saved to {out}; run the same command "
            "again to continue training")
    if gate is not None:
        record["gate"] = gate_model(out, config.base, gate, device=device, progress=progress, log=log)
    record["this_call"]["wall_s"] = round(time.perf_counter() - t_start, 1)
    record["this_call"]["host_at_end"] = _host()
    record["this_call"]["peak_rss_mib"] = round(_peak_rss_mib(), 1)
    write_json(out / "sri_dlm.json", {k: v for k, v in record.items() if k != "gate"})
    return record


def _convert(config: BuildConfig, init: Path, log: Callable[[str], None]) -> dict[str, Any]:
    from .convert import convert_to_diffusion, load_ar_for_conversion, save_converted

    log(f"converting {config.base} into a masked-diffusion skeleton")
    model, tokenizer, source = load_ar_for_conversion(config.base)
    conversion = convert_to_diffusion(model, tokenizer, config.mask_token)
    tmp = init.with_name("init.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_converted(model, tokenizer, tmp)
    os.replace(tmp, init)
    del model
    gc.collect()
    return {**conversion.to_dict(), "base_source": source}


def _save_model(adapter: Any, out: Path, record: dict[str, Any]) -> None:
    """Write the model folder atomically (sibling temporary folder renamed into place)."""
    tmp = out.with_name(f".{out.name}.saving")
    shutil.rmtree(tmp, ignore_errors=True)
    adapter.model.save_pretrained(tmp, safe_serialization=True)
    adapter.tokenizer.save_pretrained(tmp)
    write_json(tmp / "sri_dlm.json", record)
    honour_umask(tmp)
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def gate_model(model: str | Path, base: str | None, config: GateConfig, *, device: str = "cpu",
               progress: bool = True, log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Run the quality gate on a built model folder (``base``: the AR model it came from, default: recorded in
    its sri_dlm.json) and store ``gate.json`` in it."""
    from ..models import load_diffusion_model, load_model, resolve_model_source

    folder = Path(resolve_model_source(str(model))[0])
    info = read_json(folder / "sri_dlm.json") if (folder / "sri_dlm.json").is_file() else {}
    system_prompt = info.get("recipe", {}).get("system_prompt", DEFAULT_SYSTEM_PROMPT)
    try:  # first: is it a diffusion model at all? (a base model named for an AR model would not help)
        adapter = load_diffusion_model(str(model), device=device, dtype="fp32", system_prompt=system_prompt)
    except SriError as e:
        if "has no mask token" in str(e):
            raise SriError(f"'{model}' is not a masked-diffusion model (it has no mask token); gate a model built by "
                           "`sri dlm build`") from None
        raise
    base = base or info.get("recipe", {}).get("base")
    if base is None:
        raise SriError(f"{folder} has no sri_dlm.json naming its base model; pass --base with the AR model it was "
                       "adapted from")
    ar = load_model(base, device=device, dtype="fp32", system_prompt=system_prompt)
    pairs: list[dict[str, Any]] = []
    data_folder = info.get("data", {}).get("folder")
    if data_folder and (Path(data_folder) / "heldout.jsonl").is_file():
        from ..io import read_jsonl

        pairs = read_jsonl(Path(data_folder) / "heldout.jsonl")
    record = run_gate(adapter, ar, heldout_sets(config, pairs), config, progress=progress, log=log)
    record["peak_rss_mib"] = round(_peak_rss_mib(), 1)
    record["host"] = _host()
    write_json(folder / "gate.json", record)
    return record


def _jsonable(obj: Any) -> Any:
    import json

    return json.loads(json.dumps(obj))
