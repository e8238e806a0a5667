"""Baseline jailbreak defenses with one interface (:class:`Defense`): perplexity filter, Self-Examine, an LLM
guard (LlamaGuard stand-in) and SmoothLLM. SRI Guard is in :mod:`sri.guard`."""

from ..registry import Registry
from .base import Defense, DefenseResult, answer_probability
from .llm_guard import LLMGuard
from .perplexity import PerplexityFilter
from .self_examine import SelfExamine
from .smoothllm import SmoothLLM, swap_perturb
from .sri_guard import SRIGuardDefense

DEFENSES: Registry[type[Defense]] = Registry("defense")
for _d in (PerplexityFilter, SelfExamine, LLMGuard, SmoothLLM):
    DEFENSES.add(_d.name, _d)

__all__ = ["DEFENSES", "Defense", "DefenseResult", "LLMGuard", "PerplexityFilter", "SRIGuardDefense", "SelfExamine",
           "SmoothLLM", "answer_probability", "swap_perturb"]
