"""What the stages of one run share: the run folder (claimed for one configuration), provenance with per-stage
wall times, and the models, loaded lazily and released when no longer needed."""

from __future__ import annotations

import datetime as dt
import gc
import os
import platform
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from .. import __version__
from ..data.prompts import PromptRecord
from ..errors import SriError
from ..io import LOCK_NAME, read_json, read_text, safe_child, write_json, write_text_atomic
from ..tracing.store import TraceStore
from .config import RunConfig, changed_keys, identity, load_yaml, parse_config

#: what a folder holds after an attempt that failed before computing anything: another config may take it over
CLAIM_FILES = frozenset({"config.yaml", "provenance.json", "prompts", LOCK_NAME})


def claim_folder(run_dir: Path, cfg: RunConfig, text: str, log: Callable[[str], None]) -> None:
    """Bind ``run_dir`` to ``cfg``. A folder of another configuration is refused with the changed key paths; a
    changed ``judge`` section discards the judgements (made again); ``analysis`` / ``execution`` may change."""
    saved = run_dir / "config.yaml"
    if saved.is_file():
        try:
            old = parse_config(load_yaml(read_text(saved)))
        except yaml.YAMLError:
            raise SriError(f"{saved} is not valid YAML any more; use another --out folder") from None
        except SriError as e:
            raise SriError(f"{saved} no longer validates ({e}); use another --out folder") from None
        changed = changed_keys(identity(old), identity(cfg))
        if changed and {p.name for p in run_dir.iterdir()} <= CLAIM_FILES:
            log(f"{run_dir} holds the configuration of an attempt that computed nothing; replacing it")
            write_text_atomic(saved, text)
            return
        if changed:
            shown = ", ".join(changed[:6]) + (" …" if len(changed) > 6 else "")
            raise SriError(f"{run_dir} holds a run with another configuration (changed: {shown}); use another "
                           "--out folder or the same config to resume (only judge, analysis, execution and "
                           "trust_remote_code may change)")
        if old.judge != cfg.judge:
            log("judge settings changed: the responses will be judged again")
            shutil.rmtree(run_dir / "judgements", ignore_errors=True)
        if old != cfg:
            write_text_atomic(saved, text)
        return
    check_run_folder(run_dir)
    write_text_atomic(saved, text)


def check_run_folder(run_dir: Path) -> None:
    """Refuse a folder that is neither new, empty nor a run folder (no ``config.yaml``), without writing: called
    before the writer lock is taken too, so a refused folder does not get a lock file."""
    if (run_dir / "config.yaml").is_file():
        return
    if run_dir.is_dir() and any(p.name != LOCK_NAME for p in run_dir.iterdir()):
        raise SriError(f"{run_dir} exists and is not a run folder; choose an empty or new --out folder")


