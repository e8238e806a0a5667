"""Turn an autoregressive chat model into a masked-diffusion LM skeleton (Dream's recipe at small scale).

Three changes, no new parameters:

1. **mask token** — an existing special token the chat never uses (:func:`pick_mask_token`) becomes the mask:
   declared as the tokenizer's ``mask_token`` and as ``config.mask_token_id``;
2. **bidirectional attention** — ``config.is_causal = False`` and every attention module's flag cleared
   (:func:`sri.models.masked.make_bidirectional`);
3. **shifted logits** — the AR head is kept as is: the logits at position i−1 predict token i, Dream's convention
   for AR-initialised models, so ``config.sri_family = "dream"`` tells :func:`sri.models.load_diffusion_model`
   how to drive it.

The result is only a starting point: it has never seen a mask, so it must be trained with the masked-diffusion
objective (:mod:`sri.dlm.objective`) before it denoises anything.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import SriError
from ..io import honour_umask
from ..models.masked import make_bidirectional

#: tokens tried first, in order, when the tokenizer declares no mask token
PREFERRED_MASK_TOKENS = ("<|mask|>", "<mask>", "[MASK]", "<|mdm_mask|>")
DIFFUSION_FAMILY = "dream"


@dataclass(frozen=True)
class Conversion:
    """What :func:`convert_to_diffusion` changed."""

    mask_token: str
    mask_token_id: int
    family: str
    attention_modules_switched: int
    logit_shift: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def pick_mask_token(tokenizer: Any, requested: str | None = None) -> tuple[str, int]:
    """``(token, id)`` of the mask: ``requested`` if given (it must be a special token that no rendered chat holds),
    else the tokenizer's own mask token, else a known mask
    name, else the **last** added special token that is not BOS/EOS/PAD/UNK and does not occur in a rendered
    chat (for SmolLM2: ``<empty_output>``, a code-data marker no chat turn contains)."""
    vocab = tokenizer.get_vocab()
    if requested is not None:
        if requested not in vocab:
            raise SriError(f"mask token {requested!r} is not in the tokenizer's vocabulary; pick an existing "
                           "special token (see tokenizer.json 'added_tokens')")
        special = {str(t.content) for t in tokenizer.added_tokens_decoder.values() if t.special}
        if requested not in special:
            raise SriError(f"mask token {requested!r} is an ordinary vocabulary token, so prompt text containing it "
                           "would be read as a mask; pick a special token (tokenizer.json 'added_tokens' with "
                           "special: true) or leave --mask-token out to pick an unused one")
        if requested in _rendered_chat(tokenizer):
            raise SriError(f"mask token {requested!r} is part of the chat template, so every rendered prompt would "
                           "hold a mask; pick a special token chats never contain, or leave --mask-token out")
        return requested, int(vocab[requested])
    if getattr(tokenizer, "mask_token", None) and tokenizer.mask_token_id is not None:
        return str(tokenizer.mask_token), int(tokenizer.mask_token_id)
    for name in PREFERRED_MASK_TOKENS:
        if name in vocab:
            return name, int(vocab[name])
    reserved = {tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token, tokenizer.unk_token}
    chat = _rendered_chat(tokenizer)
    added = sorted(tokenizer.added_tokens_decoder.items())
    candidates = [(str(t.content), int(i)) for i, t in added
                  if t.special and t.content not in reserved and t.content not in chat]
    if not candidates:
        raise SriError("the tokenizer has no unused special token to serve as the mask; pass --mask-token with "
                       "one that chats never contain")
    return candidates[-1]


def _rendered_chat(tokenizer: Any) -> str:
    if not getattr(tokenizer, "chat_template", None):
        return ""
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                {"role": "assistant", "content": "a"}]
    try:
        return str(tokenizer.apply_chat_template(messages, tokenize=False))
    except Exception:  # templates without a system turn
        return str(tokenizer.apply_chat_template(messages[1:], tokenize=False))


def convert_to_diffusion(model: Any, tokenizer: Any, mask_token: str | None = None) -> Conversion:
    """Make ``model`` (an AR causal LM, changed in place) and ``tokenizer`` follow the masked-diffusion
    conventions above; returns what was set."""
    if not getattr(tokenizer, "chat_template", None):
        raise SriError("the base model has no chat template; `sri dlm build` adapts chat models — pick an "
                       "instruct checkpoint")
    token, token_id = pick_mask_token(tokenizer, mask_token)
    if token_id in {tokenizer.pad_token_id, tokenizer.eos_token_id}:
        raise SriError(f"mask token {token!r} is the pad/EOS token; pick another with --mask-token")
    tokenizer.mask_token = token
    model.config.mask_token_id = token_id
    model.config.sri_family = DIFFUSION_FAMILY
    switched = make_bidirectional(model)
    if switched == 0:
        raise SriError(f"{type(model).__name__} has no attention module with an is_causal flag, so its attention "
                       "cannot be made bidirectional here; use a Llama/Qwen2-style base model")
    return Conversion(token, token_id, DIFFUSION_FAMILY, switched)


def load_ar_for_conversion(spec: str) -> tuple[Any, Any, str]:
    """The base AR model (fp32, CPU) and tokenizer of a short name / folder / Hub id, and its resolved source."""
    import torch
    from transformers import AutoModelForCausalLM

    from ..models import prepare_tokenizer, resolve_model_source

    source, is_local = resolve_model_source(spec)
    tokenizer = prepare_tokenizer(spec, source, is_local)  # EOS/pad resolved, chat template checked
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    except (OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise SriError(f"could not load base model '{spec}' ({first[:160]}); give an offline short name or a "
                       "local Hugging Face folder of a causal chat LM") from None
    return model, tokenizer, source


def save_converted(model: Any, tokenizer: Any, folder: str | Path) -> Path:
    """Save a converted model as a normal Hugging Face folder (safetensors)."""
    folder = Path(folder)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    honour_umask(folder)
    return folder
