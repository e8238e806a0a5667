"""Numeric bounds shared by every entry point (CLI options and run configs).

Python integers have no size, but the libraries they reach do: numpy seeds are 32-bit, torch thread counts and
generator seeds are C integers, so ``--seed 2**70`` would fail deep inside a run. Each bound is checked where the
value enters (one-line error, nothing written).
"""

#: the largest seed: numpy's ``RandomState`` takes 32-bit seeds (torch takes 64-bit, so this covers both)
MAX_SEED = 2**32 - 1
#: the most torch CPU threads a process may ask for (far above any machine; beyond it the C int overflows)
MAX_THREADS = 4096
#: the longest rendered prompt (tokens) sri traces unless asked for more (`--max-prompt-tokens`, a run's
#: ``max_prompt_tokens``): a guard against a wrong file, not a model limit (the model's context is checked too)
DEFAULT_MAX_PROMPT_TOKENS = 4096
