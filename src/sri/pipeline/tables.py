"""The run's tables: the per-group summary, and the guard tables in the paper's shapes (Table 13: defenses;
detection AUROC / TPR; Table 4: the representation ablation; the streaming guard's early stops).

Negatives come in two kinds. *Plain benign*: the harmless test prompts (short everyday instructions) — a
detector of prompt shape separates these from long jailbreak templates without looking at refusal dynamics.
*Surface-matched benign*: the same templates wrapped around benign requests (``<attack>+benign``) — prompt shape
is uninformative there, so only a detector of what the model does with the request can win. Every detection
number is reported against both.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import numpy as np

from .. import __version__
from ..stats.metrics import auroc, blocked, detection_report, rate_with_ci
from .context import Run
from .stages import CONTROL_SUFFIX, is_attack, test_sets

NO_FIT_NOTE = ("Attack prompts were only evaluated: SRI Guard was fitted on {fit} and calibrated on {cal} held-out "
               "benign signals, the anchors on {ah} harmless + {ab} harmful prompts; no attack prompt, template "
               "or evaluated behaviour was used to fit or calibrate anything.")


# ------------------------------------------------------------------------------------------ summary
def summary(sig: dict[str, list[dict[str, Any]]], anchor_counts: dict[str, int]) -> dict[str, Any]:
    """Per evaluated set: refusal rate (keyword judge), mean final σ (all, refused, answered); AUROC of the final
    σ between the harmless test prompts and each harmful set (refused ones, and all)."""
    groups = []
    for name in test_sets(sig):
        rows = sig[name]
        final = np.array([r["sri"][-1] for r in rows])
        refused = np.array([bool(r["refused"]) for r in rows])
        groups.append({
            "group": name, "n": len(rows), "refusal_rate": float(refused.mean()),
            "mean_final_sri": float(final.mean()),
            "mean_final_sri_refused": float(final[refused].mean()) if refused.any() else None,
            "mean_final_sri_answered": float(final[~refused].mean()) if (~refused).any() else None,
        })
    out: dict[str, Any] = {"created": _now(), "sri_version": __version__, "groups": groups, "auroc_final_sri": {},
                           "anchors": anchor_counts}
    if "harmless" in sig:
        ok = [r["sri"][-1] for r in sig["harmless"]]
        for name in test_sets(sig):
            if name == "harmful" or is_attack(name):
                bad = [r["sri"][-1] for r in sig[name] if r["refused"]]
                out["auroc_final_sri"][f"harmless vs refused {name}"] = _auroc(ok, bad)
                out["auroc_final_sri"][f"harmless vs all {name}"] = _auroc(ok, [r["sri"][-1] for r in sig[name]])
    return out


def _auroc(positive: list[float], negative: list[float]) -> float | None:
    return auroc(positive, negative) if positive and negative else None


def summary_markdown(s: dict[str, Any]) -> str:
    fmt = lambda v: "–" if v is None else f"{v:.3f}"
    lines = ["| group | n | refusal rate | mean final σ | mean final σ (refused) | mean final σ (answered) |",
             "|---|---:|---:|---:|---:|---:|"]
    for g in s["groups"]:
        lines.append(f"| {g['group']} | {g['n']} | {g['refusal_rate']:.2f} | {fmt(g['mean_final_sri'])} | "
                     f"{fmt(g['mean_final_sri_refused'])} | {fmt(g['mean_final_sri_answered'])} |")
    if s["auroc_final_sri"]:
        lines += ["", "| AUROC of final σ | value |", "|---|---:|"]
        lines += [f"| {k} | {fmt(v)} |" for k, v in s["auroc_final_sri"].items()]
    c = s["anchors"]
    if c:
        lines += ["", f"Anchors: {c['harmless_used']}/{c['harmless_total']} harmless answered, "
                      f"{c['harmful_used']}/{c['harmful_total']} harmful refused (keyword judge)."]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ guard tables
def guard_results(run: Run, sig: dict[str, list[dict[str, Any]]], defended: dict[str, dict[str, Any]],
                  stores: dict[str, Any]) -> dict[str, Any]:
    """Everything the guard tables show, as JSON (``eval.json``)."""
    names = test_sets(sig)
    attacks = [n for n in names if is_attack(n)]
    controls = [n for n in names if n.endswith(CONTROL_SUFFIX)]
    n_boot = run.cfg.analysis.bootstrap
    base_s = {n: _base_seconds(stores[n].rows()) for n in names}
    counts = run.prov.get("anchors", {}).get("counts") or {}
    fit, cal = (len(sig.get(n, [])) for n in ("guard-fit", "guard-calibrate"))
    results: dict[str, Any] = {
        "created": _now(), "sri_version": __version__, "model": run.prov.get("model", {"model": run.cfg.model}),
        "sampler": run.sampler.params(), "sizes": {n: len(sig[n]) for n in sig},
        "no_attack_in_fit": NO_FIT_NOTE.format(fit=fit, cal=cal, ah=counts.get("harmless_total", "?"),
                                               ab=counts.get("harmful_total", "?")),
        "attacks": attacks, "controls": controls, "base_seconds": base_s,
        "judge": run.prov.get("judge", {}).get("name") if run.judge_model_name() else None,
    }
    results["defenses"] = _defense_table(defended, sig, names, attacks, controls, base_s, n_boot)
    negatives = {"harmless": ["harmless"]}
    if controls:
        negatives["benign-in-template"] = controls
    results["detection"] = _detection_table(defended, attacks, negatives, n_boot)
    results["ablation"] = _ablation(run, stores, sig, attacks, negatives)
    results["early_stop"] = _early_stop(run, sig, names)
    return results


def _base_seconds(rows: list[dict[str, Any]]) -> float:
    """Wall time of the base generation: the sum of each batch's wall time."""
    return sum({(r["timing"]["wall_s"], r["timing"]["batch_size"]): r["timing"]["wall_s"] for r in rows}.values())