class Run:
    """One run folder: config, provenance, models. ``progress`` draws bars; ``log`` prints stage lines."""

    def __init__(self, cfg: RunConfig, run_dir: Path, progress: bool, log: Callable[[str], None]) -> None:
        self.cfg, self.dir, self.progress, self.log = cfg, run_dir, progress, log
        self.sampler_spec = cfg.sampler
        self.sampler = cfg.sampler.build()
        self._target: Any = None
        self._judge_adapter: Any = None
        self._attack_model: Any = None
        self._planner: Any = None  # the ray backend's weightless planning adapter
        prov_path = run_dir / "provenance.json"
        self.prov: dict[str, Any] = read_json(prov_path) if prov_path.is_file() else {
            "sri_version": __version__, "created": _now(), "sessions": []}
        self.session: dict[str, Any] = {"started": _now(), "host": _host(), "stages": {}}
        self.prov["sessions"].append(self.session)
        self.prov["sampler"] = self.sampler.params()

    def save(self) -> None:
        write_json(self.dir / "provenance.json", self.prov)

    @contextmanager
    def stage(self, number: int, name: str) -> Iterator[None]:
        """Time stage ``number. name`` into the provenance."""
        t0 = time.perf_counter()
        self.log(f"stage {number:>2}. {name}")
        yield
        key = f"{number:02d}-{name}"
        self.session["stages"][key] = round(self.session["stages"].get(key, 0.0) + time.perf_counter() - t0, 2)
        self.save()

    # ------------------------------------------------------------------ models
    def target(self) -> Any:
        if self._target is None:
            from ..models import load_diffusion_model, load_model
            from ..sampling import resolve_sampler

            self.log(f"loading target model {self.cfg.model}")
            loader = load_diffusion_model if self.sampler.kind == "diffusion" else load_model
            self._target = loader(self.cfg.model, device=self.cfg.device, dtype=self.cfg.dtype,
                                  system_prompt=self.cfg.system_prompt or None,
                                  trust_remote_code=self.cfg.trust_remote_code, stop_tokens=self.cfg.stop_tokens)
            self.sampler = resolve_sampler(self.sampler, self._target)
            self.prov["sampler"] = self.sampler.params()
            self.prov["model"] = self._target.describe()
            self.prov["model_kind"] = self._target.family.kind
            self.save()
        return self._target

    def attack_model(self) -> Any:
        """The model optimising attacks run against: ``attack_model`` when set (prompts transfer), else the target."""
        name = self.cfg.attack_model
        if not name or name == self.cfg.model:
            return self.target()
        if self._attack_model is None:
            from ..models import load_model

            self.log(f"loading attack model {name} (optimising attacks run on it; their prompts transfer)")
            self._attack_model = load_model(name, device=self.cfg.device, dtype=self.cfg.dtype,
                                            system_prompt=self.cfg.system_prompt or None)
            self.prov["attack_model"] = self._attack_model.describe()
        return self._attack_model

    def release_models(self, keep_target: bool = False) -> None:
        """Drop the attack model (and the target unless ``keep_target``) once their work is done."""
        self._attack_model = None
        if not keep_target:
            self._target = None
        gc.collect()

    def model_kind(self) -> str:
        return self.prov.get("model_kind") or self.target().family.kind

    def judge_model_name(self) -> str | None:
        from ..judges.llm import judge_model_for

        return judge_model_for(self.cfg.judge.model)

    def judge(self) -> Any:
        """The LLM judge (loaded once; the target is released first when the judge is another model)."""
        from ..judges.llm import QUESTION, LLMJudge

        name = self.judge_model_name()
        if name is None:
            return None
        if self._judge_adapter is None:
            if name == self.cfg.model:
                self._judge_adapter = self.target()
            else:
                from ..models import load_model

                self._attack_model = None
                gc.collect()
                self.log(f"loading judge model {name}")
                self._judge_adapter = load_model(name, device=self.cfg.device, dtype=self.cfg.dtype)
        j = self.cfg.judge
        judge = LLMJudge(self._judge_adapter, threshold=j.threshold, batch_size=j.batch_size, max_chars=j.max_chars)
        self.prov["judge"] = {"name": judge.name, "model": self._judge_adapter.describe(), "question": QUESTION,
                              "threshold": j.threshold, "max_chars": j.max_chars}
        return judge

    # ------------------------------------------------------------------ traces
    def trace(self, name: str, records: list[PromptRecord]) -> TraceStore:
        """Trace ``records`` into ``traces/<name>/`` (resumes; a finished folder loads no model) with the run's
        ``execution`` backend. Raises :class:`SriError` if batches failed and were skipped (re-running retries
        them)."""
        from ..tracing.executors import ModelSpec, load_for_execution
        from ..tracing.tracer import trace_prompts

        folder = safe_child(self.dir / "traces", name)
        if (folder / "run.json").is_file():
            store = TraceStore.open(folder)
            _check_own_traces(store, name, records)
            if {r.id for r in records} <= store.done_ids():
                return store
        execution = self.cfg.execution.build(log=self.log)
        if execution.backend == "ray":  # the workers load the model; this process plans from tokenizer and config
            cfg = self.cfg
            execution.model = ModelSpec(cfg.model, diffusion=self.sampler.kind == "diffusion", device=cfg.device,
                                        dtype=cfg.dtype, system_prompt=cfg.system_prompt or None,
                                        options={"trust_remote_code": cfg.trust_remote_code,
                                                 "stop_tokens": list(cfg.stop_tokens)})
            if self._planner is None:
                self._planner = load_for_execution(execution.model, execution)
            adapter = self._planner
        else:
            adapter = self.target()
        store = trace_prompts(adapter, records, folder, sampler=self.sampler, layers=self.cfg.layers,
                              pooling=self.cfg.pooling, batch_size=self.cfg.batch_size,
                              max_prompt_tokens=self.cfg.max_prompt_tokens, progress=self.progress,
                              description=f"{name:>24}", execution=execution)
        failed = getattr(store, "failed_batches", 0)
        if failed:
            raise SriError(f"{failed} batch(es) of {name} failed and were skipped; re-run the same command to retry "
                           "them before the analysis")
        return store


def _check_own_traces(store: TraceStore, name: str, records: list[PromptRecord]) -> None:
    """A run's ``traces/<set>/`` holds traces of that set only, each of its prompt text and label as the set has
    them: a shard copied in from elsewhere would enter the results under the set's name. One-line
    :class:`SriError` naming the shard otherwise."""
    wanted = {r.id: (r.prompt, r.label) for r in records}
    for rows_file, rows in store.shard_rows():
        for row in rows:
            have = wanted.get(row.get("id"))
            if have is None:
                problem = f"a trace of prompt {row.get('id')!r}, which is not in this run's {name} set"
            elif (row.get("prompt"), row.get("label")) != have:
                problem = f"a trace of prompt {row.get('id')!r} with another prompt text or label than the set has"
            else:
                continue
            raise SriError(f"{rows_file} holds {problem}; a run folder traces only its own prompt sets — delete that "
                           f"shard and its .safetensors (or all of {store.folder}) and re-run to trace them again")


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _host() -> dict[str, Any]:
    import torch

    return {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
