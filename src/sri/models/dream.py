"""Dream (Dream-org/Dream-v0-Instruct-7B): masked diffusion LM initialised from Qwen2.5, hence *shifted* logits.

Conventions (Dream's ``modeling_dream.py`` and ``generation_utils.py``):

- loaded with ``AutoModel`` + ``trust_remote_code``; ``config.model_type == "Dream"``, architecture
  ``DreamModel``; modules ``model.{embed_tokens, layers, norm}`` — φ is the ``model.norm`` output;
- mask token ``<|mask|>`` (id 151666), read from the tokenizer first;
- logits at position i−1 predict token i (``logit_shift``), the AR-initialisation convention;
- its attention takes the mask as given, so padded batches get a boolean ``[B, 1, S, S]`` mask, and
  ``position_ids`` skip the left padding (Dream's own batched generation does both);
- the tail is filled with ``<|endoftext|>``; ``<|im_end|>`` ends the assistant turn;
- sampled with Dream's own timestep schedule (``_sample`` in ``generation_utils.py``): the diffusion sampler's
  default schedule for this family is ``dream-native``.

A bidirectional ``Qwen2ForCausalLM`` whose config says ``"sri_family": "dream"`` follows the same conventions
(the offline test models do this).
"""

from __future__ import annotations

from .adapter import Family
from .masked import DiffusionFamily

DREAM = DiffusionFamily(
    name="dream",
    layout=Family("dream", "masked-diffusion", embed="model.embed_tokens", blocks="model.layers",
                  final_norm="model.norm", mask_token_id=151666, logit_shift=True),
    logit_shift=True,
    model_types=("dream",),
    architectures=("DreamModel",),
    mask_tokens=("<|mask|>",),
    mask_id_from=("tokenizer", "generation_config", "config", "tokens"),
    attention_mask="4d",
    stop_tokens=("<|im_end|>", "<|endoftext|>"),
    schedule="dream-native",
)
