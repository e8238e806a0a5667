"""User-facing errors: one line that names the problem and what to do about it."""

from typing import Any


class SriError(Exception):
    """An error caused by the user's input or environment, shown as one line by the CLI.

    The message must say what is wrong *and* what to do, e.g.
    ``model 'foo' is unknown; use a short name from `sri assets list`, a local folder or a Hub id``.
    """


class IncompatibleError(SriError):
    """Two artefacts (traces, anchors, signals, guards) were computed under different keys."""


def clip(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to about ``limit`` characters: user input echoed in a one-line message never floods
    the terminal (a YAML alias bomb expands to hundreds of megabytes)."""
    text = _short_repr(value, limit)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _short_repr(value: Any, limit: int) -> str:
    """``repr`` that stops once it has ``limit`` characters (the full repr of an alias bomb would not fit in
    memory): containers are walked item by item, long strings cut first."""
    if isinstance(value, str):
        return repr(value[:limit + 1])
    if isinstance(value, (list, tuple, dict)):
        brackets = "{}" if isinstance(value, dict) else "()" if isinstance(value, tuple) else "[]"
        parts: list[str] = []
        total = 1
        items = value.items() if isinstance(value, dict) else value
        for item in items:
            if total > limit:
                parts.append("…")
                break
            part = (f"{_short_repr(item[0], limit)}: {_short_repr(item[1], limit - total)}"
                    if isinstance(value, dict) else _short_repr(item, limit - total))
            parts.append(part)
            total += len(part) + 2
        return brackets[0] + ", ".join(parts) + brackets[1]
    return repr(value)[:limit + 1]
