"""Figures of one analysed run: per-group SRI trajectories, single-prompt panels, attack rates, IRR bars, LDA.

Every function draws from signal rows and/or the analysis dict (:func:`sri.stats.recovery.analyze_signals`) and
writes one PNG atomically, returning its path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .mpl import literal_text, plt, save_figure

REFUSED_COLOUR, ANSWERED_COLOUR, MEAN_COLOUR = "#c62828", "#2e7d32", "#111111"
CLASS_COLOURS = {"harmless": "#1b9e77", "refused": "#d95f02", "complied-harmful": "#7570b3", "jailbreak": "#e7298a"}
LAMBDA_COLOURS = ("#4c72b0", "#55a868", "#c44e52", "#8172b2")


def _shade(ax: Any, steps: int) -> None:
    ax.axhspan(0.5, 1.02, color="#e8f5e9", zorder=0)
    ax.axhspan(-0.02, 0.5, color="#fdecea", zorder=0)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlim(1, steps)


@literal_text
def group_trajectories(rows: Sequence[dict[str, Any]], out: str | Path, *, groups: Sequence[str] | None = None,
                       max_lines: int = 40, title: str = "SRI trajectories by group") -> Path:
    """One panel per group: each prompt's σ_t (thin; red if its text refused, green if not), the group mean
    (bold) with its 10–90% band, over compliance (green) and refusal (red) regions."""
    by_group: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_group.setdefault(str(r.get("group") or r["label"]), []).append(r)
    names = [g for g in (groups or by_group) if g in by_group]
    cols = min(3, len(names))
    lines = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(lines, cols, figsize=(4.2 * cols, 2.9 * lines), sharex=True, sharey=True,
                             squeeze=False)
    steps = len(rows[0]["sri"])
    x = np.arange(1, steps + 1)
    for ax, name in zip(axes.flat, names, strict=False):
        members = by_group[name]
        sig = np.array([m["sri"] for m in members], dtype=float)
        _shade(ax, steps)
        for m, s in list(zip(members, sig, strict=True))[:max_lines]:
            ax.plot(x, s, color=REFUSED_COLOUR if m["refused"] else ANSWERED_COLOUR, lw=0.6, alpha=0.35)
        lo, hi = np.percentile(sig, [10, 90], axis=0)
        ax.fill_between(x, lo, hi, color="#555555", alpha=0.15, lw=0)
        ax.plot(x, sig.mean(0), color=MEAN_COLOUR, lw=2.0)
        n_ref = int(sum(bool(m["refused"]) for m in members))
        ax.set_title(f"{name}  (n={len(members)}, refused {n_ref})", fontsize=9)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("step t")
    for ax in axes[:, 0]:
        ax.set_ylabel("σ_t")
    fig.suptitle(title + "  — thin: prompts (red = text refused), bold: mean, band: 10–90%", fontsize=10)
    return save_figure(fig, out)


@literal_text
def prompt_panels(rows: Sequence[dict[str, Any]], out: str | Path, *, flags: dict[str, dict[str, Any]] | None = None,
                  title: str = "Single generations: SRI and the text-level refusal signal") -> Path:
    """One panel per row, like the paper's: σ_t (line) and the text signal (step; 1 = text not refusing yet)
    on the same 0–1 axis, the first compliant step and the dip toward refusal marked when ``flags`` has them."""
    cols = min(2, len(rows))
    lines = math.ceil(len(rows) / cols)
    fig, axes = plt.subplots(lines, cols, figsize=(5.2 * cols, 2.8 * lines), squeeze=False)
    for ax, r in zip(axes.flat, rows, strict=False):
        steps = len(r["sri"])
        x = np.arange(1, steps + 1)
        _shade(ax, steps)
        ax.plot(x, r["sri"], color="#1f4e9c", lw=2.0, label="SRI σ_t")
        ax.step(x, r["text_signal"], where="mid", color="#e69f00", lw=1.6, ls="--", label="text signal")
        f = (flags or {}).get(r["id"], {})
        if f.get("dip_step"):
            ax.axvline(f["dip_step"], color=REFUSED_COLOUR, lw=1, ls=":", label="dip toward refusal")
        verdict = "refused" if r["refused"] else "answered"
        group = r.get("group") or r["label"]
        ax.set_title(f"{group} · {verdict}" + (" · incomplete recovery" if f.get("flag") else ""), fontsize=9)
        response = " ".join(str(r.get("response", "")).split())
        ax.text(0.01, 0.02, (response[:70] + "…") if len(response) > 70 else response, transform=ax.transAxes,
                fontsize=6.5, color="#333333", va="bottom")
        ax.set_xlabel("step t", fontsize=8)
        ax.legend(loc="upper right", fontsize=6.5, framealpha=0.85)
    for ax in axes.flat[len(rows):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, out)


def _err(est: dict[str, Any] | None) -> tuple[float, float, float]:
    if not est or est.get("value") is None:
        return math.nan, 0.0, 0.0
    v = est["value"]
    lo = v - est["low"] if est.get("low") is not None else 0.0
    hi = est["high"] - v if est.get("high") is not None else 0.0
    return v, max(lo, 0.0), max(hi, 0.0)


@literal_text
def attack_rates(analysis: dict[str, Any], out: str | Path, title: str = "Refusal and attack success by group"
                 ) -> Path:
    """Bars of refusal rate (keyword judge) and attack success rate (LLM judge) per group, 95% CIs."""
    table = analysis["groups"]
    names = [g["group"] for g in table]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(names) + 2), 3.6))
    for k, (key, label, colour) in enumerate((("refusal_rate", "RR (keyword)", "#4c72b0"),
                                              ("attack_success_rate", "ASR (LLM judge)", "#c44e52"))):
        vals = [_err(g.get(key)) for g in table]
        ax.bar(x + (k - 0.5) * 0.38, [100 * v[0] for v in vals], 0.38, label=label, color=colour,
               yerr=[[100 * v[1] for v in vals], [100 * v[2] for v in vals]], capsize=2)
    ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("% of prompts")
    ax.set_ylim(0, 105)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, out)


@literal_text
def irr_bars(analysis: dict[str, Any], out: str | Path, title: str = "Internal recovery rate (λ_c = 0.5)") -> Path:
    """Grouped bars: IRR per group at each λ_r, with 95% bootstrap CIs; n (prompts ever compliant) on top."""
    table = analysis["groups"]
    lambdas = list(table[0]["irr"])
    names = [g["group"] for g in table]
    x = np.arange(len(names))
    width = 0.8 / len(lambdas)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(names) + 2), 3.6))
    for k, lr in enumerate(lambdas):
        vals = [_err(g["irr"][lr]) for g in table]
        pos = x + (k - (len(lambdas) - 1) / 2) * width
        ax.bar(pos, [100 * v[0] for v in vals], width, color=LAMBDA_COLOURS[k % len(LAMBDA_COLOURS)],
               yerr=[[100 * v[1] for v in vals], [100 * v[2] for v in vals]], capsize=2, label=f"λ_r = {lr}")
    for i, g in enumerate(table):
        ax.text(x[i], 101, f"n={g['irr'][lambdas[0]]['n']}", ha="center", fontsize=7)
    ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("IRR (%)")
    ax.set_ylim(0, 108)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, out)


@literal_text
def sampler_rates(comparison: dict[str, Any], out: str | Path, title: str = "Same weights, different samplers"
                  ) -> Path:
    """Grouped bars of a :mod:`sri.report.comparison`: RR (top) and ASR (bottom) per evaluation set, one bar per
    sampler, with the 95% bootstrap intervals of each sampler's analysis."""
    names = list(comparison["samplers"])
    groups = comparison["groups"]
    x = np.arange(len(groups))
    width = 0.8 / max(1, len(names))
    panels = [("refusal_rate", "Refusal rate (keyword judge)")]
    if any(((row["samplers"].get(n) or {}).get("attack_success_rate") or {}).get("value") is not None
           for row in groups for n in names):  # a run without an LLM judge has no ASR: no empty panel
        panels.append(("attack_success_rate", "Attack success rate (LLM judge)"))
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(7.0, 0.7 * len(groups) + 2), 3.5 * len(panels)),
                             sharex=True, squeeze=False)
    axes = axes[:, 0]
    for ax, (key, label) in zip(axes, panels, strict=True):
        for k, name in enumerate(names):
            vals = [_err((row["samplers"].get(name) or {}).get(key)) for row in groups]
            ax.bar(x + (k - (len(names) - 1) / 2) * width, [v[0] for v in vals], width, label=name,
                   yerr=[[v[1] for v in vals], [v[2] for v in vals]], capsize=2)
        ax.set_ylim(0, 1.05)
        ax.set_title(label)
    axes[-1].set_xticks(x, [r["group"] for r in groups], rotation=35, ha="right")
    axes[0].legend(fontsize=8, ncols=min(4, len(names)))
    fig.suptitle(title)
    return save_figure(fig, out)


@literal_text
def lda_scatter(geometry: dict[str, Any], out: str | Path, title: str = "LDA projection of SRI signals") -> Path:
    """2-D LDA coordinates coloured by response class."""
    coords = np.asarray(geometry["coords"], dtype=float)
    labels = np.asarray(geometry["labels"])
    fig, ax = plt.subplots(figsize=(5.6, 4.4))
    for c in geometry["classes"]:
        pts = coords[labels == c]
        ax.scatter(pts[:, 0], pts[:, 1], s=16, alpha=0.75, color=CLASS_COLOURS.get(c, "#666666"),
                   label=f"{c} (n={len(pts)})", edgecolors="none")
    evr = geometry.get("explained_variance_ratio", [])
    ax.set_xlabel("LD1" + (f" ({100 * evr[0]:.0f}%)" if evr else ""))
    ax.set_ylabel("LD2" + (f" ({100 * evr[1]:.0f}%)" if len(evr) > 1 else " (none: two classes)"))
    ax.set_title(title + f" — train accuracy {100 * geometry['train_accuracy']:.0f}%", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, out)
