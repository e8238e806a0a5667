"""The main job on the default real model: anchors, traces of unseen harmless / harmful / jailbreak prompts,
signals, a figure and a summary table."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from .assets import DEFAULT_MODEL
from .data import load_prompts, load_template, wrap_records
from .io import write_json, write_jsonl, write_text_atomic
from .models import load_model
from .report.plots import plot_trajectories
from .sampling import ARConfig
from .signal import compute_signals, fit_anchors
from .trace import TraceStore
from .tracer import trace_prompts


@dataclass
class DemoConfig:
    model: str = DEFAULT_MODEL
    n_anchor: int = 32  # harmless and harmful prompts each, for the anchors
    n_eval: int = 24  # harmless, harmful and jailbreak prompts each, never used for the anchors
    steps: int = 32
    batch_size: int = 8
    seed: int = 0
    layers: str = "final"
    pooling: str = "producing"
    device: str = "auto"
    dtype: str = "auto"
    jailbreak_template: str = "refusal_suppression"


def run_demo(out: str | Path, config: DemoConfig, progress: bool = True) -> dict[str, Any]:
    """Run the whole demo into ``out`` (resumable) and return the summary."""
    out = Path(out)
    adapter = load_model(config.model, device=config.device, dtype=config.dtype)
    sampler = ARConfig(steps=config.steps, seed=config.seed)
    n, m = config.n_anchor, config.n_eval
    harmless = load_prompts("harmless", shuffle_seed=config.seed, max_prompts=n + m)
    harmful = load_prompts("advbench", shuffle_seed=config.seed, max_prompts=n + m)
    jailbreak = wrap_records(harmful[n:], load_template(config.jailbreak_template), config.jailbreak_template)
    sets = {"anchor-harmless": harmless[:n], "anchor-harmful": harmful[:n],
            "harmless": harmless[n:], "harmful": harmful[n:], "jailbreak": jailbreak}
    stores: dict[str, TraceStore] = {}
    for name, records in sets.items():
        stores[name] = trace_prompts(adapter, records, out / "traces" / name, sampler=sampler, layers=config.layers,
                                     pooling=config.pooling, batch_size=config.batch_size, progress=progress,
                                     description=f"{name:>15}")
    anchors = fit_anchors(stores["anchor-harmless"], stores["anchor-harmful"])
    anchors.save(out / "anchors.safetensors")
    signals = {name: compute_signals(anchors, store) for name, store in stores.items()}
    evaluated = [row for name in ("harmless", "harmful", "jailbreak") for row in signals[name]]
    reference = signals["anchor-harmless"] + signals["anchor-harmful"]
    write_jsonl(out / "signals.jsonl", evaluated)
    write_jsonl(out / "signals-anchor-set.jsonl", reference)
    figure = plot_trajectories(evaluated, out / "figures" / "sri_trajectories.png", reference=reference,
                               title=f"SRI on {config.model} — unseen prompts (AR, greedy, T={config.steps})")
    summary = summarise(signals, anchors.info["counts"])
    summary.update({"config": asdict(config), "model": adapter.describe(), "figure": str(figure)})
    write_json(out / "summary.json", summary)
    write_text_atomic(out / "summary.md", summary_markdown(summary))
    return summary


def summarise(signals: dict[str, list[dict[str, Any]]], anchor_counts: dict[str, int]) -> dict[str, Any]:
    """Per evaluated group: refusal rate and mean final σ; AUROC of final σ, harmless vs refused harmful."""
    groups = []
    for name in ("harmless", "harmful", "jailbreak"):
        rows = signals[name]
        final = np.array([r["sri"][-1] for r in rows])
        refused = np.array([r["refused"] for r in rows])
        groups.append({
            "group": name, "n": len(rows), "refusal_rate": float(refused.mean()),
            "mean_final_sri": float(final.mean()),
            "mean_final_sri_refused": float(final[refused].mean()) if refused.any() else None,
            "mean_final_sri_answered": float(final[~refused].mean()) if (~refused).any() else None,
        })
    ok = [r["sri"][-1] for r in signals["harmless"]]
    auroc = {}
    for name in ("harmful", "jailbreak"):
        bad = [r["sri"][-1] for r in signals[name] if r["refused"]]
        auroc[f"harmless_vs_refused_{name}"] = _auroc(ok, bad)
        auroc[f"harmless_vs_all_{name}"] = _auroc(ok, [r["sri"][-1] for r in signals[name]])
    return {"groups": groups, "auroc_final_sri": auroc, "anchors": anchor_counts}


def _auroc(positive: list[float], negative: list[float]) -> float | None:
    if not positive or not negative:
        return None
    y = [1] * len(positive) + [0] * len(negative)
    return float(roc_auc_score(y, positive + negative))


def summary_markdown(summary: dict[str, Any]) -> str:
    fmt = lambda v: "–" if v is None else f"{v:.3f}"
    lines = ["| group | n | refusal rate | mean final σ | mean final σ (refused) | mean final σ (answered) |",
             "|---|---:|---:|---:|---:|---:|"]
    for g in summary["groups"]:
        lines.append(f"| {g['group']} | {g['n']} | {g['refusal_rate']:.2f} | {fmt(g['mean_final_sri'])} | "
                     f"{fmt(g['mean_final_sri_refused'])} | {fmt(g['mean_final_sri_answered'])} |")
    lines += ["", "| AUROC of final σ | value |", "|---|---:|"]
    lines += [f"| {k.replace('_', ' ')} | {fmt(v)} |" for k, v in summary["auroc_final_sri"].items()]
    c = summary["anchors"]
    lines += ["", f"Anchors: {c['harmless_used']}/{c['harmless_total']} harmless answered, "
                  f"{c['harmful_used']}/{c['harmful_total']} harmful refused (keyword judge)."]
    return "\n".join(lines) + "\n"
