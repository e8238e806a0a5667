"""One generic registry for everything that is chosen by name: samplers, poolings, attacks, defenses,
detectors, model families.

A :class:`Registry` is a read-only mapping ``name → item``. Looking up an unknown name raises
:class:`UnknownNameError` (a :class:`~sri.errors.SriError` *and* a ``KeyError``, so ``registry.get(name)`` and
``name in registry`` behave as for a dict) whose one-line message lists the known names and suggests the closest
ones (``difflib``)::

    >>> POOLINGS["produce"]
    UnknownNameError: pooling 'produce' is unknown (did you mean 'producing'?); known: producing, generated, …
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

from .errors import SriError

T = TypeVar("T")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class UnknownNameError(SriError, KeyError):
    """A name that no registry entry has; the message suggests the closest names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class Registry(Mapping[str, T], Generic[T]):
    """Named items of one ``kind`` (e.g. ``"attack"``); ``hint`` says where to see them all (e.g. ``sri ls``)."""

    def __init__(self, kind: str, hint: str = "list them with `sri ls`") -> None:
        self.kind = kind
        self.hint = hint
        self._items: dict[str, T] = {}

    def add(self, name: str, item: T) -> T:
        """Register ``item`` under ``name``; a name registered twice is a programming error (``ValueError``)."""
        if name in self._items:
            raise ValueError(f"{self.kind} '{name}' is registered twice")
        if not _SAFE_NAME.match(name):  # names become file and folder names in run folders
            raise ValueError(f"{self.kind} name {name!r} must be letters, digits, '.', '_' or '-' (no path)")
        self._items[name] = item
        return item

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""
        return lambda item: self.add(name, item)

    def __getitem__(self, name: str) -> T:
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise UnknownNameError(self.unknown_message(name)) from None

    def unknown_message(self, name: object) -> str:
        known = list(self._items)
        text = str(name)
        close = difflib.get_close_matches(text, known, n=3, cutoff=0.6)
        close = list(dict.fromkeys([*close, *(k for k in known if text and text.lower() in k.lower())]))[:3]
        guess = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
        return f"{self.kind} {str(name)!r} is unknown{guess}; known: {', '.join(known)} — {self.hint}"

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._items)})"
