"""Guard evaluation: model × sampler × prompt sets × attacks × defenses → the paper's Table 13 / Table 4 shapes.

Data flow (every trace folder is resumable; all splits are disjoint and seeded)::

    harmless ─┬─ anchor (A) ──┐
              ├─ fit (F) ─────┼─► anchors ─► signals ─► SRI Guard: fitted on F, threshold on C (benign only)
              ├─ calibrate (C)┘
              └─ test (H) ─────────────┐
    AdvBench ─── anchor (A) harmful    ├─► traced with the guard watching (monitor mode) ─► signals
    over-refusal probes (O) ───────────┤        │
    HarmBench behaviours ─► attacks ───┘        └─► defenses: PPL filter, Self-Examine, LLM guard, SmoothLLM

Attack prompts are only ever *evaluated*: the guard sees benign signals alone (F to fit, C to calibrate) and the
anchors see AdvBench prompts, never HarmBench behaviours or attack templates. Attacks are given as prompt
sets: a jailbreak template applied to each behaviour, a pool of templates drawn per behaviour, or a ready file
of attack prompts (:class:`AttackSpec`); :func:`evaluate_sets` takes the records directly.
"""

from __future__ import annotations

import datetime as dt
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from . import __version__
from .assets import DEFAULT_MODEL, dataset_path
from .data import PromptRecord, fill_template, load_prompts, load_template
from .defenses import LLMGuard, PerplexityFilter, SelfExamine, SmoothLLM
from .defenses.base import DefenseResult
from .errors import SriError
from .guard import Guard, GuardObserver, fit_guard, make_detector
from .io import lone_surrogate, read_json, read_jsonl, read_text, write_json, write_text_atomic
from .metrics import auroc, blocked, detection_report, rate_with_ci
from .models import ModelAdapter, load_model
from .report.roc import plot_roc
from .sampling import ARConfig
from .signal import Anchors, compute_signals, fit_anchors, sri_signal
from .trace import TraceStore
from .tracer import trace_prompts

BENIGN_TEST, OVERREFUSAL, HARMFUL = "harmless-test", "overrefusal", "harmful"
DEFENSE_NAMES = ("ppl-filter", "self-examine", "llm-guard", "smoothllm")
NO_FIT_NOTE = ("Attack prompts were only evaluated: SRI Guard was fitted on {fit} and calibrated on {cal} held-out "
               "benign (harmless) signals, the anchors on {anchor} harmless + {anchor} AdvBench prompts; no attack "
               "prompt, template or HarmBench behaviour was used to fit or calibrate anything.")


@dataclass
class AttackSpec:
    """One attack as a prompt set: ``template`` (a jailbreak template id or name), ``templates`` (a collection,
    e.g. ``in_the_wild``, one template drawn per behaviour, at most ``max_chars`` long) or ``file`` (attack
    prompts, used as they are)."""

    name: str
    template: str | None = None
    templates: str | None = None
    max_chars: int = 2000
    file: str | None = None

    def __post_init__(self) -> None:
        given = [k for k in ("template", "templates", "file") if getattr(self, k)]
        if len(given) != 1:
            raise SriError(f"attack '{self.name}' needs exactly one of template, templates or file (got "
                           f"{given or 'none'})")


