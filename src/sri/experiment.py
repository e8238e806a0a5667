"""One-command experiment (``sri run --config configs/NAME.yaml``):

    anchors → attack prompts → traces of harmless, raw harmful and every attack → LLM judge → signals
            → analysis → report

Everything lands in one run folder (``out`` or ``results/<name>``)::

    config.yaml            the exact configuration (a rerun with another config is refused)
    provenance.json        model, sampler, trace keys, anchor counts, judge, host, per-stage wall times
    traces/<set>/          trace stores (anchor-harmless, anchor-harmful, harmless, harmful, one per attack)
    anchors.safetensors    the anchors (+ .json)
    attacks/<attack>.jsonl the jailbreak prompts (optimising attacks are built chunk by chunk)
    judgements/<set>.jsonl LLM-judge verdicts per prompt
    signals.jsonl          one row per evaluated prompt: SRI, text signal, verdicts, group
    analysis.json, flags.jsonl, figures/, report.html

With ``samplers: {name: sampler, …}`` (fixed weights, several samplers) the attack prompts are built once in
``attacks/``, each sampler gets a complete run folder ``samplers/<name>/`` as above, and ``comparison.md`` /
``comparison.json`` / ``figures/samplers.png`` put them side by side (:mod:`sri.comparison`).

Every stage skips finished work, so an interrupted run resumes where it stopped with the same command. The
``judge`` and ``analysis`` sections may change between runs of one folder: the responses are then judged
again (and analysed again) without tracing anything.
Evaluation prompts never overlap anchor prompts: when both come from one dataset they are disjoint slices of
one seeded shuffle, and the texts are checked.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import gc
import os
import platform
import shutil
import time
import types
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import __version__
from .analysis import LAMBDA_C, LAMBDA_R, analyze_run, step_verdicts
from .attacks import AttackContext, get_attack, run_attack
from .data import PromptRecord, load_prompts
from .errors import SriError
from .io import read_json, read_jsonl, write_json, write_jsonl, write_text_atomic
from .judges import normalise
from .llm_judge import QUESTION, LLMJudge, default_judge_model
from .models import DEFAULT_SYSTEM_PROMPT
from .report.html import build_report
from .signal import Anchors, compute_signals, fit_anchors
from .trace import TraceStore

EVAL_SETS = ("harmless", "harmful")
#: sampler kind → name of its config class in :mod:`sri.sampling`
SAMPLER_CONFIGS = {"ar": "ARConfig", "diffusion": "DiffusionConfig"}


# --------------------------------------------------------------------------------------------- the config
@dataclass
class PromptSet:
    """``n`` prompts from ``dataset`` (offline name or file), shuffled with the run seed, rows whose metadata
    match every ``where`` entry."""

    dataset: str
    n: int
    where: dict[str, Any] = field(default_factory=dict)


@dataclass
class AnchorSets:
    harmless: PromptSet | None = None
    harmful: PromptSet | None = None
    file: str | None = None  # reuse fitted anchors instead (their key must match the traces)


@dataclass
class EvalSets:
    harmless: PromptSet
    harmful: PromptSet


@dataclass
class AttackConfig:
    """One attack on the first ``n`` evaluation behaviours (default: all of them)."""

    name: str
    n: int | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class JudgeConfig:
    """The LLM judge of attack success: ``auto`` (1.5B coder model if fetched, else the default), a model
    name/folder, or ``none`` (no ASR). ``hrr_stride``: judge every k-th diffusion step for HRR/FRR."""

    model: str = "auto"
    batch_size: int = 8
    max_chars: int = 1500
    threshold: float = 0.5
    hrr_stride: int = 4


@dataclass
class AnalysisConfig:
    lambda_c: float = LAMBDA_C
    lambda_r: list[float] = field(default_factory=lambda: list(LAMBDA_R))
    lambda_dip: float = 0.5
    bootstrap: int = 1000
    panels: int = 4


@dataclass
class ExperimentConfig:
    name: str
    model: str
    anchors: AnchorSets
    eval: EvalSets
    attacks: list[AttackConfig] = field(default_factory=list)
    device: str = "auto"
    dtype: str = "auto"
    trust_remote_code: bool = False
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    stop_tokens: list[str] = field(default_factory=list)  # extra tokens (strings or ids) that end a response
    seed: int = 0
    sampler: dict[str, Any] = field(default_factory=lambda: {"kind": "ar", "steps": 32})
    samplers: dict[str, dict[str, Any]] = field(default_factory=dict)  # name → sampler: one run each, compared
    layers: str = "final"
    pooling: str | None = None
    batch_size: int = 8
    attacker: str | None = None  # chat model that writes PAIR prompts (default: the target)
    attack_model: str | None = None  # causal model optimising attacks run against (default: the target)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    # where every tracing stage runs (sri.executors.Execution: backend, workers, gpus_per_worker, address,
    # max_failed_batches …); not part of the run's identity, so a run may be resumed on another backend
    execution: dict[str, Any] = field(default_factory=dict)


def _check_type(value: Any, hint: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check_type(value, inner[0], where)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise SriError(f"config: {where} must be a list (got {type(value).__name__})")
        return [_check_type(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise SriError(f"config: {where} must be a mapping (got {type(value).__name__})")
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and (not isinstance(value, hint) or (hint is int and isinstance(value, bool))):
        raise SriError(f"config: {where} must be {hint.__name__} (got {value!r})")
    return value


def _build(cls: Any, data: Any, where: str) -> Any:
    """Instantiate dataclass ``cls`` from a YAML mapping, with one-line errors for unknown/missing/mistyped keys."""
    if not isinstance(data, dict):
        raise SriError(f"config: {where} must be a mapping (got {type(data).__name__})")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            raise SriError(f"config: unknown key '{where}.{key}'; allowed: {', '.join(fields)}")
    values = {}
    for name, f in fields.items():
        if name in data:
            values[name] = _check_type(data[name], hints[name], f"{where}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise SriError(f"config: '{where}.{name}' is required")
    return cls(**values)


def parse_config(data: Any) -> ExperimentConfig:
    """Validate a parsed YAML document into an :class:`ExperimentConfig` (one-line errors)."""
    cfg = _build(ExperimentConfig, data, "config")
    anchors = cfg.anchors
    if anchors.file is None and (anchors.harmless is None or anchors.harmful is None):
        raise SriError("config: anchors needs 'harmless' and 'harmful' prompt sets, or 'file' with fitted anchors")
    sets = [("eval.harmless", cfg.eval.harmless), ("eval.harmful", cfg.eval.harmful)]
    sets += [(f"anchors.{k}", s) for k, s in (("harmless", anchors.harmless), ("harmful", anchors.harmful)) if s]
    for where, s in sets:
        if s.n <= 0:
            raise SriError(f"config: {where}.n must be positive (got {s.n})")
    seen = set()
    for i, a in enumerate(cfg.attacks):
        spec = get_attack(a.name)
        if a.name in seen:
            raise SriError(f"config: attack '{a.name}' is listed twice; list each attack once")
        seen.add(a.name)
        if a.n is not None and not 0 < a.n <= cfg.eval.harmful.n:
            raise SriError(f"config: attacks[{i}] ({a.name}) n must be in 1…{cfg.eval.harmful.n} (eval.harmful.n)")
        unknown = set(a.options) - set(spec.options())
        if unknown:
            raise SriError(f"config: attack '{a.name}' has no option '{sorted(unknown)[0]}'; its options are: "
                           f"{', '.join(spec.options()) or 'none'}")
    if cfg.batch_size <= 0:
        raise SriError(f"config: batch_size must be positive (got {cfg.batch_size})")
    if not cfg.analysis.lambda_r or not all(0 < v < 1 for v in [*cfg.analysis.lambda_r, cfg.analysis.lambda_c]):
        raise SriError("config: analysis.lambda_c and every analysis.lambda_r must lie strictly between 0 and 1")
    if cfg.judge.hrr_stride <= 0 or cfg.judge.batch_size <= 0:
        raise SriError("config: judge.hrr_stride and judge.batch_size must be positive")
    build_sampler(cfg.sampler)
    from .executors import Execution

    Execution.from_config(cfg.execution)
    kinds = set()
    for name, spec in cfg.samplers.items():
        if not isinstance(name, str) or not isinstance(spec, dict) or \
                not name.replace("-", "").replace("_", "").isalnum():
            raise SriError(f"config: samplers.{name} must be a mapping under a name of letters, digits, - and _")
        kinds.add(build_sampler(spec).kind)
    if len(kinds) > 1:
        raise SriError("config: samplers mixes autoregressive and diffusion samplers; one model is either kind — "
                       "compare AR order on diffusion weights with {kind: diffusion, remasking: leftmost}")
    if cfg.samplers and "sampler" in (data or {}):
        raise SriError("config: give either 'sampler' (one run) or 'samplers' (several, compared), not both")
    return cfg


def load_config(path: str | Path) -> tuple[ExperimentConfig, str]:
    """Read and validate a YAML config; returns the config and its text."""
    path = Path(path)
    if not path.is_file():
        raise SriError(f"config file {path} does not exist; see configs/ for examples")
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise SriError(f"{path} is not valid YAML{where}; fix the syntax") from None
    return parse_config(data), text


def build_sampler(spec: dict[str, Any]) -> Any:
    """A sampler config from ``{kind: ar|diffusion, …parameters}``."""
    from . import sampling

    params = dict(spec)
    kind = params.pop("kind", "ar")
    cls = getattr(sampling, SAMPLER_CONFIGS.get(str(kind), ""), None) if kind in sampling.SAMPLERS else None
    if cls is None:
        raise SriError(f"config: sampler kind '{kind}' is not available; use one of {', '.join(sampling.SAMPLERS)}")
    try:
        return cls(**params)
    except TypeError as e:
        raise SriError(f"config: sampler options {sorted(params)} do not fit the {kind} sampler ({e})") from None


# --------------------------------------------------------------------------------------------- prompts
def select_prompts(ps: PromptSet, label: str, seed: int, exclude: set[str] = frozenset()) -> list[PromptRecord]:
    """The first ``ps.n`` prompts of the seeded shuffle of ``ps.dataset`` that match ``ps.where`` and whose
    normalised text is not in ``exclude``."""
    records = load_prompts(ps.dataset, label=label, shuffle_seed=seed)
    records = [r for r in records if all(str(r.meta.get(k)) == str(v) for k, v in ps.where.items())
               and normalise(r.prompt) not in exclude]
    if len(records) < ps.n:
        raise SriError(f"{ps.dataset} has {len(records)} prompts left for this set (after the 'where' filter and "
                       f"removing anchor prompts) but {ps.n} were asked for; ask for fewer")
    return records[:ps.n]


def prompt_sets(cfg: ExperimentConfig) -> dict[str, list[PromptRecord]]:
    """Anchor and evaluation prompt sets. Evaluation prompts are drawn after removing every anchor prompt, so
    they never overlap: from one dataset they are the next prompts of the same seeded shuffle."""
    sets: dict[str, list[PromptRecord]] = {}
    anchor_sets = {"harmless": cfg.anchors.harmless, "harmful": cfg.anchors.harmful}
    for kind in EVAL_SETS:
        a = anchor_sets[kind]
        used: set[str] = set()
        if a is not None:
            sets[f"anchor-{kind}"] = select_prompts(a, kind, cfg.seed)
            used = {normalise(r.prompt) for r in sets[f"anchor-{kind}"]}
        sets[kind] = select_prompts(getattr(cfg.eval, kind), kind, cfg.seed, exclude=used)
    return sets


# --------------------------------------------------------------------------------------------- the run
class _Run:
    """State shared by the stages of one run: folder, config, lazily loaded models, provenance."""

    def __init__(self, cfg: ExperimentConfig, run_dir: Path, progress: bool, log: Callable[[str], None]) -> None:
        self.cfg, self.dir, self.progress, self.log = cfg, run_dir, progress, log
        self.sampler = build_sampler(cfg.sampler)
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
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        self.log(f"stage {name}")
        yield
        self.session["stages"][name] = round(self.session["stages"].get(name, 0.0) + time.perf_counter() - t0, 2)
        self.save()

    # ------------------------------------------------------------------ models
    def target(self) -> Any:
        if self._target is None:
            from .models import load_diffusion_model, load_model

            self.log(f"loading target model {self.cfg.model}")
            loader = load_diffusion_model if self.sampler.kind == "diffusion" else load_model
            self._target = loader(self.cfg.model, device=self.cfg.device, dtype=self.cfg.dtype,
                                      system_prompt=self.cfg.system_prompt or None,
                                      trust_remote_code=self.cfg.trust_remote_code,
                                      stop_tokens=self.cfg.stop_tokens)
            self.prov["model"] = self._target.describe()
            self.prov["model_kind"] = self._target.family.kind
            if self.sampler.kind == "diffusion":  # the family's default schedule, now that the family is known
                from .sampling import resolve_sampler

                self.sampler = resolve_sampler(self.sampler, self._target)
                self.prov["sampler"] = self.sampler.params()
            self.save()
        return self._target

    def attack_model(self) -> Any:
        """The model optimising attacks run against: ``attack_model`` when set (prompts transfer), else the target."""
        name = self.cfg.attack_model
        if not name or name == self.cfg.model:
            return self.target()
        if self._attack_model is None:
            from .models import load_model

            self.log(f"loading attack model {name} (optimising attacks run on it; their prompts transfer)")
            self._attack_model = load_model(name, device=self.cfg.device, dtype=self.cfg.dtype,
                                            system_prompt=self.cfg.system_prompt or None)
            self.prov["attack_model"] = self._attack_model.describe()
        return self._attack_model

    def release_models(self, keep_target: bool = False) -> None:
        """Drop the attack model (and the target unless ``keep_target``) once the attack prompts are built."""
        self._attack_model = None
        if not keep_target:
            self._target = None
        gc.collect()

    def model_kind(self) -> str:
        return self.prov.get("model_kind") or self.target().family.kind

    def judge_model_name(self) -> str | None:
        name = self.cfg.judge.model
        if name.lower() == "none":
            return None
        return default_judge_model() if name == "auto" else name

    def judge(self) -> LLMJudge | None:
        name = self.judge_model_name()
        if name is None:
            return None
        if self._judge_adapter is None:
            if name == self.cfg.model:
                self._judge_adapter = self.target()
            else:
                from .models import load_model

                self._target = self._attack_model = None  # free their memory before loading the judge
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
        from .executors import Execution, ModelSpec, load_for_execution
        from .tracer import trace_prompts

        folder = self.dir / "traces" / name
        if (folder / "run.json").is_file():
            store = TraceStore.open(folder)
            if {r.id for r in records} <= store.done_ids():
                return store
        execution = Execution.from_config(self.cfg.execution, log=self.log)
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
                              pooling=self.cfg.pooling, batch_size=self.cfg.batch_size, progress=self.progress,
                              description=f"{name:>22}", execution=execution)
        failed = getattr(store, "failed_batches", 0)
        if failed:
            raise SriError(f"{failed} batch(es) of {name} failed and were skipped; re-run the same command to retry "
                           "them before the analysis")
        return store


def run_experiment(config: str | Path | ExperimentConfig, out: str | Path | None = None, *, progress: bool = True,
                   log: Callable[[str], None] = lambda s: None, config_text: str | None = None) -> Path:
    """Run (or resume) the whole experiment; returns the path of the HTML report (of ``comparison.md`` when the
    config lists several ``samplers``)."""
    if isinstance(config, ExperimentConfig):
        cfg, text = config, config_text or _config_yaml(config)
    else:
        cfg, text = load_config(config)
    run_dir = Path(out) if out is not None else Path("results") / cfg.name
    _claim_folder(run_dir, cfg, text, log)
    if cfg.samplers:
        return _run_samplers(cfg, run_dir, progress, log)
    run = _Run(cfg, run_dir, progress, log)
    sets = prompt_sets(cfg)
    with run.stage("attacks"):
        attack_sets = _attack_prompts(run, sets["harmful"])
    run.release_models(keep_target=True)
    return _run_pipeline(run, sets, attack_sets)


def _run_samplers(cfg: ExperimentConfig, run_dir: Path, progress: bool, log: Callable[[str], None]) -> Path:
    """Fixed weights, several samplers: the attack prompts are built once (``attacks/``), then every sampler gets
    a complete run in ``samplers/<name>/`` on the same prompts, and :mod:`sri.comparison` tabulates them."""
    from .comparison import write_comparison

    sets = prompt_sets(cfg)
    first = next(iter(cfg.samplers.values()))
    shared = _Run(dataclasses.replace(cfg, sampler=first, samplers={}), run_dir, progress, log)
    with shared.stage("attacks"):
        attack_sets = _attack_prompts(shared, sets["harmful"])
    shared.release_models()
    run_dirs = {}
    for name, spec in cfg.samplers.items():
        sub_cfg = dataclasses.replace(cfg, name=f"{cfg.name}-{name}", sampler=spec, samplers={})
        sub_dir = run_dir / "samplers" / name
        log(f"sampler {name}: {build_sampler(spec).params()}")
        _claim_folder(sub_dir, sub_cfg, _config_yaml(sub_cfg), log)
        run = _Run(sub_cfg, sub_dir, progress, log)
        run.prov["skipped_attacks"] = shared.prov.get("skipped_attacks", {})
        run.prov["attacks_from"] = str(run_dir / "attacks")
        if "attack_model" in shared.prov:
            run.prov["attack_model"] = shared.prov["attack_model"]
        _run_pipeline(run, sets, attack_sets)
        run_dirs[name] = sub_dir
    with shared.stage("comparison"):
        return write_comparison(run_dir, run_dirs, cfg.samplers)


def _config_yaml(cfg: ExperimentConfig) -> str:
    data = dataclasses.asdict(cfg)
    data.pop("samplers" if not cfg.samplers else "sampler")
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def _run_pipeline(run: _Run, sets: dict[str, list[PromptRecord]], attack_sets: dict[str, list[PromptRecord]]) -> Path:
    """anchors → traces → judge → signals → analysis → report for one sampler; returns the report path."""
    cfg, run_dir = run.cfg, run.dir
    t_start = time.perf_counter()
    with run.stage("anchors"):
        anchors = _anchors(run, sets)
    stores: dict[str, TraceStore] = {}
    with run.stage("traces"):
        for name in (*EVAL_SETS, *attack_sets):
            stores[name] = run.trace(name, sets[name] if name in sets else attack_sets[name])
    with run.stage("judge"):
        verdicts = _judge(run, stores)
    with run.stage("signals"):
        rows = []
        for name, store in stores.items():
            judged = verdicts.get(name, {})
            meta = {r["id"]: r.get("meta", {}) for r in store.rows()}
            for row in compute_signals(anchors, store):
                m = meta.get(row["id"], {})
                rows.append({**row, "group": name, **{k: m[k] for k in ("behavior_id", "attack") if k in m},
                             **judged.get(row["id"], {})})
        write_jsonl(run_dir / "signals.jsonl", rows)
        run.prov["trace_key"] = next(iter(stores.values())).key
    a = cfg.analysis
    with run.stage("analysis"):
        analyze_run(run_dir, lambda_c=a.lambda_c, lambda_r=a.lambda_r, lambda_dip=a.lambda_dip,
                    resamples=a.bootstrap, seed=cfg.seed)
    with run.stage("report"):
        report = build_report(run_dir, panels=a.panels)
    run.session["wall_s"] = round(time.perf_counter() - t_start, 1)
    run.session["finished"] = _now()
    run.save()
    return report


#: config sections that only steer cheap stages: changing them reruns those stages instead of refusing the folder
_RERUNNABLE = ("judge", "analysis", "execution")


def _claim_folder(run_dir: Path, cfg: ExperimentConfig, text: str, log: Callable[[str], None]) -> None:
    """Claim ``run_dir`` for ``cfg``. A folder of another experiment is refused; a changed ``judge`` section
    discards the judgements (they are made again), a changed ``analysis`` section needs nothing discarded."""
    saved = run_dir / "config.yaml"
    if saved.is_file():
        old = dataclasses.asdict(parse_config(yaml.safe_load(saved.read_text(encoding="utf-8"))))
        new = dataclasses.asdict(cfg)
        if {k: v for k, v in old.items() if k not in _RERUNNABLE} != \
                {k: v for k, v in new.items() if k not in _RERUNNABLE}:
            raise SriError(f"{run_dir} holds a run with another configuration ({saved}); use another --out folder "
                           "or the same config to resume (only 'judge', 'analysis' and 'execution' may change)")
        if old["judge"] != new["judge"]:
            log("judge settings changed: the responses will be judged again")
            shutil.rmtree(run_dir / "judgements", ignore_errors=True)
        if old != new:
            write_text_atomic(saved, text)
        return
    if run_dir.exists() and any(run_dir.iterdir()):
        raise SriError(f"{run_dir} exists and is not an experiment folder; choose an empty or new --out folder")
    write_text_atomic(saved, text)


def _anchors(run: _Run, sets: dict[str, list[PromptRecord]]) -> Anchors:
    path = run.dir / "anchors.safetensors"
    if run.cfg.anchors.file:
        anchors = Anchors.load(run.cfg.anchors.file)
    elif path.is_file():
        anchors = Anchors.load(path)
    else:
        harmless = run.trace("anchor-harmless", sets["anchor-harmless"])
        harmful = run.trace("anchor-harmful", sets["anchor-harmful"])
        anchors = fit_anchors(harmless, harmful)
        anchors.save(path)
    run.prov["anchors"] = {"file": str(run.cfg.anchors.file or path), "counts": anchors.info.get("counts"),
                           "key": anchors.key}
    return anchors


def _attack_prompts(run: _Run, behaviours: list[PromptRecord]) -> dict[str, list[PromptRecord]]:
    """Build each attack's prompts (skipping attacks that do not apply to this kind of model)."""
    out: dict[str, list[PromptRecord]] = {}
    skipped = run.prov.setdefault("skipped_attacks", {})
    pending = [a for a in run.cfg.attacks if not (run.dir / "attacks" / f"{a.name}.jsonl").is_file()]
    for a in pending:  # fail before building anything: optimising attacks must be able to run their model
        spec = get_attack(a.name)
        if spec.needs_target and not run.cfg.attack_model and run.model_kind() in spec.model_kinds and \
                run.model_kind() not in spec.runs_kinds:
            raise SriError(f"config: attack '{a.name}' decodes with a {' or '.join(spec.runs_kinds)} model, but the "
                           f"target is {run.model_kind()}; set attack_model to an AR chat model (its prompts "
                           "transfer) or drop the attack")
    for a in run.cfg.attacks:
        spec = get_attack(a.name)
        records = behaviours[: a.n or len(behaviours)]
        final = run.dir / "attacks" / f"{a.name}.jsonl"
        if not final.is_file():
            if run.model_kind() not in spec.model_kinds:
                skipped[a.name] = f"applies to {' / '.join(spec.model_kinds)} models; this model is {run.model_kind()}"
                run.log(f"skipping attack {a.name}: {skipped[a.name]}")
                continue
            _build_attack(run, a, spec.needs_target, records, final)
        out[a.name] = load_prompts(final)
    return out


