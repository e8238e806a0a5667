"""The model adapter: one object that knows a loaded model's layers, chat template, device and identity."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.prompts import DEFAULT_SYSTEM_PROMPT
from ..errors import SriError
from ..io import check_text


def parse_layers(spec: str | list[str] | list[int], n: int) -> list[int]:
    """Turn ``"final"``, ``"mid"``, ``"first"``, ``"0"``, ``"-1"``, ``"final,mid"`` into hidden-state indices of an
    ``n``-block model, in the order given, without repeats.

    Indices follow ``output_hidden_states``: 0 = embeddings, i = block i, n = final norm (= ``-1`` = ``final``).
    Raises :class:`SriError` (one line) for an unknown name, an index outside ``[-(n+1), n]`` or an empty spec.
    """
    items = spec.split(",") if isinstance(spec, str) else [str(s) for s in spec]
    named = {"final": n, "last": n, "mid": n // 2, "middle": n // 2, "first": 1, "embed": 0}
    out: list[int] = []
    for raw in (s.strip() for s in items):
        if raw in named:
            idx = named[raw]
        else:
            try:
                idx = int(raw)
            except ValueError:
                raise SriError(f"layer '{raw}' is not understood; use an index in [-{n + 1}, {n}] "
                               "or final / mid / first / embed") from None
            if not -(n + 1) <= idx <= n:
                raise SriError(f"layer {idx} is out of range for a {n}-layer model; "
                               f"use an index in [-{n + 1}, {n}]")
            idx %= n + 1
        if idx not in out:
            out.append(idx)
    if not out:
        raise SriError("no layer given; use e.g. --layers final")
    return out

@dataclass(frozen=True)
class Family:
    """Where a model family keeps its parts, as attribute paths from the loaded model object.

    ``kind`` is ``"causal"`` (autoregressive) or ``"masked-diffusion"``. Hidden-state index ``i`` follows the
    Hugging Face ``output_hidden_states`` convention: 0 = embedding output, ``i`` = output of block ``i``
    (1-based), ``num_layers`` = output of the final norm — the paper's φ.
    """

    name: str
    kind: str
    embed: str
    blocks: str
    final_norm: str
    mask_token_id: int | None = None
    logit_shift: bool = False  # True: logits at position i-1 predict token i (AR-initialised diffusion LMs)


def left_padded_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids ``[B, S]`` for a left-padded batch: each row counts from 0 at its first real token
    (``cumsum(mask) − 1``); padding positions are clamped to 0 (they are masked out anyway)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def get_attr_path(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass
class ModelAdapter:
    """A loaded model plus what the tracer needs to know about it."""

    model: nn.Module
    tokenizer: Any
    family: Family
    name: str
    fingerprint: str
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT
    extra: dict[str, Any] = field(default_factory=dict)
    extra_stop_ids: list[int] = field(default_factory=list)  # end-of-turn ids beyond the model's EOS ids

    # ----------------------------------------------------------------------------------------- structure
    @property
    def blocks(self) -> nn.ModuleList:
        return get_attr_path(self.model, self.family.blocks)

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    @property
    def hidden_size(self) -> int:
        return int(get_attr_path(self.model, self.family.embed).weight.shape[1])

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def resolve_layers(self, spec: str | list[str] | list[int]) -> list[int]:
        """Hidden-state indices of a layer spec for this model (:func:`parse_layers`)."""
        return parse_layers(spec, self.num_layers)

    def layer_module(self, index: int) -> nn.Module:
        """The module whose forward output *is* hidden state ``index``."""
        if index == 0:
            return get_attr_path(self.model, self.family.embed)
        if index == self.num_layers:
            return get_attr_path(self.model, self.family.final_norm)
        return self.blocks[index - 1]

    # ----------------------------------------------------------------------------------------- prompts
    def render(self, prompt: str, system: str | object | None = ...) -> str:
        """The exact text the model sees for one user turn: the chat template with ``system`` (default: the
        adapter's system prompt; ``None``: no system turn) and the generation prompt — the one renderer of sri.

        Models without a chat template get a plain ``System/User/Assistant`` layout. Raises :class:`SriError`
        for text that is not valid Unicode or a template that fails.
        """
        sys_text = self.system_prompt if system is ... else system
        return render_prompt(self.tokenizer, prompt, sys_text, self.name)  # type: ignore[arg-type]

    @property
    def uses_chat_template(self) -> bool:
        return uses_chat_template(self.tokenizer)

    def encode(self, rendered: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded ``input_ids`` and ``attention_mask`` on the model's device."""
        enc = self.tokenizer(rendered, return_tensors="pt", padding=True,
                             add_special_tokens=not self.uses_chat_template)
        return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)

    def count_tokens(self, rendered: str) -> int:
        return count_prompt_tokens(self.tokenizer, rendered)

    @property
    def eos_token_ids(self) -> list[int]:
        ids: set[int] = set()
        gen = getattr(self.model, "generation_config", None)
        for source in (getattr(gen, "eos_token_id", None), self.tokenizer.eos_token_id):
            if isinstance(source, int):
                ids.add(source)
            elif source:
                ids.update(int(i) for i in source)
        return sorted(ids)

    @property
    def stop_token_ids(self) -> list[int]:
        """Every id that ends a response: the EOS ids of the generation config and tokenizer, plus
        ``extra_stop_ids`` (an offline model's upstream end-of-turn ids, ``--stop-token``)."""
        return sorted(set(self.eos_token_ids) | set(self.extra_stop_ids))

    @property
    def pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else self.eos_token_ids[0])

    # ----------------------------------------------------------------------------------------- identity
    def key(self) -> dict[str, Any]:
        """The model part of every artefact's compatibility key."""
        return {"model": self.name, "fingerprint": self.fingerprint, "family": self.family.name,
                "num_layers": self.num_layers, "hidden_size": self.hidden_size}

    def describe(self) -> dict[str, Any]:
        return {**self.key(), "kind": self.family.kind, "device": str(self.device),
                "dtype": str(self.dtype).removeprefix("torch."), "system_prompt": self.system_prompt,
                "chat_template": self.uses_chat_template, **self.extra}


