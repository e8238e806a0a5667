"""Tiny randomly initialised models of real architectures, saved as normal local Hugging Face folders.

Used by the unit tests and benchmarks so that they exercise the same loading path as a real checkpoint
without any download. The tokenizer is byte-level BPE with no merges (one token per byte) plus chat special
tokens, a mask token and a ChatML template, so text round-trips exactly.

Masked diffusion models come in three kinds: LLaDA-like (a bidirectional Llama, mask id in the config, logits not
shifted) and Dream-like (a bidirectional Qwen2, mask id from the tokenizer, logits shifted), both standard
transformers architectures whose config names their ``sri_family``; and a LLaDA-layout model that ships its own
modelling code (``auto_map``), which only loads with ``trust_remote_code`` — as real LLaDA / Dream checkpoints do.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|mask|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer(chat_template: bool = True, mask_token: bool = True):
    """A byte-level tokenizer: 256 byte tokens, then the special tokens (ids 256…); ``mask_token=False`` leaves
    out ``<|mask|>`` (a tokenizer with no mask token at all)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    extra = ["<|im_start|>", "<|mask|>"] if mask_token else ["<|im_start|>"]
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  additional_special_tokens=extra)
    tok.add_special_tokens({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                            "additional_special_tokens": extra})
    if mask_token:
        tok.mask_token = "<|mask|>"
    if chat_template:
        tok.chat_template = CHAT_TEMPLATE
    return tok


def build_tiny_causal_lm(folder: str | Path, arch: str = "llama", *, layers: int = 2, hidden: int = 64,
                         heads: int = 4, kv_heads: int = 2, seed: int = 0, chat_template: bool = True,
                         mask_token: bool = True) -> Path:
    """Save a random ``LlamaForCausalLM`` or ``Qwen2ForCausalLM`` with the byte tokenizer into ``folder``."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    tok = build_tokenizer(chat_template, mask_token)
    common = dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                  num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=2048,
                  pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None,
                  tie_word_embeddings=False)
    classes = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}
    config_cls, model_cls = classes[arch]
    return _save_random(model_cls, config_cls(**common), tok, folder, seed)


def _save_random(model_cls, config, tok, folder: str | Path, seed: int) -> Path:
    """A model of ``model_cls`` with seeded random weights, EOS/pad set in its generation config, saved with
    ``tok`` into ``folder``."""
    torch.manual_seed(seed)
    model = model_cls(config)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    folder = Path(folder)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def build_tiny_masked_lm(folder: str | Path, family: str = "llada", *, layers: int = 2, hidden: int = 64,
                         heads: int = 4, kv_heads: int = 2, seed: int = 0, init_std: float = 0.02) -> Path:
    """Save a random bidirectional masked diffusion LM of a standard architecture into ``folder``.

    ``family="llada"``: ``LlamaForCausalLM``, ``config.mask_token_id`` set, logits not shifted;
    ``family="dream"``: ``Qwen2ForCausalLM``, mask id only in the tokenizer, logits shifted (the family's
    convention). Both carry ``is_causal: false`` and ``sri_family`` in config.json.
    """
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    classes = {"llada": (LlamaConfig, LlamaForCausalLM), "dream": (Qwen2Config, Qwen2ForCausalLM)}
    if family not in classes:
        raise ValueError(f"family must be one of {sorted(classes)}")
    tok = build_tokenizer()
    config_cls, model_cls = classes[family]
    extra = {"mask_token_id": tok.mask_token_id} if family == "llada" else {}
    config = config_cls(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2,
                        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                        max_position_embeddings=2048, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                        bos_token_id=None, tie_word_embeddings=False, initializer_range=init_std, is_causal=False,
                        sri_family=family, **extra)
    return _save_random(model_cls, config, tok, folder, seed)


REMOTE_CODE_FILES = ("configuration_tiny_llada.py", "modeling_tiny_llada.py")


def build_tiny_remote_llada(folder: str | Path, *, layers: int = 2, hidden: int = 64, heads: int = 4,
                            seed: int = 0, init_std: float = 0.02) -> Path:
    """Save a random LLaDA-layout model that ships its modelling code (``auto_map`` → ``AutoModel``).

    config.json says ``model_type: "llada"`` and ``mask_token_id``, like LLaDA-8B-Instruct; loading the folder
    runs the copied ``modeling_tiny_llada.py``, so it needs ``trust_remote_code``.
    """
    from .remote_code.configuration_tiny_llada import TinyLLaDAConfig
    from .remote_code.modeling_tiny_llada import TinyLLaDAModelLM

    tok = build_tokenizer()
    config = TinyLLaDAConfig(vocab_size=len(tok), d_model=hidden, n_layers=layers, n_heads=heads,
                             mlp_hidden_size=hidden * 2, initializer_range=init_std, mask_token_id=tok.mask_token_id,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    config.auto_map = {"AutoConfig": "configuration_tiny_llada.TinyLLaDAConfig",
                       "AutoModel": "modeling_tiny_llada.TinyLLaDAModelLM"}
    torch.manual_seed(seed)
    model = TinyLLaDAModelLM(config)
    folder = Path(folder)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    for name in REMOTE_CODE_FILES:
        shutil.copyfile(Path(__file__).parent / "remote_code" / name, folder / name)
    saved = json.loads((folder / "config.json").read_text())
    if "auto_map" not in saved:
        raise RuntimeError(f"{folder}/config.json lost its auto_map")
    return folder


def train_tiny_masked_lm(folder: str | Path, examples: list[tuple[str, str]], *, gen_length: int = 32,
                         steps: int = 300, lr: float = 3e-3, seed: int = 0,
                         system_prompt: str | None = "You are a helpful assistant") -> Path:
    """Teach a tiny masked diffusion LM in ``folder`` to answer each ``(prompt, response)``, then save it back.

    LLaDA's SFT objective: the response (padded with EOS to ``gen_length``) is masked slot by slot with
    probability t ~ U(ε, 1); loss = Σ_masked −log p(token) / t, averaged over slots. Prompts are rendered exactly
    as the tracer renders them, so the model answers them under sampling. For offline end-to-end tests and demos.
    """
    from sri.models import load_diffusion_model

    torch.manual_seed(seed)
    adapter = load_diffusion_model(str(folder), device="cpu", dtype="fp32", system_prompt=system_prompt)
    tok, model = adapter.tokenizer, adapter.model
    ids, attn = adapter.encode([adapter.render(p) for p, _ in examples])
    eos = adapter.eos_token_ids[0]
    target = torch.full((len(examples), gen_length), eos, dtype=torch.long)
    for i, (_, response) in enumerate(examples):
        r = tok(response, add_special_tokens=False)["input_ids"]
        if len(r) >= gen_length:
            raise ValueError(f"response {i} has {len(r)} tokens; gen_length {gen_length} leaves no room for EOS")
        target[i, : len(r)] = torch.tensor(r)
    full_attn = torch.cat([attn, torch.ones_like(target)], dim=1)
    P = ids.shape[1]
    cols = torch.arange(P, P + gen_length) - int(adapter.logit_shift)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        t = torch.rand(len(examples), 1) * (1 - 1e-3) + 1e-3
        masked = torch.rand(target.shape) < t
        x = torch.cat([ids, torch.where(masked, adapter.mask_token_id, target)], dim=1)
        logits = adapter.logits(x, full_attn)[:, cols]
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none")
        loss = (nll * masked / t).sum() / target.numel()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    model.save_pretrained(Path(folder))
    return Path(folder)
