"""Model loading: an offline short name, a local Hugging Face folder or a Hub id → :class:`ModelAdapter`."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..assets import MODELS, model_asset
from ..errors import SriError
from .adapter import DEFAULT_SYSTEM_PROMPT, Family, ModelAdapter, folder_fingerprint
from .causal import CAUSAL_FAMILIES, detect_family

__all__ = ["DEFAULT_SYSTEM_PROMPT", "Family", "ModelAdapter", "load_model", "resolve_model_source"]

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
           "fp16": torch.float16, "float16": torch.float16}


def resolve_model_source(spec: str) -> tuple[str, bool]:
    """``(path or hub id, is_local)`` for a short name, a folder or a Hub id; one-line errors otherwise."""
    if spec in MODELS:
        asset = model_asset(spec)
        if not asset.is_fetched():
            raise SriError(f"model '{spec}' is not fetched; run `sri assets fetch --model {spec}`")
        return str(asset.path), True
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SriError(f"{path} has no config.json; point --model at a Hugging Face model folder")
        return str(path), True
    if _HUB_ID.match(spec) and not spec.startswith((".", "/")):
        return spec, False
    raise SriError(f"model '{spec}' is unknown; use an offline short name ({', '.join(MODELS)}), "
                   "a local Hugging Face folder or a Hub id such as Qwen/Qwen2.5-7B-Instruct")


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SriError(f"device '{device}' was asked for but CUDA is not available; use --device cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise SriError(f"device '{device}' is not understood; use auto, cpu or cuda[:N]") from None


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise SriError(f"dtype '{dtype}' is not understood; use auto, fp32, bf16 or fp16")
    return _DTYPES[dtype]


def load_model(
    spec: str,
    *,
    device: str = "auto",
    dtype: str = "auto",
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
    trust_remote_code: bool = False,
) -> ModelAdapter:
    """Load an autoregressive chat model for tracing. ``trust_remote_code`` only when the user asked for it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source, is_local = resolve_model_source(spec)
    dev = pick_device(device)
    torch_dtype = pick_dtype(dtype, dev)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype,
                                                     trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        where = "folder" if is_local else "Hugging Face Hub id"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SriError(f"could not load {where} '{spec}' ({first[:160]}); check the id/path and, for Hub ids, "
                       "the network — offline, use a short name from `sri assets list`") from None
    model.to(dev).eval()
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    family = detect_family(model, CAUSAL_FAMILIES)
    if family is None:
        raise SriError(f"'{spec}' ({type(model).__name__}) has no known layer layout; add a Family for it "
                       "in sri/models/causal.py")
    fingerprint = folder_fingerprint(Path(source)) if is_local else \
        f"hub:{spec}@{getattr(model.config, '_commit_hash', None) or 'unknown'}"
    return ModelAdapter(model=model, tokenizer=tokenizer, family=family, name=spec, fingerprint=fingerprint,
                        system_prompt=system_prompt)