def _defense_table(defended: dict[str, dict[str, Any]], sig: dict[str, list[dict[str, Any]]], names: list[str],
                   attacks: list[str], controls: list[str], base_s: dict[str, float],
                   n_boot: int) -> list[dict[str, Any]]:
    """Table 13: per defense, overhead %, FP on every benign set, RR (keyword judge: flagged or refused) on raw
    harmful and attack prompts, and ASR on attacks by the LLM judge (flagged → not a success; the keyword proxy
    1 − RR as an extra column)."""
    table = []
    for dname, per_set in defended.items():
        blocked_by: dict[str, np.ndarray] = {}
        harmful_by: dict[str, np.ndarray | None] = {}
        spent = base = 0.0
        for name in names:
            r = per_set[name]
            by_id = {x["id"]: x for x in sig[name]}
            rows = [by_id[i] for i in r.extra["ids"]] if "ids" in r.extra else sig[name]
            responses = r.responses if r.responses is not None else [x["response"] for x in rows]
            blocked_by[name] = blocked(r.flags, responses)
            judged = r.extra.get("llm_harmful") if r.responses is not None else [x.get("llm_harmful") for x in rows]
            harmful_by[name] = None if judged is None or any(v is None for v in judged) else np.array(judged, bool)
            spent += r.seconds
            base += base_s[name] * len(r.flags) / len(sig[name])  # subsampled defenses: the same prompts' base time
        entry: dict[str, Any] = {"defense": dname, "seconds": spent,
                                 "overhead_pct": 100 * spent / base if base and not math.isnan(spent) else None,
                                 "n_per_set": {n: len(per_set[n].flags) for n in names}}
        for name in names:
            if not (name == "harmful" or is_attack(name)):
                entry[f"fp:{name}"] = rate_with_ci(blocked_by[name], n_resamples=n_boot)
        if controls:
            entry["fp:benign-in-template (all)"] = rate_with_ci(np.concatenate([blocked_by[c] for c in controls]),
                                                                n_resamples=n_boot)
        if "harmful" in names:
            entry["rr_harmful"] = rate_with_ci(blocked_by["harmful"], n_resamples=n_boot)
        if attacks:
            jail = np.concatenate([blocked_by[a] for a in attacks])
            entry["rr_jailbreak"] = rate_with_ci(jail, n_resamples=n_boot)
            entry["asr_jailbreak_keyword_proxy"] = rate_with_ci(~jail, n_resamples=n_boot)
            if all(harmful_by[a] is not None for a in attacks):
                success = np.concatenate([~blocked_by[a] & harmful_by[a] for a in attacks])  # type: ignore[operator]
                entry["asr_jailbreak_llm"] = rate_with_ci(success, n_resamples=n_boot)
            else:
                entry["asr_jailbreak_llm"] = None
            entry["rr_by_attack"] = {a: float(blocked_by[a].mean()) for a in attacks}
        table.append(entry)
    return table


