"""The attack registry: ``@register_attack("name", ...)`` on a function ``f(records, *, context, **options)``.

An attack turns harmful behaviours (prompt records) into jailbreak prompts, one output record per input, and
is deterministic given ``context.seed``. Every output record has ``label="jailbreak"``, id ``"<attack>:<id>"``
and keeps the behaviour in ``meta``: ``behavior_id``, ``behavior`` (the original request) and ``attack``.
"""

from __future__ import annotations

import inspect
import math
import typing
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..data.prompts import PromptRecord
from ..errors import SriError, clip
from ..registry import Registry

#: every model kind a trace can come from (sri.models.adapter.Family.kind)
ALL_KINDS = ("causal", "masked-diffusion")


@dataclass
class AttackContext:
    """What an attack may use besides its options.

    ``target``: the local model under attack (needed by optimising attacks and to read a mask token);
    ``attacker``: the chat model that writes prompts (PAIR; defaults to the target);
    ``judge``: a scorer ``f(requests, responses) → p(success)`` (PAIR; defaults to an LLM judge on the attacker).
    """

    seed: int = 0
    target: Any = None
    attacker: Any = None
    judge: Callable[[list[str], list[str]], Any] | None = None
    progress: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AttackSpec:
    name: str
    run: Callable[..., list[PromptRecord]]
    family: str
    description: str
    needs_target: bool = False  # runs the target model while building prompts
    reads_target: bool = False  # reads the target's tokenizer/conventions (e.g. DIJA: its mask token)
    model_kinds: tuple[str, ...] = ALL_KINDS  # model kinds the attack applies to
    runs_kinds: tuple[str, ...] = ALL_KINDS  # kinds of model the attack can run while building prompts
    #: the attack's own ranges: ``check(**options)`` (all options, defaults filled in) raises :class:`SriError`
    check: Callable[..., None] | None = None

    def option_types(self) -> dict[str, tuple[type, ...]]:
        """The accepted types of each option, from its annotation (``int``, ``float``, ``bool``, ``str``; ``None``
        where the annotation allows it), falling back to the type of its default."""
        try:
            hints = typing.get_type_hints(self.run)
        except Exception:  # an unresolvable annotation: use the defaults' types
            hints = {}
        out: dict[str, tuple[type, ...]] = {}
        for name, default in self.options().items():
            hint = hints.get(name)
            args = typing.get_args(hint) if hint is not None and typing.get_args(hint) else (hint,)
            kinds = tuple(a for a in args if isinstance(a, type))
            out[name] = kinds or (type(default),)
        return out

    def options(self) -> dict[str, Any]:
        """The attack's options and their defaults (keyword-only parameters after ``context``)."""
        params = inspect.signature(self.run).parameters
        return {n: p.default for n, p in params.items()
                if p.kind is inspect.Parameter.KEYWORD_ONLY and n != "context"}


ATTACKS: Registry[AttackSpec] = Registry("attack", "list them with `sri attack --list` or `sri ls`")


def register_attack(name: str, *, family: str, description: str, needs_target: bool = False,
                    reads_target: bool = False, model_kinds: tuple[str, ...] = ALL_KINDS,
                    runs_kinds: tuple[str, ...] = ALL_KINDS, check: Callable[..., None] | None = None
                    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``fn(records, *, context, **options) → list[PromptRecord]`` under ``name``. ``needs_target``: it
    runs a model to build prompts; ``reads_target``: it reads the target's conventions (``context.target``);
    ``model_kinds``: the kinds of target it applies to; ``runs_kinds``: the kinds of model it can run;
    ``check(**options)``: the options' ranges, checked before any model loads."""
    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        ATTACKS.add(name, AttackSpec(name, fn, family, description, needs_target, reads_target, model_kinds,
                                     runs_kinds, check))
        return fn

    return decorate


def get_attack(name: str) -> AttackSpec:
    """The attack registered as ``name`` (unknown → a did-you-mean :class:`SriError`)."""
    return ATTACKS[name]


_TYPE_NAMES = {bool: "true or false", int: "a whole number", float: "a finite number", str: "text",
               type(None): "null"}


def _fits(value: Any, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind is type(None):
        return value is None
    return isinstance(value, kind)


def _example(default: Any) -> str:
    return "true" if default is True else "false" if default is False else "null" if default is None else str(default)


def check_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` of attack ``name`` after checking each key is known, each value has the type of the option
    (from its annotation or default: int, float, bool, str; finite; a whole number where an int is expected) and
    the attack's own ranges — all without loading a model. Ints given for float options become floats. One-line
    :class:`SriError` naming the option otherwise."""
    spec = get_attack(name)
    known = spec.options()
    types = spec.option_types()
    checked: dict[str, Any] = {}
    for key, value in options.items():
        if key not in known:
            listed = ", ".join(known) or "none"
            raise SriError(f"attack '{name}' has no option {clip(key)}; its options are: {listed}")
        kinds = types[key]
        if not any(_fits(value, k) for k in kinds):
            expected = " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)
            raise SriError(f"attack '{name}' option {key} is {clip(value)}, expected {expected} (default "
                           f"{_example(known[key])}); e.g. -o {key}={_example(known[key])}")
        checked[key] = float(value) if float in kinds and int not in kinds and isinstance(value, int) else value
    if spec.check is not None:
        spec.check(**{**known, **checked})
    return checked


def run_attack(name: str, records: Sequence[PromptRecord], context: AttackContext | None = None,
               **options: Any) -> list[PromptRecord]:
    """Apply attack ``name`` to ``records`` with ``options`` (checked: :func:`check_options`)."""
    spec = get_attack(name)
    context = context or AttackContext()
    options = check_options(name, options)
    if spec.needs_target and context.target is None:
        raise SriError(f"attack '{name}' runs the target model; give one (--model)")
    kind = getattr(getattr(context.target, "family", None), "kind", None) if spec.needs_target else None
    if kind is not None and kind not in spec.runs_kinds:
        raise SriError(f"attack '{name}' decodes with the model it runs, which must be {' or '.join(spec.runs_kinds)}"
                       f" (got a {kind} model); build the prompts on a causal model (e.g. the AR base of a diffusion "
                       "model: `attack_model` in a config) and let them transfer")
    if not records:
        return []
    return spec.run(list(records), context=context, **options)


def attack_record(record: PromptRecord, attack: str, prompt: str, **meta: Any) -> PromptRecord:
    """The jailbreak record for ``record`` under ``attack``: same source, behaviour kept in ``meta``."""
    return PromptRecord(id=f"{attack}:{record.id}", prompt=prompt, label="jailbreak", source=record.source,
                        meta={**record.meta, "behavior_id": record.id, "behavior": record.prompt, "attack": attack,
                              **meta})


def behaviour_seed(seed: int, record: PromptRecord) -> int:
    """A seed for one behaviour that depends only on ``seed`` and its id, not on batch order."""
    return (seed * 1_000_003 + zlib.crc32(record.id.encode())) % (2**32)
