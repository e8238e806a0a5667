"""LLaDA's supervised fine-tuning objective for a masked-diffusion LM.

For a prompt p and a response r of G slots (the answer, its end-of-turn token, then EOS padding — the padding is
learnt too, so the model fills an unused tail with EOS at sampling time):

    t ~ U(ε, 1) per sequence,  m_i ~ Bernoulli(t) for every response slot i (prompt tokens never masked),
    x = [p | r with the masked slots replaced by the mask token],
    L = (1 / G) Σ_i m_i · (−log p_θ(r_i | x)) / t

which upper-bounds the negative log-likelihood of r given p (LLaDA, Nie et al. 2025, eq. 5). With a shifted
model (Dream's convention) p_θ(r_i | x) is read from the logits at position i−1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..models.masked import DiffusionAdapter

#: smallest masking ratio; LLaDA uses 1e-3
EPS = 1e-3


@dataclass
class Batch:
    """Left-padded prompts ``prompt_ids``/``prompt_mask`` ``[B, P]`` and responses ``target`` ``[B, G]``."""

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    target: torch.Tensor

    def to(self, device: torch.device) -> Batch:
        return Batch(self.prompt_ids.to(device), self.prompt_mask.to(device), self.target.to(device))


def sample_masks(target: torch.Tensor, generator: torch.Generator, eps: float = EPS
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence ratios ``t [B, 1]`` ~ U(ε, 1) and masks ``[B, G]`` with P(masked) = t, drawn from ``generator``."""
    B = target.shape[0]
    t = torch.rand(B, 1, generator=generator) * (1 - eps) + eps
    masked = torch.rand(target.shape, generator=generator) < t
    return t.to(target.device), masked.to(target.device)


def response_logits(adapter: DiffusionAdapter, batch: Batch, masked: torch.Tensor) -> torch.Tensor:
    """Logits ``[B, G, V]`` predicting each response slot from ``[prompt | masked response]``."""
    x = torch.cat([batch.prompt_ids, torch.where(masked, adapter.mask_token_id, batch.target)], dim=1)
    attn = torch.cat([batch.prompt_mask, torch.ones_like(batch.target)], dim=1)
    P, G = batch.prompt_ids.shape[1], batch.target.shape[1]
    cols = torch.arange(P, P + G, device=x.device) - int(adapter.logit_shift)  # Dream: token i from position i−1
    return adapter.logits(x, attn)[:, cols]


def masked_token_nll(adapter: DiffusionAdapter, batch: Batch, masked: torch.Tensor) -> torch.Tensor:
    """−log p_θ(r_i | x) at every response slot ``[B, G]`` (zero where not masked)."""
    logits = response_logits(adapter, batch, masked)
    nll = F.cross_entropy(logits.float().transpose(1, 2), batch.target, reduction="none")
    return nll * masked


def diffusion_loss(adapter: DiffusionAdapter, batch: Batch, t: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """The SFT loss above, averaged over the batch: mean_b (1/G) Σ_i m_bi · nll_bi / t_b."""
    nll = masked_token_nll(adapter, batch, masked)
    return (nll.sum(1, keepdim=True) / t).mean() / batch.target.shape[1]
