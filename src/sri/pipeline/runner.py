"""``sri run``: the whole pipeline, one numbered stage after another, in one run folder.

Everything is validated (config, prompt files, model names) before the folder is claimed; re-running the same
command resumes every stage where it stopped; a folder made with another configuration is refused with the
changed key paths (only ``judge``, ``analysis`` and ``execution`` may change: the judgements are then made
again and the analysis redone without tracing anything).

With ``samplers: {name: sampler, …}`` (fixed weights, several samplers) the prompt sets and attack prompts are
built once in the top folder, every sampler gets a complete run in ``samplers/<name>/``, and
:mod:`sri.report.comparison` puts them side by side.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import SriError
from ..io import check_output_dir, folder_lock, safe_child
from .config import RunConfig, config_text, load_config, parse_config

if TYPE_CHECKING:  # the stages import torch and the models: only after the config has been read
    from ..data.prompts import PromptRecord
    from .context import Run


def run(config: str | Path | RunConfig, out: str | Path | None = None, *, progress: bool = True,
        log: Callable[[str], None] = lambda s: None, overrides: dict[str, Any] | None = None,
        require_guard: bool = False) -> Path:
    """Run (or resume) the pipeline of ``config`` into ``out`` (default ``results/<name>``); returns the HTML
    report (``comparison.md`` with several samplers); ``require_guard`` (``sri eval``) refuses a config without a
    ``guard:`` section. Raises :class:`~sri.errors.SriError` (one line) for a bad
    config, missing prompt sets or models, or a folder of another configuration — before writing anything."""
    if out is not None:
        check_output_dir(Path(out))
    if isinstance(config, RunConfig):  # built or changed in Python (model_copy skips validation): check it again
        cfg = parse_config(json.loads(config.model_dump_json()))
        text = config_text(cfg)
    else:
        cfg, text = load_config(config, overrides)
    if cfg.execution.threads:
        import torch

        torch.set_num_threads(cfg.execution.threads)
    run_dir = Path(out) if out is not None else Path("results") / cfg.name
    check_output_dir(run_dir)
    from . import stages
    from .context import check_run_folder, claim_folder

    sets = stages.prompts(cfg)  # 1. every prompt set (validated before the folder is claimed)
    preflight(cfg, sets)
    if require_guard and cfg.guard is None:  # `sri eval`: an evaluation of the guard without a guard
        raise SriError(f"the config of run '{cfg.name}' has no guard: section, so `sri eval` would evaluate no guard; "
                       "add one (see configs/guard_eval.yaml) or run it with `sri run`")
    check_run_folder(run_dir)  # before the lock: a refused folder gets no lock file
    with folder_lock(run_dir):  # one writer per run folder
        claim_folder(run_dir, cfg, text, log)
        if cfg.samplers:
            return _run_samplers(cfg, run_dir, sets, progress, log)
        return _run_one(cfg, run_dir, sets, progress, log)


def _run_one(cfg: RunConfig, run_dir: Path, sets: dict[str, list[PromptRecord]], progress: bool,
             log: Callable[[str], None]) -> Path:
    """Stages 1–10 for one sampler."""
    from . import stages
    from .context import Run

    run_ = Run(cfg, run_dir, progress, log)
    with run_.stage(1, "prompts"):
        stages.write_prompt_sets(run_, sets)
    with run_.stage(2, "attacks"):
        sets.update(stages.attacks(run_, sets))
    run_.release_models(keep_target=True)
    return _run_from_traces(run_, sets)


def _run_from_traces(run_: Run, sets: dict[str, list[PromptRecord]]) -> Path:
    """Stages 3–10 for one sampler."""
    from . import stages

    t0 = time.perf_counter()
    with run_.stage(3, "traces"):
        stores = stages.traces(run_, sets)
    with run_.stage(4, "judge"):
        verdicts = stages.judge(run_, stores)
    with run_.stage(5, "anchors"):
        anchors = stages.anchors(run_, stores)
    with run_.stage(6, "signals"):
        signals = stages.signals(run_, anchors, stores, verdicts)
    defended = None
    if run_.cfg.guard is not None:
        with run_.stage(7, "guard"):
            guard = stages.guard(run_, anchors, signals)
        with run_.stage(8, "defenses"):
            defended = stages.defenses(run_, guard, anchors, stores, signals)
    with run_.stage(9, "analysis"):
        stages.analysis(run_, signals, anchors, defended, stores)
    with run_.stage(10, "report"):
        report = stages.report(run_, signals, defended)
    run_.session["wall_s"] = round(time.perf_counter() - t0, 1)
    run_.session["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    run_.save()
    return report


def _run_samplers(cfg: RunConfig, run_dir: Path, sets: dict[str, list[PromptRecord]], progress: bool,
                  log: Callable[[str], None]) -> Path:
    """Fixed weights, several samplers: prompts and attacks once (top folder), then stages 3–10 per sampler in
    ``samplers/<name>/`` on the same prompts, and the comparison."""
    from ..report.comparison import write_comparison
    from . import stages
    from .context import Run, claim_folder

    first = next(iter(cfg.samplers.values()))
    shared = Run(cfg.model_copy(update={"sampler": first, "samplers": {}}), run_dir, progress, log)
    with shared.stage(1, "prompts"):
        stages.write_prompt_sets(shared, sets)
    with shared.stage(2, "attacks"):
        sets.update(stages.attacks(shared, sets))
    shared.release_models()
    run_dirs = {}
    for name, spec in cfg.samplers.items():
        sub_cfg = cfg.model_copy(update={"name": f"{cfg.name}-{name}", "sampler": spec, "samplers": {}})
        sub_dir = safe_child(run_dir / "samplers", name)
        log(f"sampler {name}: {spec.build().params()}")
        claim_folder(sub_dir, sub_cfg, config_text(sub_cfg), log)
        sub = Run(sub_cfg, sub_dir, progress, log)
        sub.prov["skipped_attacks"] = shared.prov.get("skipped_attacks", {})
        sub.prov["attacks_from"] = str(run_dir / "attacks")
        if "attack_model" in shared.prov:
            sub.prov["attack_model"] = shared.prov["attack_model"]
        _run_from_traces(sub, sets)
        run_dirs[name] = sub_dir
    with shared.stage(11, "comparison"):
        return write_comparison(run_dir, run_dirs, {n: s.model_dump(mode="json") for n, s in cfg.samplers.items()})


def _prompts_to_trace(cfg: RunConfig, sets: dict[str, list[PromptRecord]]) -> dict[str, list[PromptRecord]]:
    """``{config field: prompts}``: the prompt sets, and what each attack that runs no model makes of the harmful
    behaviours (built here as stage 2 builds it: seeded, cheap), with their benign-in-template controls. An attack
    that fails on the run's behaviours or options is a one-line error naming it."""
    from ..attacks import AttackContext, get_attack, run_attack

    out = {f"prompts.{name.replace('-', '_')}": records for name, records in sets.items()}
    behaviours = sets["harmful"]
    for i, a in enumerate(cfg.attacks):
        spec = get_attack(a.name)
        if spec.needs_target or spec.reads_target:  # these run a model; stage 2 checks what it builds
            continue
        where = f"attacks[{i}] ({a.name})"
        try:
            out[where] = run_attack(a.name, behaviours[: a.n or len(behaviours)], AttackContext(seed=cfg.seed),
                                    **a.options)
            if cfg.controls.benign_in_template:
                out[f"{where} on controls.benign_in_template"] = run_attack(
                    a.name, sets["harmless"], AttackContext(seed=cfg.seed), **a.options)
        except SriError as e:
            raise SriError(f"config: {where}: {e}") from None
    return out


