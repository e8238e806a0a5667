"""ROC curves of jailbreak detectors (attack prompts positive, harmless prompts negative)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from .mpl import literal_text, plt, save_figure, tidy_text


@literal_text
def plot_roc(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], out: str | Path, *,
             title: str = "Jailbreak detection") -> Path:
    """One ROC curve per detector from ``{name: (attack scores, benign scores)}``, with the 1% and 5% FPR
    operating points marked."""
    out = Path(out)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for name, (pos, neg) in curves.items():
        y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
        s = np.r_[np.asarray(pos, float), np.asarray(neg, float)]
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, lw=1.8, label=f"{tidy_text(name, 48, 1)} (AUROC {roc_auc_score(y, s):.3f})")
    for x in (0.01, 0.05):
        ax.axvline(x, color="#bbbbbb", lw=0.8, ls=":")
    ax.plot([0, 1], [0, 1], color="#999999", lw=0.8, ls="--")
    ax.set(xlabel="false positive rate (harmless prompts)", ylabel="true positive rate (jailbreak prompts)",
           title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    out.parent.mkdir(parents=True, exist_ok=True)
    return save_figure(fig, out, dpi=130)
