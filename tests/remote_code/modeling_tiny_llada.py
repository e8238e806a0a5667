"""A tiny masked diffusion LM in LLaDA's module layout, written for offline tests of the remote-code path.

Like LLaDA-8B: ``model.transformer.{wte, blocks, ln_f, ff_out}``; Llama-style blocks (RMSNorm, rotary positions
``0…L−1`` regardless of padding, SwiGLU MLP); attention is bidirectional, and a 2-D ``attention_mask`` only masks
padded *keys*; logits at position i predict token i (no shift); ``hidden_states`` holds every block's input
followed by the ``ln_f`` output.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_tiny_llada import TinyLLaDAConfig


class LLaDARMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return (h * self.weight.float()).to(x.dtype)


def rotate(x: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary embedding of ``x`` [B, H, L, d] at positions 0…L−1 (rotate-half convention)."""
    d, length = x.shape[-1], x.shape[-2]
    inv_freq = 1.0 / theta ** (torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d)
    angles = torch.outer(torch.arange(length, device=x.device, dtype=torch.float32), inv_freq)
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
    half1, half2 = x.float().chunk(2, dim=-1)
    rotated = torch.cat([-half2, half1], dim=-1)
    return (x.float() * cos + rotated * sin).to(x.dtype)


class LLaDABlock(nn.Module):
    def __init__(self, config: TinyLLaDAConfig) -> None:
        super().__init__()
        d, f = config.d_model, config.mlp_hidden_size
        self.n_heads, self.theta = config.n_heads, config.rope_theta
        self.attn_norm = LLaDARMSNorm(d, config.rms_norm_eps)
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(d, d, bias=False) for _ in range(3))
        self.attn_out = nn.Linear(d, d, bias=False)
        self.ff_norm = LLaDARMSNorm(d, config.rms_norm_eps)
        self.ff_proj = nn.Linear(d, f, bias=False)
        self.up_proj = nn.Linear(d, f, bias=False)
        self.ff_out = nn.Linear(f, d, bias=False)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        B, L, D = x.shape
        h = self.attn_norm(x)
        q, k, v = (p(h).view(B, L, self.n_heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        q, k = rotate(q, self.theta), rotate(k, self.theta)
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, is_causal=False)
        x = x + self.attn_out(att.transpose(1, 2).reshape(B, L, D))
        h = self.ff_norm(x)
        return x + self.ff_out(F.silu(self.ff_proj(h)) * self.up_proj(h))


class TinyLLaDAModel(nn.Module):
    def __init__(self, config: TinyLLaDAConfig) -> None:
        super().__init__()
        self.transformer = nn.ModuleDict({
            "wte": nn.Embedding(config.vocab_size, config.d_model),
            "blocks": nn.ModuleList(LLaDABlock(config) for _ in range(config.n_layers)),
            "ln_f": LLaDARMSNorm(config.d_model, config.rms_norm_eps),
            "ff_out": nn.Linear(config.d_model, config.vocab_size, bias=False),
        })

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                output_hidden_states: bool = False) -> CausalLMOutputWithPast:
        t = self.transformer
        x = t.wte(input_ids)
        bias = None
        if attention_mask is not None and bool((attention_mask == 0).any()):
            keep = attention_mask.bool()[:, None, None, :]  # [B, 1, 1, L]: padded keys are never attended
            bias = torch.zeros(keep.shape, dtype=x.dtype, device=x.device).masked_fill(~keep, torch.finfo(x.dtype).min)
        hidden = []
        for block in t.blocks:
            hidden.append(x)
            x = block(x, bias)
        x = t.ln_f(x)
        hidden.append(x)
        return CausalLMOutputWithPast(logits=t.ff_out(x), hidden_states=tuple(hidden) if output_hidden_states else None)


class TinyLLaDAModelLM(PreTrainedModel):
    config_class = TinyLLaDAConfig
    base_model_prefix = "model"
    _no_split_modules = ("LLaDABlock",)

    def __init__(self, config: TinyLLaDAConfig) -> None:
        super().__init__(config)
        self.model = TinyLLaDAModel(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.transformer.wte

    def get_output_embeddings(self) -> nn.Module:
        return self.model.transformer.ff_out

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                output_hidden_states: bool | None = None, **kwargs) -> CausalLMOutputWithPast:
        if kwargs.get("use_cache") or kwargs.get("past_key_values") is not None:
            raise ValueError("this masked diffusion LM has no KV cache")
        return self.model(input_ids, attention_mask, bool(output_hidden_states))