def preflight(cfg: RunConfig, sets: dict[str, list[PromptRecord]]) -> None:
    """What would make a run fail after it started writing, checked before: every model it names (target, attack
    models, LLM-guard and judge models; an error names the field) exists and loads its tokenizer (no weights), the
    target model takes the run's layers, stop tokens and generation lengths (and declares a mask token under a
    diffusion sampler), a reused ``anchors_file`` is a readable anchor file of the run's settings, the device
    exists and a private Ray cluster can hold the worker pool (local execution), the attacks that run no model
    build on the run's behaviours, and every prompt of ``sets`` (:func:`~sri.pipeline.stages.prompts`) and of
    those attacks fits ``max_prompt_tokens`` and the model's context. One-line :class:`SriError` otherwise."""
    from ..judges.llm import judge_model_for
    from ..models import check_model, model_layers, pick_device
    from ..signal import Anchors

    if cfg.execution.backend == "local" or cfg.execution.address == "local":  # a remote cluster has its own devices
        pick_device(cfg.device)
    if cfg.execution.backend == "ray" and cfg.execution.address == "local":  # this machine's pool, without Ray
        from ..tracing.executors.ray import check_local_pool

        check_local_pool(cfg.execution.build())

    anchor_layers = None
    if cfg.prompts.anchors_file:
        reused = Anchors.load(cfg.prompts.anchors_file)
        key, anchor_layers = reused.key, reused.layers
        for spec in (cfg.samplers or {"": cfg.sampler}).values():  # what the config alone tells (the rest: stage 6)
            sampler = spec.build()
            wanted = {"model": cfg.model, "sampler": sampler.name, "steps": sampler.steps,
                      "system_prompt": cfg.system_prompt or None}
            for field, value in wanted.items():
                if field in key and key[field] != value:
                    raise SriError(f"prompts.anchors_file {cfg.prompts.anchors_file} and this run differ in {field} "
                                   f"({key[field]!r} vs {value!r}); use anchors made with the run's settings, or "
                                   "anchor prompt sets instead")
    longest = max(getattr(s, "gen_length", s.steps) for s in (cfg.samplers or {"": cfg.sampler}).values())
    check_model(cfg.model, system_prompt=cfg.system_prompt or None, trust_remote_code=cfg.trust_remote_code,
                layers=cfg.layers, stop_tokens=cfg.stop_tokens, gen_length=longest,
                diffusion=cfg.sampler_kind == "diffusion", prompts=_prompts_to_trace(cfg, sets),
                max_prompt_tokens=cfg.max_prompt_tokens)
    if anchor_layers is not None:  # a traced layer without anchors would get no σ, in silence
        ids = model_layers(cfg.model, cfg.layers, trust_remote_code=cfg.trust_remote_code) or []
        missing = [i for i in ids if i not in anchor_layers]
        if missing:
            raise SriError(f"prompts.anchors_file {cfg.prompts.anchors_file} holds anchors for layer(s) "
                           f"{anchor_layers}, but layers '{cfg.layers}' also asks for {missing}, which would be "
                           "traced and get no σ; ask only for layers the anchors hold, or use anchors fitted on them")
    named = {"attack_model": cfg.attack_model, "attacker": cfg.attacker,
             "defenses.llm_guard_model": cfg.defenses.llm_guard_model, "judge.model": judge_model_for(cfg.judge.model)}
    checked = {cfg.model}
    for field, name in named.items():
        if name and name not in checked:
            checked.add(name)
            try:
                check_model(name, system_prompt=cfg.system_prompt or None)
            except SriError as e:
                raise SriError(f"{field}: {e}") from None
