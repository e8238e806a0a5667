"""Autoregressive Hugging Face causal LMs (Llama, Qwen2, Gemma, Mistral, SmolLM, GPT-2, Pythia, OPT …).

Each entry maps the canonical parts (embedding, block list, final norm) to attribute paths. Adding an
architecture is one more :class:`Family` line whose paths resolve on the loaded ``AutoModelForCausalLM``.
"""

from __future__ import annotations

from torch import nn

from .adapter import Family, get_attr_path

CAUSAL_FAMILIES: tuple[Family, ...] = (
    Family("decoder-only", "causal", embed="model.embed_tokens", blocks="model.layers", final_norm="model.norm"),
    Family("gpt2-style", "causal", embed="transformer.wte", blocks="transformer.h", final_norm="transformer.ln_f"),
    Family("neox-style", "causal", embed="gpt_neox.embed_in", blocks="gpt_neox.layers",
           final_norm="gpt_neox.final_layer_norm"),
    Family("opt-style", "causal", embed="model.decoder.embed_tokens", blocks="model.decoder.layers",
           final_norm="model.decoder.final_layer_norm"),
)


def detect_family(model: nn.Module, candidates: tuple[Family, ...] = CAUSAL_FAMILIES) -> Family | None:
    """The first family whose three attribute paths all exist on ``model``."""
    for fam in candidates:
        try:
            for path in (fam.embed, fam.blocks, fam.final_norm):
                get_attr_path(model, path)
        except AttributeError:
            continue
        return fam
    return None
