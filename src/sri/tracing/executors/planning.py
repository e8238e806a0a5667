"""The tracing process's model when batches run elsewhere: tokenizer, config and identity, no weights.

For an autoregressive model the module tree is built on PyTorch's ``meta`` device (no memory, nothing read but
``config.json``, the tokenizer and the generation config), so a 70B model plans on a laptop. Every worker loads the
real model and checks that it describes itself exactly as this planning adapter did (fingerprint, layers, stop
ids, dtype, device), so a run folder cannot mix models. A masked-diffusion model (whose conventions need the
loaded model) is loaded on this machine's CPU instead.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ...errors import SriError

if TYPE_CHECKING:
    from ...models import ModelAdapter
    from . import Execution, ModelSpec


def worker_device(spec: ModelSpec, execution: Execution) -> tuple[str, str]:
    """``(device, dtype)`` the workers load with: ``auto`` means cuda/bf16 when a worker has a GPU, else cpu/fp32."""
    device = spec.device
    if device == "auto":
        device = "cuda" if execution.gpus_per_worker > 0 else "cpu"
    elif device.startswith("cuda") and execution.gpus_per_worker <= 0:
        raise SriError(f"--device {device} on the ray backend needs --gpus-per-worker > 0")
    dtype = spec.dtype
    if dtype == "auto":
        dtype = "bf16" if device.startswith("cuda") else "fp32"
    return device, dtype


def planning_adapter(spec: ModelSpec, execution: Execution) -> ModelAdapter:
    device, dtype = worker_device(spec, execution)
    adapter = spec.load(device="cpu", dtype=dtype) if spec.diffusion else _meta_causal(spec, dtype)
    return on_device(adapter, torch.device(device))


def on_device(adapter: ModelAdapter, device: torch.device) -> ModelAdapter:
    """``adapter`` reporting ``device`` (where the workers run it) instead of where its tensors are."""
    cls = type(adapter)
    planned = type(f"Planned{cls.__name__}", (cls,), {"device": property(lambda self: self._planned_device)})
    adapter.__class__ = planned
    adapter._planned_device = device  # type: ignore[attr-defined]
    return adapter


def _meta_causal(spec: ModelSpec, dtype: str) -> ModelAdapter:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from ...models import ModelAdapter, pick_dtype, resolve_model_source, resolve_stop_ids
    from ...models.adapter import folder_fingerprint
    from ...models.causal import CAUSAL_FAMILIES, detect_family

    trust = bool(spec.options.get("trust_remote_code", False))
    source, is_local = resolve_model_source(spec.name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust)
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SriError(f"could not read the tokenizer/config of '{spec.name}' ({first[:160]}); "
                       "check the id/path") from None
    torch_dtype = pick_dtype(dtype, torch.device("cpu"))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype, trust_remote_code=trust)
    # no generation_config.json: from_config derived it from the config, as from_pretrained does
    with contextlib.suppress(OSError, ValueError):
        model.generation_config = GenerationConfig.from_pretrained(source)
    model.eval()
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    family = detect_family(model, CAUSAL_FAMILIES)
    if family is None:
        raise SriError(f"'{spec.name}' ({type(model).__name__}) has no known layer layout; add a Family for it "
                       "in sri/models/causal.py")
    fingerprint = folder_fingerprint(Path(source)) if is_local else \
        f"hub:{spec.name}@{getattr(config, '_commit_hash', None) or 'unknown'}"
    stop = resolve_stop_ids(spec.name, source, is_local, tokenizer, model, (),
                            spec.options.get("stop_tokens", ()))
    return ModelAdapter(model=model, tokenizer=tokenizer, family=family, name=spec.name, fingerprint=fingerprint,
                        system_prompt=spec.system_prompt, extra_stop_ids=stop)
