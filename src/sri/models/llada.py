"""LLaDA (GSAI-ML/LLaDA-8B-Instruct, LLaDA-1.5): masked diffusion LM with a Llama-style bidirectional encoder.

Conventions (LLaDA's ``generate.py`` and ``modeling_llada.py``):

- loaded with ``AutoModel`` + ``trust_remote_code``; ``config.model_type == "llada"``, architecture
  ``LLaDAModelLM``; modules ``model.transformer.{wte, blocks, ln_f}`` — φ is the ``ln_f`` output;
- mask token ``<|mdm_mask|>`` (id 126336 for the 8B models), declared as ``config.mask_token_id``;
- logits at position i predict token i (no shift);
- a 2-D attention mask only masks padded keys; rotary positions are always 0…L−1 (no ``position_ids``);
- the instruct model fills the unused tail with ``<|endoftext|>`` and ends its turn with ``<|eot_id|>``.

A bidirectional ``LlamaForCausalLM`` whose config says ``"sri_family": "llada"`` follows the same conventions
with the Llama layout (the offline test models do this).
"""

from __future__ import annotations

from .adapter import Family
from .masked import DiffusionFamily

LLADA = DiffusionFamily(
    name="llada",
    layout=Family("llada", "masked-diffusion", embed="model.transformer.wte", blocks="model.transformer.blocks",
                  final_norm="model.transformer.ln_f", mask_token_id=126336, logit_shift=False),
    logit_shift=False,
    model_types=("llada",),
    architectures=("LLaDAModelLM",),
    mask_tokens=("<|mdm_mask|>",),
    mask_id_from=("config", "tokens", "tokenizer"),
    attention_mask="2d",
    stop_tokens=("<|eot_id|>", "<|endoftext|>"),
)