def _detection_table(defended: dict[str, dict[str, Any]], attacks: list[str], negatives: dict[str, list[str]],
                     n_boot: int) -> list[dict[str, Any]]:
    """AUROC and TPR at 1% / 5% FPR of each scoring defense: all attack prompts vs each kind of negatives."""
    out = []
    if not attacks:
        return out
    for dname, per_set in defended.items():
        if dname in ("undefended", "sri-guard-streaming"):
            continue
        pos = np.concatenate([per_set[a].scores for a in attacks])
        entry: dict[str, Any] = {"defense": dname}
        for kind, sets in negatives.items():
            neg = np.concatenate([per_set[n].scores for n in sets])
            entry[kind] = detection_report(pos, neg, n_resamples=n_boot)
        entry["by_attack"] = {a: auroc(per_set[a].scores, per_set["harmless"].scores) for a in attacks}
        out.append(entry)
    return out


def _ablation(run: Run, stores: dict[str, Any], sig: dict[str, list[dict[str, Any]]], attacks: list[str],
              negatives: dict[str, list[str]]) -> list[dict[str, Any]]:
    """Table 4: AUROC (attacks vs each kind of negatives) of the guard's one-class detector, fitted on the benign
    ``guard-fit`` set, on other representations: the text-level signal, static first-step activations, SRI at the
    first / middle / last traced layer."""
    from ..guard import make_detector

    if not attacks:
        return []
    final = stores["guard-fit"].key["num_layers"]
    layers = sorted(int(k) for k in sig["guard-fit"][0].get("sri_by_layer", {str(final): None}))
    names = {layers[0]: "first", layers[len(layers) // 2]: "middle", layers[-1]: "last"} if len(layers) >= 3 \
        else {layer: str(layer) for layer in layers}

    def feature(name: str, kind: str) -> np.ndarray:
        rows = sig[name]
        if kind == "text":
            return np.array([r["text_signal"] for r in rows], dtype=float)
        if kind == "static":
            _, states = stores[name].load([final])
            return states[final][:, 0, :].double().numpy()
        return np.array([r["sri_by_layer"][kind] if "sri_by_layer" in r else r["sri"] for r in rows])

    kinds = [("text-level signal", "text"), ("static first-step activations (final layer)", "static")]
    kinds += [(f"SRI, {names[layer]} layer ({layer})", str(layer)) for layer in layers if layer in names]
    g = run.cfg.guard
    table = []
    for label, kind in kinds:
        det = make_detector(g.detector, seed=run.cfg.seed).fit(feature("guard-fit", kind))
        pos = np.concatenate([det.score(feature(a, kind)) for a in attacks])
        entry: dict[str, Any] = {"representation": label, "n_positive": len(pos)}
        for neg_kind, sets in negatives.items():
            neg = np.concatenate([det.score(feature(n, kind)) for n in sets])
            entry[neg_kind] = {**detection_report(pos, neg, n_resamples=run.cfg.analysis.bootstrap)["auroc"],
                               "n_negative": len(neg)}
        table.append(entry)
    return table


def _early_stop(run: Run, sig: dict[str, list[dict[str, Any]]], names: list[str]) -> list[dict[str, Any]]:
    """When the streaming guard flags each set, and how much generation stopping there saves
    (``end_step − sampler_step`` over the tokens generated)."""
    from ..io import read_jsonl

    path = run.dir / "guard" / "verdicts.jsonl"
    if not path.is_file():
        return []
    verdicts = {(v["set"], v["id"]): v for v in read_jsonl(path)}
    out = []
    for name in names:
        rows = sig[name]
        g = [verdicts[(name, r["id"])] for r in rows]
        during = [(r, v) for r, v in zip(rows, g, strict=True) if v["sampler_step"] is not None]
        generated = sum(r["end_step"] for r in rows)
        saved = sum(r["end_step"] - v["sampler_step"] for r, v in during)
        flagged = [v["flag_step"] for v in g if v["flagged"]]
        out.append({
            "set": name, "n": len(rows), "flagged": float(np.mean([v["flagged"] for v in g])),
            "flagged_during_generation": len(during) / len(rows),
            "median_flag_step": float(np.median(flagged)) if flagged else None,
            "tokens_saved_pct": 100 * saved / generated if generated else 0.0,
            "steps": len(rows[0]["sri"]),
        })
    return out


def guard_markdown(results: dict[str, Any]) -> str:
    """Table 13 (defenses), detection on both kinds of negatives, Table 4 (ablation) and early stops."""
    def ci(m: dict[str, Any] | None) -> str:
        if m is None:
            return "–"
        return f"{100 * m['value']:.1f}" + ("" if m["low"] is None else
                                             f" [{100 * m['low']:.1f}, {100 * m['high']:.1f}]")

    def ci3(m: dict[str, Any]) -> str:
        return f"{m['value']:.3f}" + ("" if m["low"] is None else f" [{m['low']:.3f}, {m['high']:.3f}]")

    model = results["model"].get("model", "")
    s = results["sampler"]
    lines = [f"# Guard evaluation — {model} ({s.get('name')}, T={s.get('steps')})", "", results["no_attack_in_fit"],
             "", "Sizes: " + ", ".join(f"{k} {v}" for k, v in results["sizes"].items()), ""]
    d0 = results["defenses"][0]
    fp_cols = [k for k in d0 if k.startswith("fp:") and not k.endswith(CONTROL_SUFFIX)]  # per control: eval.json
    head = ["defense", "overhead %", *(f"FP {k[3:]}" for k in fp_cols), "RR raw harmful", "RR jailbreak",
            f"ASR jailbreak (LLM judge{'' if results['judge'] else ': none'})", "ASR (keyword proxy 1 − RR)"]
    lines += ["## Defenses (Table 13 shape; % with 95% bootstrap CI)", "", "| " + " | ".join(head) + " |",
              "|---|" + "---:|" * (len(head) - 1)]
    for d in results["defenses"]:
        oh = "0" if d["defense"] == "undefended" else ("–" if d["overhead_pct"] is None else f"{d['overhead_pct']:.3f}")
        cells = [d["defense"], oh, *(ci(d[k]) for k in fp_cols), ci(d.get("rr_harmful")), ci(d.get("rr_jailbreak")),
                 ci(d.get("asr_jailbreak_llm")), ci(d.get("asr_jailbreak_keyword_proxy"))]
        lines.append("| " + " | ".join(cells) + " |")
    if results["detection"]:
        kinds = [k for k in results["detection"][0] if k not in ("defense", "by_attack")]
        lines += ["", "## Detection: all attack prompts vs each kind of benign prompts (AUROC, TPR at 1% / 5% FPR)",
                  "", "| detector | " + " | ".join(f"AUROC vs {k} | TPR@1% vs {k} | TPR@5% vs {k}" for k in kinds)
                  + " |", "|---|" + "---:|" * (3 * len(kinds))]
        for d in results["detection"]:
            cells = [d["defense"]]
            for k in kinds:
                cells += [ci3(d[k]["auroc"]), ci3(d[k]["tpr_at_1pct_fpr"]), ci3(d[k]["tpr_at_5pct_fpr"])]
            lines.append("| " + " | ".join(cells) + " |")
    if results["ablation"]:
        kinds = [k for k in results["ablation"][0] if k not in ("representation", "n_positive")]
        lines += ["", "## Ablation (Table 4 shape): AUROC of the same benign-only detector on other representations",
                  "", "| representation | " + " | ".join(f"AUROC vs {k}" for k in kinds) + " |",
                  "|---|" + "---:|" * len(kinds)]
        for a in results["ablation"]:
            lines.append(f"| {a['representation']} | " + " | ".join(ci3(a[k]) for k in kinds) + " |")
    if results["early_stop"]:
        lines += ["", "## Streaming guard: when it flags and what stopping saves", "",
                  "| prompt set | n | flagged | flagged while generating | median flag step | tokens saved |",
                  "|---|---:|---:|---:|---:|---:|"]
        for e in results["early_stop"]:
            med = "–" if e["median_flag_step"] is None else f"{e['median_flag_step']:.0f}"
            lines.append(f"| {e['set']} | {e['n']} | {100 * e['flagged']:.0f}% | "
                         f"{100 * e['flagged_during_generation']:.0f}% | {med} / {e['steps']} | "
                         f"{e['tokens_saved_pct']:.1f}% |")
    lines += ["", "Base generation time (s): " + ", ".join(f"{k} {v:.1f}" for k, v in results["base_seconds"].items())]
    return "\n".join(lines) + "\n"


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")

