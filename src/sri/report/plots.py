"""SRI trajectory figures."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SriError
from .mpl import literal_text, plt, save_figure, tidy_text

COMPLY_COLOUR, REFUSE_COLOUR = "#e8f5e9", "#fdecea"
_PALETTE = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666"]
#: fixed colours for the groups every run has, so figures of different runs read the same way
GROUP_COLOURS = {"harmless · answered": "#2b8cbe", "harmless · refused": "#9ecae1",
                 "harmful · refused": "#d7301f", "harmful · answered": "#fc8d59",
                 "jailbreak · refused": "#6a51a3", "jailbreak · answered": "#e7298a"}


def group_colour(name: str, index: int) -> str:
    return GROUP_COLOURS.get(name, _PALETTE[index % len(_PALETTE)])


def group_name(row: dict[str, Any]) -> str:
    """``label · refused`` / ``label · answered`` by the keyword judge of the final text."""
    return f"{row['label']} · {'refused' if row['refused'] else 'answered'}"


#: what makes two σ comparable on one axis: the same model, layer and anchors (the anchors' key fixes the rest);
#: the decoding may differ (a sampled reference for greedy signals)
COMPARABLE_FIELDS = ("fingerprint", "hidden_size", "layer", "anchors")


def _check_same_scale(rows: Sequence[dict[str, Any]], reference: Sequence[dict[str, Any]]) -> None:
    """A reference drawn beside the signals must measure σ the same way (:data:`COMPARABLE_FIELDS`): σ under
    another model or other anchors is another number. Rows without a key (hand-made) are not checked."""
    from ..tracing.store import check_compatible

    key = rows[0].get("key")
    for r in reference:
        if isinstance(key, dict) and isinstance(r.get("key"), dict):
            check_compatible(key, r["key"], "the signals", "the reference", COMPARABLE_FIELDS)


@literal_text
def plot_trajectories(rows: Sequence[dict[str, Any]], out: str | Path, *, title: str = "SRI over generation steps",
                      reference: Sequence[dict[str, Any]] | None = (), max_lines: int = 12) -> Path:
    """Two panels sharing the step axis.

    Top: σ_t of each prompt (thin), each group's mean with its 25–75% band (bold), the compliance (σ > 0.5,
    green) and refusal (σ < 0.5, red) regions, and dashed reference trajectories — the mean σ of harmless
    answered and harmful refused prompts from ``reference`` (or from ``rows`` when no reference is given).
    Bottom: the text-level refusal step signal, as the share of each group whose text has not refused yet.
    """
    reference = reference or ()
    if not rows:
        raise SriError("there are no signals to plot; give signal rows of `sri signal`")
    steps = len(rows[0]["sri"])
    if steps < 2:
        raise SriError("the signals have 1 step; a trajectory needs at least 2 (trace with --steps ≥ 2)")
    bad = next((r for r in reference if len(r["sri"]) != steps), None)
    if bad is not None:
        raise SriError(f"the reference signals have {len(bad['sri'])} steps, the signals {steps}; give a reference "
                       "computed with the same step count")
    _check_same_scale(rows, reference)
    if reference and not any((r["label"], r["refused"]) in (("harmless", False), ("harmful", True))
                             for r in reference):
        raise SriError("the reference holds no answered harmless and no refused harmful row (labels 'harmless' / "
                       "'harmful'), so there is nothing to draw from it; give signals of labelled prompt sets")
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[group_name(r)].append(r)
    x = np.arange(1, steps + 1)
    fig, (ax, ax_text) = plt.subplots(2, 1, figsize=(11, 6.6), sharex=True, gridspec_kw={"height_ratios": [3, 1.3]})
    ax.axhspan(0.5, 1.02, color=COMPLY_COLOUR, zorder=0)
    ax.axhspan(-0.02, 0.5, color=REFUSE_COLOUR, zorder=0)
    ax.axhline(0.5, color="#999999", lw=0.8, ls=":")
    ax.text(steps + 0.3, 0.75, "compliance", rotation=90, va="center", fontsize=8, color="#2e7d32")
    ax.text(steps + 0.3, 0.25, "refusal", rotation=90, va="center", fontsize=8, color="#c62828")

    for i, (name, members) in enumerate(sorted(groups.items())):
        colour = group_colour(name, i)
        sig = np.array([m["sri"] for m in members])
        for s in sig[:max_lines]:
            ax.plot(x, s, color=colour, lw=0.6, alpha=0.25)
        q25, q75 = np.percentile(sig, [25, 75], axis=0)
        ax.fill_between(x, q25, q75, color=colour, alpha=0.15, lw=0)
        ax.plot(x, sig.mean(0), color=colour, lw=2.2, label=f"{tidy_text(name, 48, 1)} (n={len(members)})")
        text = np.array([m["text_signal"] for m in members])
        ax_text.step(x, text.mean(0), where="mid", color=colour, lw=1.8, alpha=0.9)

    ref_rows = reference or rows
    for label, refused, style in (("harmless", False, "--"), ("harmful", True, "-.")):
        ref = [r["sri"] for r in ref_rows if r["label"] == label and r["refused"] == refused]
        if ref:
            ax.plot(x, np.mean(ref, 0), color="black", lw=1.2, ls=style,
                    label=f"reference: {label} {'refused' if refused else 'answered'} (n={len(ref)})")

    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("SRI σ_t  (1 = near harmless anchor)")
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.03, 1.0), fontsize=8, frameon=False)
    ax_text.set_ylim(-0.05, 1.05)
    ax_text.set_ylabel("text not yet\nrefusing (share)")
    ax_text.set_xlabel("generation step t")
    ax_text.grid(alpha=0.3)
    return save_figure(fig, out, dpi=130)