def _build_attack(run: _Run, a: AttackConfig, needs_target: bool, records: list[PromptRecord], final: Path) -> None:
    """Attacks that run a model are built one batch at a time into ``attacks/<name>.parts/`` (resumable)."""
    context = AttackContext(seed=run.cfg.seed, progress=run.progress)
    if a.name == "dija":
        context.target = run.target()
    if needs_target:
        context.target = run.attack_model()
    if needs_target and run.cfg.attacker and run.cfg.attacker not in (run.cfg.model, run.cfg.attack_model):
        from .models import load_model

        context.attacker = load_model(run.cfg.attacker, device=run.cfg.device, dtype=run.cfg.dtype)
    step = run.cfg.batch_size if needs_target else len(records)
    parts = final.with_suffix(".parts")
    built: list[dict[str, Any]] = []
    for k, start in enumerate(range(0, len(records), step)):
        part = parts / f"{k:05d}.jsonl"
        if not part.is_file():
            run.log(f"attack {a.name}: behaviours {start + 1}–{min(start + step, len(records))} of {len(records)}")
            rows = [r.to_row() for r in run_attack(a.name, records[start:start + step], context, **a.options)]
            write_jsonl(part, rows)
        built += read_jsonl(part)
    write_jsonl(final, built)
    shutil.rmtree(parts, ignore_errors=True)