def uses_chat_template(tokenizer: Any) -> bool:
    """Whether prompts are rendered with the tokenizer's chat template (else the plain layout of
    :func:`render_prompt`)."""
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompt(tokenizer: Any, prompt: str, system: str | None, model: str) -> str:
    """The exact text model ``model`` sees for one user turn (:meth:`ModelAdapter.render`); needs the tokenizer
    only, so a run can check its prompts before any weights load."""
    check_text(prompt, "a prompt")
    if uses_chat_template(tokenizer):
        return render_chat_template(tokenizer, prompt, system, model)
    head = f"{system}\n\n" if system else ""
    return f"{head}User: {prompt}\nAssistant:"


def count_prompt_tokens(tokenizer: Any, rendered: str) -> int:
    """Tokens of a rendered prompt as the tracer encodes it (a chat template already holds its special tokens)."""
    return len(tokenizer(rendered, add_special_tokens=not uses_chat_template(tokenizer))["input_ids"])


def render_chat_template(tokenizer: Any, user: str, system: str | None, model: str) -> str:
    """One user turn (after ``system``, if any) under the tokenizer's chat template, with the generation prompt.

    A template that rejects a system turn (e.g. Gemma's) gets the system prompt folded into the user turn; a
    template that fails either way is a one-line error naming the model.
    """
    check_text(user, "a prompt")
    if system:
        check_text(system, "the system prompt")
    messages = [{"role": "user", "content": user}]
    if system:
        messages.insert(0, {"role": "system", "content": system})
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as first:  # templates that reject a system turn: fold it into the user turn
        if not system:
            raise _template_error(model, first) from None
        merged = f"{system}\n\n{user}"
        try:
            return tokenizer.apply_chat_template([{"role": "user", "content": merged}], tokenize=False,
                                                 add_generation_prompt=True)
        except Exception as e:
            raise _template_error(model, e) from None


