"""Masked diffusion LMs: how a family is recognised and driven, the adapter the diffusion sampler talks to, and
the generic family (any masked LM, given its mask token id and whether its logits are shifted).

A :class:`DiffusionFamily` holds the *conventions* of a family: the layout of the authors' checkpoint, the mask
token and where to find its id, whether logits at position i−1 predict token i (``logit_shift``, AR-initialised
models such as Dream), which attention-mask form the authors' modelling code expects, and end-of-turn tokens.
The families themselves live one per file (``llada.py``, ``dream.py``, and :data:`GENERIC` here);
:func:`sri.models.load_diffusion_model` picks one and turns it into a :class:`DiffusionAdapter`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .adapter import Family, ModelAdapter, left_padded_positions
from .causal import CAUSAL_FAMILIES, detect_family

#: where a mask token id may be declared, in the order a family looks
MASK_ID_SOURCES = ("config", "generation_config", "tokenizer", "tokens")


@dataclass(frozen=True)
class DiffusionFamily:
    """Conventions of a masked-diffusion family.

    ``layout`` gives the attribute paths on the authors' checkpoint; a model of the family built on a standard
    transformers architecture (e.g. a bidirectional ``LlamaForCausalLM``) uses that architecture's layout
    instead. ``mask_id_from`` orders the places the mask id is looked up: ``config`` (``config.mask_token_id``),
    ``generation_config``, ``tokenizer`` (``tokenizer.mask_token_id``) and ``tokens`` (the ids of
    ``mask_tokens`` in the vocabulary). ``attention_mask`` is ``"2d"`` (a ``[B, S]`` padding mask) or ``"4d"``
    (a boolean ``[B, 1, S, S]`` mask, for remote code that hands the mask straight to attention).
    ``schedule`` is the diffusion sampler's default schedule for the family (``"llada"`` or ``"dream-native"``,
    see :class:`sri.sampling.diffusion.DiffusionConfig`).
    """

    name: str
    layout: Family
    logit_shift: bool
    model_types: tuple[str, ...] = ()
    architectures: tuple[str, ...] = ()
    mask_tokens: tuple[str, ...] = ()
    mask_id_from: tuple[str, ...] = ("config", "tokenizer", "tokens")
    attention_mask: str = "2d"
    stop_tokens: tuple[str, ...] = ()
    schedule: str = "llada"

    def matches(self, config: Any) -> bool:
        """True if ``config`` declares this family (model_type or architecture, case-insensitive)."""
        model_type = str(getattr(config, "model_type", "") or "").lower()
        archs = {a.lower() for a in getattr(config, "architectures", None) or []}
        return model_type in {t.lower() for t in self.model_types} or bool(archs & {a.lower()
                                                                                   for a in self.architectures})


GENERIC = DiffusionFamily(
    name="masked",
    layout=Family("masked", "masked-diffusion", embed="model.embed_tokens", blocks="model.layers",
                  final_norm="model.norm"),
    logit_shift=False,
    mask_tokens=("<|mask|>", "[MASK]", "<mask>"),
    mask_id_from=("tokenizer", "config", "generation_config", "tokens"),
)


def find_mask_id(family: DiffusionFamily, model: nn.Module, tokenizer: Any) -> tuple[int | None, str]:
    """The first mask token id the family's sources declare, and which source it came from."""
    for source in family.mask_id_from:
        if source == "config":
            value = getattr(model.config, "mask_token_id", None)
        elif source == "generation_config":
            value = getattr(getattr(model, "generation_config", None), "mask_token_id", None)
        elif source == "tokenizer":
            value = getattr(tokenizer, "mask_token_id", None)
        elif source == "tokens":
            vocab = tokenizer.get_vocab()
            value = next((vocab[t] for t in family.mask_tokens if t in vocab), None)
        else:
            raise ValueError(f"unknown mask id source {source!r}; use one of {MASK_ID_SOURCES}")
        if isinstance(value, int):
            return value, source
    return None, ""


def make_bidirectional(model: nn.Module) -> int:
    """Let every position attend to every other one; returns how many attention modules were switched.

    transformers builds a bidirectional mask when ``config.is_causal`` is False, but its SDPA/flash attention also
    read each attention module's own ``is_causal`` flag when no mask is needed — so both are cleared. Remote code
    of LLaDA and Dream is bidirectional already; clearing the flags there changes nothing.
    """
    model.config.is_causal = False
    switched = 0
    for module in model.modules():
        if isinstance(getattr(module, "is_causal", None), bool) and module is not model:
            module.is_causal = False
            switched += 1
    return switched


def detect_layout(model: nn.Module, family: DiffusionFamily) -> Family | None:
    """The family's own layout if its paths resolve on ``model``, else the first standard layout that does."""
    return detect_family(model, (family.layout, *CAUSAL_FAMILIES))


@dataclass
class DiffusionAdapter(ModelAdapter):
    """A :class:`ModelAdapter` for a masked diffusion LM: adds the mask id, the logit shift and the forward call.

    ``family.mask_token_id`` and ``family.logit_shift`` are the settings in force (family defaults or the user's
    overrides). ``position_ids``: the model's ``forward`` takes them, so left-padded rows get positions that
    skip their padding (LLaDA's own code has no such argument: padding shifts all its positions by the same
    amount, which rotary attention — it only sees distances — does not notice). ``forward_kwargs`` go into every
    call (``use_cache=False`` where the model accepts it).
    """

    conventions: DiffusionFamily = GENERIC
    position_ids: bool = True
    four_d_mask: bool = False
    forward_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def mask_token_id(self) -> int:
        return int(self.family.mask_token_id)  # type: ignore[arg-type]

    @property
    def logit_shift(self) -> bool:
        return self.family.logit_shift

    @property
    def default_schedule(self) -> str:
        """The diffusion schedule a sampler uses on this model unless told otherwise (the family's own)."""
        return self.conventions.schedule

    def conventions_record(self) -> dict[str, Any]:
        """What a trace must record about how this model was driven."""
        return {"family": self.family.name, "mask_token_id": self.mask_token_id, "logit_shift": self.logit_shift,
                "attention": "bidirectional", "position_ids": self.position_ids,
                "attention_mask": "4d" if self.four_d_mask else "2d"}

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Raw logits ``[B, S, V]`` of one full bidirectional forward (no cache), in the model's dtype.

        With ``logit_shift`` the prediction for token i sits at position i−1; callers align it.
        """
        kwargs: dict[str, Any] = {}
        padded = bool((attention_mask == 0).any())
        if self.position_ids:
            kwargs["position_ids"] = left_padded_positions(attention_mask)
        if self.four_d_mask:
            # keys-only boolean mask [B, 1, S, S]: no query row is fully masked, so no NaN on any kernel
            if padded:
                keep = attention_mask.bool()[:, None, None, :]
                kwargs["attention_mask"] = keep.expand(-1, 1, attention_mask.shape[1], -1)
        else:
            kwargs["attention_mask"] = attention_mask
        out = self.model(input_ids=input_ids, **self.forward_kwargs, **kwargs)
        return out.logits if hasattr(out, "logits") else out[0]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), **self.conventions_record()}


def accepts_argument(model: nn.Module, name: str) -> bool:
    """True if ``model.forward`` names ``name`` as a parameter (``**kwargs`` alone does not count)."""
    return name in inspect.signature(model.forward).parameters