def _judge(run: _Run, stores: dict[str, TraceStore]) -> dict[str, dict[str, dict[str, Any]]]:
    """LLM-judge attack success on every harmful and attack response (and, for diffusion traces, on the predicted
    text at judged steps); resumable per set."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    judge: LLMJudge | None = None
    if run.judge_model_name() is None:
        return out
    for name, store in stores.items():
        if name == "harmless":
            continue
        path = run.dir / "judgements" / f"{name}.jsonl"
        done = {r["id"]: r for r in read_jsonl(path)} if path.is_file() else {}
        pending = [r for r in store.rows() if r["id"] not in done]
        for start in range(0, len(pending), 4 * run.cfg.judge.batch_size):
            judge = judge or run.judge()
            chunk = pending[start:start + 4 * run.cfg.judge.batch_size]
            requests = [str(r.get("meta", {}).get("behavior") or r["prompt"]) for r in chunk]
            p = judge.scores(requests, [r["response"] for r in chunk])
            steps = step_verdicts(chunk, judge.verdicts, run.cfg.judge.hrr_stride)
            for r, score in zip(chunk, p, strict=True):
                done[r["id"]] = {"id": r["id"], "llm_harmful_p": float(score),
                                 "llm_harmful": bool(score > judge.threshold), **steps.get(r["id"], {})}
            write_jsonl(path, list(done.values()))
            run.log(f"judged {len(done)}/{len(store)} of {name}")
        out[name] = {k: {f: v for f, v in e.items() if f != "id"} for k, e in done.items()}
    return out


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _host() -> dict[str, Any]:
    import torch

    return {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
