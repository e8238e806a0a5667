"""The one way sri draws with matplotlib: the Agg backend and user text shown literally.

Labels, titles, group names, prompt ids and model responses are user text. With matplotlib's default
``text.parse_math`` a string with two ``$`` (``$\\foo$``) is parsed as mathtext and an unknown command makes
``savefig`` raise, so a model response could crash ``sri plot`` / ``sri report``. Every figure function is
wrapped in :func:`literal_text`: every Text, legend entry and tick label it creates has ``parse_math=False``.
User text can also be arbitrarily long or span many lines; :func:`save_figure` cuts every text of a figure to
:data:`MAX_LINE` characters per line and :data:`MAX_LINES` lines before the layout, so a 10 000-character label
cannot push the axes out of the figure.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.text import Text
from matplotlib.ticker import FixedFormatter

from ..io import atomic_path

P = ParamSpec("P")
R = TypeVar("R")

#: rc settings every sri figure is drawn under.
RC = {"text.parse_math": False, "text.usetex": False}


def literal_text(draw: Callable[P, R]) -> Callable[P, R]:
    """Decorator: run a figure function with :data:`RC`, so no text it draws is interpreted as mathtext."""

    @functools.wraps(draw)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with plt.rc_context(RC):
            return draw(*args, **kwargs)

    return wrapper


#: the longest line and the most lines of any text drawn in a figure (titles, legend entries, tick labels)
MAX_LINE, MAX_LINES = 90, 4


def tidy_text(text: str, width: int = MAX_LINE, lines: int = MAX_LINES) -> str:
    """``text`` cut to ``lines`` lines of at most ``width`` characters (``…`` marks a cut)."""
    parts = str(text).splitlines() or [""]
    cut = [line if len(line) <= width else line[:width - 1] + "…" for line in parts[:lines]]
    if len(parts) > lines:
        cut[-1] = cut[-1][:width - 1] + "…"
    return "\n".join(cut)


def save_figure(fig: Any, out: str | Path, dpi: int = 110) -> Path:
    """Tidy every text of ``fig`` (:func:`tidy_text`), lay it out, write it atomically to ``out`` (PNG unless
    the suffix names another format matplotlib writes) and close it. Returns ``out``."""
    out = Path(out)
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            formatter = axis.get_major_formatter()
            if isinstance(formatter, FixedFormatter):  # tick labels are re-made from it at every draw
                formatter.seq = [tidy_text(t) for t in formatter.seq]
    for text in fig.findobj(Text):
        if len(text.get_text()) > MAX_LINE or "\n" in text.get_text():
            text.set_text(tidy_text(text.get_text()))
    with warnings.catch_warnings():  # a layout that cannot fit everything still draws; say nothing
        warnings.filterwarnings("ignore", message="Tight layout not applied", category=UserWarning)
        fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=dpi, format=out.suffix.lstrip(".") or "png")
    plt.close(fig)
    return out


__all__ = ["RC", "literal_text", "plt", "save_figure", "tidy_text"]