def _template_error(model: str, e: Exception) -> SriError:
    first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
    return SriError(f"the chat template of '{model}' fails to render a conversation ({type(e).__name__}: {first}); "
                    "fix chat_template in its tokenizer_config.json (or chat_template.jinja), or try "
                    "--system-prompt '' if it rejects system turns")


def resolve_special_tokens(tokenizer: Any, model_config: Any, generation_config: Any, model: str) -> None:
    """Give ``tokenizer`` an EOS and a pad token, or fail in one line.

    EOS: the tokenizer's own, else the first ``eos_token_id`` of generation_config.json, else of config.json.
    Pad: the tokenizer's own, else EOS (padding is masked out, so any id serves). Neither is a one-line error (a
    pad token without EOS is allowed: generation then runs every step). Called at load time, before anything is
    generated or written.
    """
    if tokenizer.eos_token_id is None:
        for source in (generation_config, model_config):
            ids = getattr(source, "eos_token_id", None)
            ids = [ids] if isinstance(ids, int) else list(ids or [])
            token = next((tokenizer.convert_ids_to_tokens(int(i)) for i in ids
                          if 0 <= int(i) < len(tokenizer)), None)
            if token is not None:
                tokenizer.eos_token = token
                break
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.pad_token_id is None:  # hence no EOS either
        raise SriError(f"'{model}' declares no end-of-sequence token (none in its tokenizer, generation_config.json "
                       "or config.json) and no pad token, so generation cannot stop and batches cannot be padded; "
                       "set eos_token in its tokenizer_config.json (or eos_token_id in generation_config.json)")


def folder_fingerprint(folder: Path) -> str:
    """Identity of a local model folder without hashing gigabytes.

    An offline asset (``sri_asset.json``) is ``gguf-sha256:<source GGUF>+manifest:<digest>``: the GGUF it was
    converted from and the content its manifest records (sha256 and size of every file; see
    :func:`sri.data.assets.manifest_digest`). The loaders check the folder against that manifest first, so different
    bytes either fail the check or — with a rewritten manifest — give another fingerprint; they never pass as
    the model the manifest was written for. An asset folder without a readable manifest (an older sri) gets
    ``…+unverified:<folder hash>`` instead, which matches no verified one.

    Other folders: ``folder-sha256:`` over config.json, the small tokenizer/template files (they shape the
    rendered prompt) and the name, size and first MiB of every weight file.
    """
    h = hashlib.sha256()
    config = folder / "config.json"
    if config.is_file():
        h.update(config.read_bytes())
    for f in sorted(folder.glob("*")):
        if f.suffix in {".safetensors", ".bin", ".pt", ".gguf"}:
            h.update(f.name.encode())
            h.update(str(f.stat().st_size).encode())
            with f.open("rb") as fh:
                h.update(fh.read(1 << 20))
        elif f.is_file() and f.name.startswith(("tokenizer", "chat_template", "special_tokens")) \
                and f.stat().st_size < 64 << 20:
            h.update(f.name.encode())
            h.update(f.read_bytes())
    plain = h.hexdigest()[:32]
    asset = folder / "sri_asset.json"
    if asset.is_file():
        from ..data.assets import manifest_digest, read_manifest

        gguf = json.loads(asset.read_text(encoding="utf-8"))["gguf_sha256"]
        try:
            manifest = read_manifest(folder)
        except SriError:
            manifest = None
        if manifest is None:
            return f"gguf-sha256:{gguf}+unverified:{plain}"
        return f"gguf-sha256:{gguf}+manifest:{manifest_digest(manifest)[:32]}"
    return "folder-sha256:" + plain
