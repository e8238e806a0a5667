"""The attack registry: ``@register_attack("name", ...)`` on a function ``f(records, *, context, **options)``.

An attack turns harmful behaviours (prompt records) into jailbreak prompts, one output record per input, and
is deterministic given ``context.seed``. Every output record has ``label="jailbreak"``, id ``"<attack>:<id>"``
and keeps the behaviour in ``meta``: ``behavior_id``, ``behavior`` (the original request) and ``attack``.
"""

from __future__ import annotations

import inspect
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..data.prompts import PromptRecord
from ..errors import SriError
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

    def options(self) -> dict[str, Any]:
        """The attack's options and their defaults (keyword-only parameters after ``context``)."""
        params = inspect.signature(self.run).parameters
        return {n: p.default for n, p in params.items()
                if p.kind is inspect.Parameter.KEYWORD_ONLY and n != "context"}


ATTACKS: Registry[AttackSpec] = Registry("attack", "list them with `sri attack --list` or `sri ls`")


def register_attack(name: str, *, family: str, description: str, needs_target: bool = False,
                    reads_target: bool = False, model_kinds: tuple[str, ...] = ALL_KINDS,
                    runs_kinds: tuple[str, ...] = ALL_KINDS) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``fn(records, *, context, **options) → list[PromptRecord]`` under ``name``. ``needs_target``: it
    runs a model to build prompts; ``reads_target``: it reads the target's conventions (``context.target``);
    ``model_kinds``: the kinds of target it applies to; ``runs_kinds``: the kinds of model it can run."""
    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        ATTACKS.add(name, AttackSpec(name, fn, family, description, needs_target, reads_target, model_kinds,
                                     runs_kinds))
        return fn

    return decorate


def get_attack(name: str) -> AttackSpec:
    """The attack registered as ``name`` (unknown → a did-you-mean :class:`SriError`)."""
    return ATTACKS[name]


def run_attack(name: str, records: Sequence[PromptRecord], context: AttackContext | None = None,
               **options: Any) -> list[PromptRecord]:
    """Apply attack ``name`` to ``records`` with ``options`` (checked against the attack's signature)."""
    spec = get_attack(name)
    context = context or AttackContext()
    known = spec.options()
    for key in options:
        if key not in known:
            listed = ", ".join(known) or "none"
            raise SriError(f"attack '{name}' has no option '{key}'; its options are: {listed}")
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