@dataclass
class EvalConfig:
    model: str = DEFAULT_MODEL
    steps: int = 32
    batch_size: int = 8
    seed: int = 0
    pooling: str = "producing"
    layers: str = "first,mid,final"
    device: str = "auto"
    dtype: str = "auto"
    n_anchor: int = 64
    n_fit: int = 200
    n_calibrate: int = 100
    n_harmless: int = 100
    n_overrefusal: int = 50
    n_behaviours: int = 40
    attacks: list[AttackSpec] = field(default_factory=lambda: [
        AttackSpec("refusal_suppression", template="refusal_suppression"),
        AttackSpec("prefix_injection", template="prefix_injection"),
        AttackSpec("style_injection", template="style_injection"),
        AttackSpec("evil_confidant", template="evil_confidant"),
        AttackSpec("in_the_wild", templates="in_the_wild", max_chars=1500),
    ])
    detector: str = "ae"
    quantile: float = 0.99
    stream: str = "union"
    stream_every: int = 1
    defenses: list[str] = field(default_factory=lambda: list(DEFENSE_NAMES))
    llm_guard_model: str | None = None  # None: the generator itself
    smoothllm_copies: int = 4
    smoothllm_max_prompts: int = 16  # per prompt set (SmoothLLM generates copies × prompts)
    bootstrap: int = 1000
    threads: int | None = None  # torch CPU threads (1 is fastest on a busy 2-core machine)

    @classmethod
    def from_file(cls, path: str | Path) -> EvalConfig:
        """Read a YAML or JSON config; unknown keys are an error."""
        path = Path(path)
        if not path.is_file():
            raise SriError(f"config {path} does not exist; see configs/guard_eval.yaml for an example")
        try:
            raw = yaml.safe_load(read_text(path)) if path.suffix in {".yaml", ".yml"} else read_json(path)
        except yaml.YAMLError as e:
            raise SriError(f"{path} is not valid YAML ({type(e).__name__}); fix it") from None
        found = lone_surrogate(raw)
        if found is not None:
            raise SriError(f"{path}: {found[0] or 'the text'} holds a lone surrogate ({found[1]}), which is not "
                           "valid Unicode text; remove it or give the full character")
        if not isinstance(raw, dict):
            raise SriError(f"{path} must hold a mapping of settings")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise SriError(f"{path}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        if "attacks" in raw:
            if not isinstance(raw["attacks"], list) or not raw["attacks"]:
                raise SriError(f"{path}: 'attacks' must be a non-empty list")
            try:
                raw["attacks"] = [AttackSpec(**a) for a in raw["attacks"]]
            except TypeError as e:
                raise SriError(f"{path}: bad attack entry ({e}); use name + template|templates|file") from None
        bad = [d for d in raw.get("defenses", []) if d not in DEFENSE_NAMES]
        if bad:
            raise SriError(f"{path}: unknown defense(s) {bad}; use any of {', '.join(DEFENSE_NAMES)}")
        return cls(**raw)


# ------------------------------------------------------------------------------------------ prompt sets
def build_attack(spec: AttackSpec, behaviours: Sequence[PromptRecord], seed: int) -> list[PromptRecord]:
    """The attack's prompt records (label ``jailbreak``), each keeping its behaviour id in ``meta``."""
    if spec.file:
        return [PromptRecord(id=f"{spec.name}:{r.id}", prompt=r.prompt, label="jailbreak", source=r.source,
                             meta={**r.meta, "attack": spec.name}) for r in load_prompts(spec.file)]
    if spec.template:
        pool = [(spec.template, load_template(spec.template))]
    else:
        pool = [(r["id"], r["template"]) for r in read_jsonl(dataset_path("jailbreak-templates"))
                if r["collection"] == spec.templates and r["has_slot"] and len(r["template"]) <= spec.max_chars]
        if not pool:
            raise SriError(f"attack '{spec.name}': no template of collection '{spec.templates}' with a slot and "
                           f"≤ {spec.max_chars} characters")
    rng = random.Random(f"{seed}:{spec.name}")
    out = []
    for r in behaviours:
        tid, template = pool[0] if len(pool) == 1 else rng.choice(pool)
        out.append(PromptRecord(id=f"{spec.name}:{r.id}", prompt=fill_template(template, r.prompt), label="jailbreak",
                                source=r.source, meta={"behavior_id": r.id, "behavior": r.prompt, "attack": spec.name,
                                                       "template": tid}))
    return out


def prompt_sets(config: EvalConfig) -> dict[str, list[PromptRecord]]:
    """Every prompt set of the evaluation, disjoint and seeded (see the module docstring)."""
    c = config
    harmless = load_prompts("harmless", shuffle_seed=c.seed)
    need = c.n_anchor + c.n_fit + c.n_calibrate + c.n_harmless
    if need > len(harmless):
        raise SriError(f"the harmless set has {len(harmless)} prompts but anchor+fit+calibrate+test need {need}; "
                       "lower the sizes")
    cuts = np.cumsum([0, c.n_anchor, c.n_fit, c.n_calibrate, c.n_harmless])
    behaviours = [r for r in load_prompts("harmbench", shuffle_seed=c.seed)
                  if r.meta.get("functional_category") == "standard"][: c.n_behaviours]
    sets = {
        "anchor-harmless": harmless[cuts[0]:cuts[1]],
        "anchor-harmful": load_prompts("advbench", shuffle_seed=c.seed, max_prompts=c.n_anchor),
        "fit": harmless[cuts[1]:cuts[2]],
        "calibrate": harmless[cuts[2]:cuts[3]],
        BENIGN_TEST: harmless[cuts[3]:cuts[4]],
        OVERREFUSAL: load_prompts("overrefusal", shuffle_seed=c.seed, max_prompts=c.n_overrefusal),
        HARMFUL: behaviours,
    }
    for spec in c.attacks:
        if spec.name in sets:
            raise SriError(f"attack name '{spec.name}' clashes with a prompt set; rename it")
        sets[spec.name] = build_attack(spec, behaviours, c.seed)
    return sets


# ------------------------------------------------------------------------------------------ the run
def run_eval(config: EvalConfig, out: str | Path, progress: bool = True) -> dict[str, Any]:
    """Trace, fit, defend and measure into ``out`` (resumable); returns the results also written to
    ``out/eval.json`` and ``out/tables.md``."""
    out = Path(out)
    if config.threads:
        import torch

        torch.set_num_threads(config.threads)
    sets = prompt_sets(config)
    adapter = load_model(config.model, device=config.device, dtype=config.dtype)
    return evaluate_sets(adapter, sets, [a.name for a in config.attacks], config, out, progress)


def evaluate_sets(adapter: ModelAdapter, sets: dict[str, list[PromptRecord]], attacks: list[str],
                  config: EvalConfig, out: Path, progress: bool = True) -> dict[str, Any]:
    """The evaluation on given prompt sets (keys as :func:`prompt_sets` makes them; ``attacks`` names the attack
    sets among them)."""
    sampler = ARConfig(steps=config.steps, seed=config.seed)
    stores: dict[str, TraceStore] = {}

    def trace(name: str, observers: Sequence[Any] = (), extra: dict | None = None) -> TraceStore:
        stores[name] = trace_prompts(adapter, sets[name], out / "traces" / name, sampler=sampler,
                                     layers=config.layers, pooling=config.pooling, batch_size=config.batch_size,
                                     observers=observers, progress=progress, description=f"{name:>20}",
                                     extra_settings=extra)
        return stores[name]

    for name in ("anchor-harmless", "anchor-harmful", "fit", "calibrate"):
        trace(name)
    anchors = fit_anchors(stores["anchor-harmless"], stores["anchor-harmful"])
    anchors.save(out / "anchors.safetensors")
    signals = {name: compute_signals(anchors, stores[name]) for name in ("fit", "calibrate")}
    guard = fit_guard(signals["fit"], signals["calibrate"], detector=config.detector, quantile=config.quantile,
                      seed=config.seed, stream=config.stream, every=config.stream_every, anchors=anchors,
                      sources={"fit": "harmless (fit split)", "calibrate": "harmless (calibrate split)"})
    guard.save(out / "guard")

    test_sets = [BENIGN_TEST, OVERREFUSAL, HARMFUL, *attacks]
    for name in test_sets:  # the guard watches in monitor mode: the trace is the unguarded generation
        trace(name, [GuardObserver(guard, stop=False)], {"guard": {"sha256": guard.sha256, "stop": False}})
        signals[name] = compute_signals(anchors, stores[name])

    base_s = {name: _base_seconds(stores[name].rows()) for name in test_sets}
    results: dict[str, Any] = {
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "sri_version": __version__,
        "config": _jsonable_config(config), "model": adapter.describe(), "guard": str(out / "guard"),
        "sizes": {name: len(recs) for name, recs in sets.items()},
        "no_attack_in_fit": NO_FIT_NOTE.format(fit=len(sets["fit"]), cal=len(sets["calibrate"]),
                                               anchor=len(sets["anchor-harmless"])),
        "base_seconds": base_s,
        "anchor_counts": anchors.info["counts"],
    }
    defended = _run_defenses(adapter, config, guard, anchors, stores, signals, test_sets, out, progress)
    results["defenses"] = _defense_table(defended, signals, test_sets, attacks, base_s, config.bootstrap)
    results["detection"] = _detection_table(defended, attacks, config.bootstrap)
    results["ablation"] = _ablation(config, stores, signals, attacks, anchors)
    results["early_stop"] = _early_stop(stores, test_sets, guard.steps)
    curves = {d: (np.concatenate([defended[d][a].scores for a in attacks]), defended[d][BENIGN_TEST].scores)
              for d in defended if d not in ("undefended", "sri-guard-streaming")}  # streaming: same scores
    results["figure"] = str(plot_roc(curves, out / "figures" / "roc.png",
                                     title=f"Jailbreak detection — {config.model}"))
    write_json(out / "eval.json", results)
    write_text_atomic(out / "tables.md", tables_markdown(results))
    return results


def _base_seconds(rows: list[dict[str, Any]]) -> float:
    """Wall time of the generation alone: each batch's wall time minus the guard's own time in it."""
    seen, total = set(), 0.0
    for r in rows:
        t = r["timing"]
        batch = (t["wall_s"], t["batch_size"])
        if batch in seen:
            continue
        seen.add(batch)
        total += t["wall_s"] - r.get("guard", {}).get("seconds_batch", 0.0)
    return total


def _stream_seconds(rows: list[dict[str, Any]]) -> float:
    return sum({(r["timing"]["wall_s"], r["timing"]["batch_size"]): r["guard"]["seconds_batch"]
                for r in rows}.values())


def _run_defenses(adapter: ModelAdapter, config: EvalConfig, guard: Guard, anchors: Anchors,
                  stores: dict[str, TraceStore], signals: dict[str, list[dict[str, Any]]], test_sets: list[str],
                  out: Path, progress: bool) -> dict[str, dict[str, DefenseResult]]:
    """``{defense: {prompt set: result}}`` for the undefended model, SRI Guard (offline and streaming) and the
    configured baselines, each timed on the same prompt sets as the base generation."""
    from .progress import progress_bar

    res: dict[str, dict[str, DefenseResult]] = {"undefended": {}, "sri-guard": {}, "sri-guard-streaming": {}}
    layer = int(guard.key["layer"])
    for name in test_sets:
        rows = signals[name]
        n = len(rows)
        res["undefended"][name] = DefenseResult("undefended", np.zeros(n), np.zeros(n, bool), 0.0)
        _, states = stores[name].load([layer])
        t0 = time.perf_counter()  # offline guard: σ from the pooled states, then the full-signal detector
        sigma = sri_signal(states[layer], anchors.harmless[layer], anchors.harmful[layer], anchors.tau, anchors.eps)
        scores = guard.score(sigma.numpy())
        res["sri-guard"][name] = DefenseResult("sri-guard", scores, scores > guard.threshold,
                                               time.perf_counter() - t0)
        live = [r["guard"] for r in stores[name].rows()]
        by_id = {r["id"]: g for r, g in zip(stores[name].rows(), live, strict=True)}
        flags = np.array([by_id[r["id"]]["flagged"] for r in rows])
        res["sri-guard-streaming"][name] = DefenseResult("sri-guard-streaming", scores, flags,
                                                         _stream_seconds(stores[name].rows()))
    baselines: dict[str, Any] = {}
    if "ppl-filter" in config.defenses:
        baselines["ppl-filter"] = PerplexityFilter(adapter, quantile=config.quantile,
                                                   batch_size=config.batch_size).fit(signals["fit"])
    if "self-examine" in config.defenses:
        baselines["self-examine"] = SelfExamine(adapter, batch_size=config.batch_size)
    if "llm-guard" in config.defenses:
        judge = adapter if not config.llm_guard_model else load_model(config.llm_guard_model, device=config.device,
                                                                      dtype=config.dtype)
        baselines["llm-guard"] = LLMGuard(judge, batch_size=config.batch_size)
    if "smoothllm" in config.defenses:
        baselines["smoothllm"] = SmoothLLM(adapter, copies=config.smoothllm_copies,
                                           sampler=ARConfig(steps=config.steps, seed=config.seed),
                                           batch_size=config.batch_size, seed=config.seed)
    cache = out / "defenses"
    with progress_bar("defenses", total=len(baselines) * len(test_sets), enabled=progress) as advance:
        for dname, defense in baselines.items():
            res[dname] = {}
            for name in test_sets:
                rows = signals[name]
                if dname == "smoothllm" and len(rows) > config.smoothllm_max_prompts:  # a seeded subsample
                    keep = sorted(random.Random(f"{config.seed}:{name}").sample(range(len(rows)),
                                                                                  config.smoothllm_max_prompts))
                    rows = [rows[i] for i in keep]
                res[dname][name] = _cached_run(cache / dname / f"{name}.json", defense, rows)
                advance(1)
    return res


def _cached_run(path: Path, defense: Any, rows: list[dict[str, Any]]) -> DefenseResult:
    """Run a defense on ``rows`` once; a finished result is kept on disk so that a re-run resumes."""
    ids = [r["id"] for r in rows]
    if path.is_file():
        saved = read_json(path)
        if saved["ids"] == ids:
            return DefenseResult(saved["name"], np.array(saved["scores"]), np.array(saved["flags"], bool),
                                 saved["seconds"], saved["responses"], {"ids": ids})
    result = defense.run(rows)
    write_json(path, {"name": result.name, "ids": ids, "scores": result.scores, "flags": result.flags,
                      "seconds": result.seconds, "responses": result.responses})
    result.extra["ids"] = ids
    return result


def _defense_table(defended: dict[str, dict[str, DefenseResult]], signals: dict[str, list[dict[str, Any]]],
                   test_sets: list[str], attacks: list[str], base_s: dict[str, float],
                   n_boot: int) -> list[dict[str, Any]]:
    """Table 13: per defense, overhead %, FP on harmless and on over-refusal probes, RR and ASR on attacks."""
    table = []
    for dname, per_set in defended.items():
        blocked_by: dict[str, np.ndarray] = {}
        spent = base = 0.0
        for name in test_sets:
            r = per_set[name]
            n = len(r.flags)
            by_id = {x["id"]: x for x in signals[name]}
            rows = [by_id[i] for i in r.extra["ids"]] if "ids" in r.extra else signals[name]
            responses = r.responses if r.responses is not None else [x["response"] for x in rows]
            blocked_by[name] = blocked(r.flags, responses)
            spent += r.seconds
            base += base_s[name] * n / len(signals[name])  # subsampled defenses: the same prompts' base time
        jail = np.concatenate([blocked_by[a] for a in attacks])
        entry = {
            "defense": dname,
            "overhead_pct": 100 * spent / base if base else None,
            "seconds": spent,
            "fp_harmless": rate_with_ci(blocked_by[BENIGN_TEST], n_resamples=n_boot),
            "fp_overrefusal": rate_with_ci(blocked_by[OVERREFUSAL], n_resamples=n_boot),
            "rr_harmful": rate_with_ci(blocked_by[HARMFUL], n_resamples=n_boot),
            "rr_jailbreak": rate_with_ci(jail, n_resamples=n_boot),
            "asr_jailbreak_keyword_proxy": rate_with_ci(~jail, n_resamples=n_boot),
            "rr_by_attack": {a: float(blocked_by[a].mean()) for a in attacks},
            "n_per_set": {name: len(per_set[name].flags) for name in test_sets},
        }
        table.append(entry)
    return table


def _detection_table(defended: dict[str, dict[str, DefenseResult]], attacks: list[str],
                     n_boot: int) -> list[dict[str, Any]]:
    """AUROC and TPR at 1% / 5% FPR of each scoring defense: all attack prompts vs harmless test prompts."""
    out = []
    for dname, per_set in defended.items():
        if dname in ("undefended", "sri-guard-streaming"):
            continue
        pos = np.concatenate([per_set[a].scores for a in attacks])
        rep = detection_report(pos, per_set[BENIGN_TEST].scores, n_resamples=n_boot)
        rep["by_attack"] = {a: auroc(per_set[a].scores, per_set[BENIGN_TEST].scores) for a in attacks}
        out.append({"defense": dname, **rep})
    return out


def _ablation(config: EvalConfig, stores: dict[str, TraceStore], signals: dict[str, list[dict[str, Any]]],
              attacks: list[str], anchors: Anchors) -> list[dict[str, Any]]:
    """Table 4: AUROC (attacks vs harmless test) of the same one-class detector, fitted on the benign fit split,
    on other representations: the text-level signal, static first-step activations, SRI at first/mid/last."""
    final = stores["fit"].key["num_layers"]
    layers = sorted(int(k) for k in signals["fit"][0].get("sri_by_layer", {str(final): None}))
    names = {layers[0]: "first", layers[len(layers) // 2]: "middle", layers[-1]: "last"} if len(layers) >= 3 \
        else {layer: str(layer) for layer in layers}

    def feature(name: str, kind: str) -> np.ndarray:
        rows = signals[name]
        if kind == "text":
            return np.array([r["text_signal"] for r in rows], dtype=float)
        if kind == "static":
            _, states = stores[name].load([final])
            return states[final][:, 0, :].double().numpy()
        layer = kind
        return np.array([r["sri_by_layer"][layer] if "sri_by_layer" in r else r["sri"] for r in rows])

    kinds = [("text-level signal", "text"), ("static first-step activations (final layer)", "static")]
    kinds += [(f"SRI, {names[layer]} layer ({layer})", str(layer)) for layer in layers if layer in names]
    table = []
    for label, kind in kinds:
        det = make_detector(config.detector, seed=config.seed).fit(feature("fit", kind))
        neg = det.score(feature(BENIGN_TEST, kind))
        pos = np.concatenate([det.score(feature(a, kind)) for a in attacks])
        rep = detection_report(pos, neg, n_resamples=config.bootstrap)
        table.append({"representation": label, "auroc": rep["auroc"], "n_positive": len(pos), "n_negative": len(neg)})
    return table


def _early_stop(stores: dict[str, TraceStore], test_sets: list[str], steps: int) -> list[dict[str, Any]]:
    """When the streaming guard flags, and how much generation stopping there saves (monitor-mode verdicts: the
    generation went on, so ``end_step − sampler_step`` is exactly the generation a stop would have cut)."""
    out = []
    for name in test_sets:
        rows = stores[name].rows()
        g = [r["guard"] for r in rows]
        during = [(r, v) for r, v in zip(rows, g, strict=True) if v["sampler_step"] is not None]
        generated = sum(r["end_step"] for r in rows)
        saved = sum(r["end_step"] - v["sampler_step"] for r, v in during)
        out.append({
            "set": name, "n": len(rows),
            "flagged": float(np.mean([v["flagged"] for v in g])),
            "flagged_during_generation": len(during) / len(rows),
            "median_flag_step": float(np.median([v["flag_step"] for v in g if v["flagged"]])) if any(
                v["flagged"] for v in g) else None,
            "median_stop_step": float(np.median([v["sampler_step"] for _, v in during])) if during else None,
            "tokens_saved_pct": 100 * saved / generated if generated else 0.0,
            "steps": steps,
        })
    return out


def _jsonable_config(config: EvalConfig) -> dict[str, Any]:
    d = asdict(config)
    d["attacks"] = [asdict(a) for a in config.attacks]
    return d


# ------------------------------------------------------------------------------------------ tables
def tables_markdown(results: dict[str, Any]) -> str:
    """Table 13 (defenses), detection quality, Table 4 (ablation) and early-stop statistics as Markdown."""
    ci = lambda m: f"{100 * m['value']:.1f}" + ("" if np.isnan(m["low"]) else
                                                 f" [{100 * m['low']:.1f}, {100 * m['high']:.1f}]")
    cfg = results["config"]
    lines = [f"# Guard evaluation — {cfg['model']} (AR, greedy, T={cfg['steps']}, pooling {cfg['pooling']})", "",
             results["no_attack_in_fit"], "",
             "Sizes: " + ", ".join(f"{k} {v}" for k, v in results["sizes"].items()), "",
             "## Defenses (Table 13 shape; % with 95% bootstrap CI)", "",
             "| defense | overhead % | FP harmless | FP over-refusal | RR raw harmful | RR jailbreak | "
             "ASR jailbreak (keyword proxy) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for d in results["defenses"]:
        oh = "0" if d["defense"] == "undefended" else f"{d['overhead_pct']:.4f}"
        lines.append(f"| {d['defense']} | {oh} | {ci(d['fp_harmless'])} | {ci(d['fp_overrefusal'])} | "
                     f"{ci(d['rr_harmful'])} | {ci(d['rr_jailbreak'])} | {ci(d['asr_jailbreak_keyword_proxy'])} |")
    attacks = list(results["defenses"][0]["rr_by_attack"])
    lines += ["", "RR by attack: " + "; ".join(
        f"{d['defense']}: " + ", ".join(f"{a} {100 * d['rr_by_attack'][a]:.0f}%" for a in attacks)
        for d in results["defenses"]), "",
        "## Detection (all attack prompts vs harmless test prompts)", "",
        "| detector | AUROC | TPR @ 1% FPR | TPR @ 5% FPR | AUROC by attack |", "|---|---:|---:|---:|---|"]
    for d in results["detection"]:
        f = lambda m: f"{m['value']:.3f} [{m['low']:.3f}, {m['high']:.3f}]"
        by = ", ".join(f"{a} {v:.2f}" for a, v in d["by_attack"].items())
        lines.append(f"| {d['defense']} | {f(d['auroc'])} | {f(d['tpr_at_1pct_fpr'])} | {f(d['tpr_at_5pct_fpr'])} | "
                     f"{by} |")
    lines += ["", "## Ablation (Table 4 shape): AUROC of the same benign-only detector on other signals", "",
              "| representation | AUROC [95% CI] |", "|---|---:|"]
    for a in results["ablation"]:
        m = a["auroc"]
        lines.append(f"| {a['representation']} | {m['value']:.3f} [{m['low']:.3f}, {m['high']:.3f}] |")
    lines += ["", "## Streaming guard: when it flags and what stopping saves", "",
              "| prompt set | n | flagged | flagged while generating | median flag step | tokens saved |",
              "|---|---:|---:|---:|---:|---:|"]
    for e in results["early_stop"]:
        med = "–" if e["median_flag_step"] is None else f"{e['median_flag_step']:.0f}"
        lines.append(f"| {e['set']} | {e['n']} | {100 * e['flagged']:.0f}% | "
                     f"{100 * e['flagged_during_generation']:.0f}% | {med} / {e['steps']} | "
                     f"{e['tokens_saved_pct']:.1f}% |")
    lines += ["", "Base generation time (s): " + ", ".join(f"{k} {v:.1f}" for k, v in
                                                              results["base_seconds"].items()),
              f"ROC curves: {results['figure']}"]
    return "\n".join(lines) + "\n"


__all__ = ["AttackSpec", "EvalConfig", "build_attack", "evaluate_sets", "prompt_sets", "run_eval", "tables_markdown"]
