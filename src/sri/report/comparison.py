"""Samplers compared on fixed weights (paper Table 2 and its IRR comparison): one model, the same prompts, one run
folder per sampler (``samplers/<name>/``, each a complete :mod:`sri.pipeline` run), and here the side-by-side
tables of what changed.

For every evaluation set s (raw harmful prompts, each attack, all attacks) and sampler k:

    RR_k(s)  = share of responses the keyword judge calls a refusal,
    ASR_k(s) = share the LLM judge calls a real answer to the harmful request,
    Δ_k(s)   = X_k(s) − X_ref(s) with ref the first sampler listed (a difference of point estimates),

plus IRR_k at every λ_r and, for diffusion samplers, HRR/FRR (revision recovery), with the bootstrap intervals
of the per-sampler analyses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..io import write_json, write_text_atomic
from .figures import sampler_rates

GROUP_ORDER_FIRST = ("harmful",)
GROUP_ORDER_LAST = ("all attacks",)


def _groups(analysis: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {g["group"]: g for g in analysis["groups"]}


def _value(est: dict[str, Any] | None) -> float | None:
    return None if est is None else est.get("value")


def compare_samplers(run_dirs: dict[str, Path], samplers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The comparison of the finished per-sampler runs ``name → folder`` (first = reference)."""
    from ..stats.recovery import load_analysis

    analyses = {name: load_analysis(d) for name, d in run_dirs.items()}
    names = list(analyses)
    ref = names[0]
    groups_by = {name: _groups(a) for name, a in analyses.items()}
    seen = [g for g in groups_by[ref] if g != "harmless"]
    for name in names[1:]:
        seen += [g for g in groups_by[name] if g not in seen and g != "harmless"]
    order = [g for g in GROUP_ORDER_FIRST if g in seen]
    order += [g for g in seen if g not in GROUP_ORDER_FIRST + GROUP_ORDER_LAST]
    order += [g for g in GROUP_ORDER_LAST if g in seen]
    rows = []
    for group in order:
        row: dict[str, Any] = {"group": group, "samplers": {}}
        base = groups_by[ref].get(group)
        for name in names:
            g = groups_by[name].get(group)
            if g is None:
                row["samplers"][name] = None
                continue
            entry = {"n": g["n"], "refusal_rate": g["refusal_rate"], "attack_success_rate": g["attack_success_rate"],
                     "irr": g["irr"], "revision_recovery": g.get("revision_recovery"),
                     "mean_final_sri": g.get("mean_final_sri")}
            if base is not None and name != ref:
                for key in ("refusal_rate", "attack_success_rate"):
                    a, b = _value(g[key]), _value(base[key])
                    entry[f"delta_{key}"] = None if a is None or b is None else a - b
            row["samplers"][name] = entry
        rows.append(row)
    harmless = {name: (groups_by[name].get("harmless") or {}).get("refusal_rate") for name in names}
    return {"reference": ref, "samplers": samplers, "lambda_r": analyses[ref]["settings"]["lambda_r"],
            "groups": rows, "harmless_refusal_rate": harmless}


def _pct(est: dict[str, Any] | None, ci: bool = False) -> str:
    if est is None or est.get("value") is None:
        return "–"
    text = f"{100 * est['value']:.1f}"
    if ci and est.get("low") is not None:
        text += f" [{100 * est['low']:.0f}, {100 * est['high']:.0f}]"
    return text


def _delta(value: float | None) -> str:
    return "" if value is None else f" ({100 * value:+.1f})"


