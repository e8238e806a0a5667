"""The offline jailbreak suite: one module per attack family, all registered by name in :data:`ATTACKS`.

``run_attack("flip", records, AttackContext(seed=0), mode="words")`` → jailbreak records that keep the
behaviour (``meta``: ``behavior_id``, ``behavior``, ``attack``). ``sri attack --list`` shows them all.
"""

from . import dija, flip, pair, random_search, templates  # noqa: F401  (register the attacks)
from .registry import ATTACKS, AttackContext, AttackSpec, attack_record, get_attack, register_attack, run_attack

__all__ = ["ATTACKS", "AttackContext", "AttackSpec", "attack_record", "get_attack", "register_attack", "run_attack"]
