"""The one way sri draws with matplotlib: the Agg backend and user text shown literally.

Labels, titles, group names, prompt ids and model responses are user text. With matplotlib's default
``text.parse_math`` a string with two ``$`` (``$\\foo$``) is parsed as mathtext and an unknown command makes
``savefig`` raise, so a model response could crash ``sri plot`` / ``sri report``. Every figure function is
wrapped in :func:`literal_text`: every Text, legend entry and tick label it creates has ``parse_math=False``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

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


__all__ = ["RC", "literal_text", "plt"]