def comparison_markdown(comparison: dict[str, Any]) -> str:
    """Markdown tables: RR/ASR with deltas against the reference sampler, IRR per λ_r, HRR/FRR."""
    names = list(comparison["samplers"])
    ref = comparison["reference"]
    spec = "; ".join(f"**{n}** = {_describe(comparison['samplers'][n])}" for n in names)
    lines = [f"Samplers: {spec}. Deltas (in points, in brackets) are against **{ref}** — differences of the two "
             "point estimates on the same prompts, without an interval of their own.", ""]
    lines += ["| set | n | " + " | ".join(f"RR % {n}" for n in names) + " | "
              + " | ".join(f"ASR % {n}" for n in names) + " |",
              "|---|---:|" + "---:|" * (2 * len(names))]
    for row in comparison["groups"]:
        cells = row["samplers"]
        n = next((c["n"] for c in cells.values() if c), 0)
        rr = [(_pct(c["refusal_rate"]) + _delta(c.get("delta_refusal_rate"))) if c else "–" for c in cells.values()]
        asr = [(_pct(c["attack_success_rate"]) + _delta(c.get("delta_attack_success_rate"))) if c else "–"
               for c in cells.values()]
        lines.append(f"| {row['group']} | {n} | " + " | ".join(rr) + " | " + " | ".join(asr) + " |")
    harmless = comparison["harmless_refusal_rate"]
    lines.append("| harmless (over-refusal) | | " + " | ".join(_pct(harmless.get(n)) for n in names)
                 + " |" + " |" * len(names))
    lam = comparison["lambda_r"]
    for group in ("harmful", "all attacks"):
        row = next((r for r in comparison["groups"] if r["group"] == group), None)
        if row is None:
            continue
        lines += ["", f"IRR and revision recovery on **{group}** (%, 95% bootstrap interval):", "",
                  "| sampler | " + " | ".join(f"IRR λ_r={v}" for v in lam) + " | HRR | FRR |",
                  "|---|" + "---:|" * (len(lam) + 2)]
        for name, c in row["samplers"].items():
            if c is None:
                continue
            rev = c.get("revision_recovery") or {}
            irr = [_pct(c["irr"].get(f"{v:g}"), ci=True) for v in lam]
            lines.append(f"| {name} | " + " | ".join(irr) + f" | {_pct(rev.get('hrr'), ci=True)} | "
                         f"{_pct(rev.get('frr'), ci=True)} |")
    return "\n".join(lines) + "\n"


def _describe(spec: dict[str, Any]) -> str:
    """The sampler in words: its kind and length, then every setting that differs from the default (two samplers
    of a comparison always differ somewhere, so the description must show where)."""
    from ..pipeline.config import ARSampler, DiffusionARSampler, DiffusionSampler

    kind = spec.get("kind", "ar")
    if kind == "diffusion-ar":
        parts, cls = [f"AR order ({spec.get('steps')} tokens, one per step)"], DiffusionARSampler
    elif kind == "ar":
        parts, cls = [f"AR decoding, T={spec.get('steps', 32)}"], ARSampler
    else:
        cls = DiffusionSampler
        parts = [f"{spec.get('remasking', 'low_confidence')} remasking", f"{spec.get('steps', 32)} steps"]
        if spec.get("schedule"):
            parts.insert(0, f"{spec['schedule']} schedule")
        if spec.get("gen_length"):
            parts.append(f"{spec['gen_length']} slots")
        if spec.get("block_length"):
            parts.append(f"blocks of {spec['block_length']}")
    shown = {"kind", "steps", "remasking", "schedule", "gen_length", "block_length"}
    parts += [f"{name.replace('_', ' ')} {spec[name]:g}" if isinstance(spec[name], float) else
              f"{name.replace('_', ' ')} {spec[name]}" for name, field in cls.model_fields.items()
              if name not in shown and name in spec and spec[name] != field.default]
    return ", ".join(parts)


def write_comparison(run_dir: Path, run_dirs: dict[str, Path], samplers: dict[str, dict[str, Any]]) -> Path:
    """Write ``comparison.json``, ``comparison.md`` and ``figures/samplers.png``; returns the markdown path."""
    comparison = compare_samplers(run_dirs, samplers)
    comparison["runs"] = {name: str(Path(d).relative_to(run_dir)) for name, d in run_dirs.items()}
    write_json(run_dir / "comparison.json", comparison)
    sampler_rates(comparison, run_dir / "figures" / "samplers.png")
    path = run_dir / "comparison.md"
    write_text_atomic(path, comparison_markdown(comparison))
    return path
