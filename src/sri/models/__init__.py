"""Model loading: an offline short name, a local Hugging Face folder or a Hub id → :class:`ModelAdapter`."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..data.assets import MODELS, check_model_folder, model_asset, models_dir
from ..errors import SriError
from ..io import check_text
from ..limits import DEFAULT_MAX_PROMPT_TOKENS
from ..registry import Registry
from .adapter import (
    DEFAULT_SYSTEM_PROMPT,
    Family,
    ModelAdapter,
    count_prompt_tokens,
    folder_fingerprint,
    render_chat_template,
    render_prompt,
    resolve_special_tokens,
)
from .causal import CAUSAL_FAMILIES, detect_family
from .dream import DREAM
from .llada import LLADA
from .masked import (
    GENERIC,
    DiffusionAdapter,
    DiffusionFamily,
    accepts_argument,
    detect_layout,
    find_mask_id,
    make_bidirectional,
)

__all__ = ["DEFAULT_SYSTEM_PROMPT", "DIFFUSION_FAMILIES", "DiffusionAdapter", "DiffusionFamily", "Family",
           "ModelAdapter", "check_model", "load_diffusion_model", "load_model",
           "prepare_tokenizer", "resolve_model_source"]

#: masked-diffusion families by name; ``--family`` picks one, otherwise the model's config decides
DIFFUSION_FAMILIES: Registry[DiffusionFamily] = Registry("model family")
for _f in (LLADA, DREAM, GENERIC):
    DIFFUSION_FAMILIES.add(_f.name, _f)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
           "fp16": torch.float16, "float16": torch.float16}


def resolve_model_source(spec: str) -> tuple[str, bool]:
    """``(path or hub id, is_local)`` for an offline short name, the name of a model built into
    ``$SRI_HOME/models`` (``sri dlm build``), a folder or a Hub id; one-line errors otherwise.

    Local folders are checked before anything loads: a converted offline model must match its manifest
    (presence and size of every file, :func:`sri.data.assets.check_model_folder`), and the weights must be
    safetensors (:func:`check_safetensors`)."""
    if spec in MODELS:
        asset = model_asset(spec)
        if not asset.is_fetched():
            raise SriError(f"model '{spec}' is not fetched; run `sri assets fetch --model {spec}`")
        return _checked(asset.path), True
    built = models_dir() / spec
    if "/" not in spec and spec not in (".", "..") and (built / "config.json").is_file():
        return _checked(built), True  # a model built into the cache, e.g. by `sri dlm build`
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SriError(f"{path} has no config.json; give a Hugging Face model folder (one holding config.json) "
                           "or an offline short name (`sri ls models`)")
        return _checked(path), True
    if _HUB_ID.match(spec) and not spec.startswith((".", "/")):
        return spec, False
    raise SriError(f"model '{spec}' is unknown; use an offline short name ({', '.join(MODELS)}), "
                   "a local Hugging Face folder or a Hub id such as Qwen/Qwen2.5-7B-Instruct")


_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def check_safetensors(folder: Path) -> None:
    """A one-line :class:`SriError` if ``folder`` holds pickled weights (``pytorch_model.bin`` …) but no
    safetensors: sri loads safetensors only and never unpickles a checkpoint (a pickle can run code)."""
    if any(folder.glob("*.safetensors")) or (folder / "model.safetensors.index.json").is_file():
        return
    pickled = sorted(f.name for f in folder.iterdir() if f.is_file() and f.suffix in _PICKLE_SUFFIXES)
    if pickled:
        raise SriError(f"{folder} holds only pickled weights ({', '.join(pickled[:3])}); sri loads safetensors only "
                       "and never unpickles a checkpoint — in a trusted environment load it with transformers and "
                       "save it with model.save_pretrained(DIR, safe_serialization=True), then use DIR")


def _checked(folder: Path) -> str:
    check_model_folder(folder)
    check_safetensors(folder)
    return str(folder)


def _safetensors_only(spec: str, e: Exception) -> SriError | None:
    """The pickle refusal for a Hub load that failed because the repository has no safetensors (local folders
    are checked before loading, :func:`check_safetensors`)."""
    text = str(e)
    if "safetensors" not in text or not ("does not appear to have" in text or "no file named" in text):
        return None
    return SriError(f"'{spec}' has no safetensors weights; sri loads safetensors only and never unpickles a "
                    "checkpoint — in a trusted environment load it with transformers and save it with "
                    "model.save_pretrained(DIR, safe_serialization=True), then use DIR")


def pick_device(device: str) -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` / ``cuda:N`` or ``mps`` — each checked to exist
    on this machine. Anything else (``meta``, ``xpu``, …) or an absent device is a one-line :class:`SriError`."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise SriError(f"device '{device}' is not understood; use auto, cpu, cuda[:N] or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SriError(f"device '{device}' was asked for but CUDA is not available; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise SriError(f"device '{device}' does not exist: this machine has {torch.cuda.device_count()} CUDA "
                           "device(s); use cuda:0 … or auto")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise SriError(f"device '{device}' was asked for but Apple's MPS is not available here; use --device cpu")
    elif dev.type != "cpu":
        raise SriError(f"device '{device}' is not supported; use auto, cpu, cuda[:N] or mps")
    return dev


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
    stop_tokens: Sequence[str | int] = (),
) -> ModelAdapter:
    """Load an autoregressive chat model for tracing. ``trust_remote_code`` only when the user asked for it.

    A response ends at any of ``adapter.stop_token_ids``: the EOS ids of the generation config and tokenizer,
    an offline model's upstream end-of-turn tokens, and ``stop_tokens`` (token strings or ids; ``--stop-token``).
    Raises :class:`SriError` for an unknown model or a stop token that is not one token of the vocabulary.
    """
    from transformers import AutoModelForCausalLM

    source, is_local = resolve_model_source(spec)
    dev = pick_device(device)
    torch_dtype = pick_dtype(dtype, dev)
    tokenizer = prepare_tokenizer(spec, source, is_local, system_prompt, trust_remote_code)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, use_safetensors=True,
                                                     trust_remote_code=trust_remote_code)
    except Exception as e:  # any failure to build the model from these files is about the files
        if not is_local and (refusal := _safetensors_only(spec, e)) is not None:
            raise refusal from None
        raise _load_error(spec, is_local, e) from None
    if getattr(model.config, "sri_family", None) or getattr(model.config, "is_causal", True) is False:
        raise SriError(f"'{spec}' is a masked-diffusion model (its config.json sets sri_family / is_causal: false); "
                       "trace it with --sampler diffusion or --sampler diffusion-ar")
    model.to(dev).eval()
    family = detect_family(model, CAUSAL_FAMILIES)
    if family is None:
        raise SriError(f"'{spec}' ({type(model).__name__}) has no known layer layout; add a Family for it "
                       "in sri/models/causal.py")
    fingerprint = folder_fingerprint(Path(source)) if is_local else \
        f"hub:{spec}@{getattr(model.config, '_commit_hash', None) or 'unknown'}"
    return ModelAdapter(model=model, tokenizer=tokenizer, family=family, name=spec, fingerprint=fingerprint,
                        system_prompt=system_prompt,
                        extra_stop_ids=resolve_stop_ids(spec, source, is_local, tokenizer, model, (), stop_tokens))


def requested_stop_ids(spec: str, vocab: dict[str, int], size: int, requested: Sequence[str | int]) -> list[int]:
    """The ids of user-requested stop tokens — each a token string of ``vocab`` or an id in ``[0, size)``.
    Raises :class:`SriError` (one line) naming the first that is neither."""
    ids = []
    for tok in requested:
        text = str(tok).strip()
        if text.lstrip("-").isdigit():
            i = int(text)
            if not 0 <= i < size:
                raise SriError(f"stop token id {i} is outside the vocabulary of '{spec}' (0…{size - 1}); give a "
                               "valid id or a token string such as '<|endoftext|>'")
            ids.append(i)
        elif text in vocab:
            ids.append(vocab[text])
        else:
            raise SriError(f"stop token {text!r} is not a single token of the vocabulary of '{spec}'; give the "
                           "exact token string (e.g. '<|endoftext|>') or its id")
    return ids


def resolve_stop_ids(spec: str, source: str, is_local: bool, tokenizer, model, family_tokens: Sequence[str],
                     requested: Sequence[str | int]) -> list[int]:
    """Stop ids beyond the model's EOS ids: the family's end-of-turn tokens and an offline asset's upstream EOS
    tokens (where the vocabulary has them), then every ``requested`` token string or id (which must exist)."""
    vocab = tokenizer.get_vocab()
    size = int(model.get_input_embeddings().weight.shape[0])
    names = list(family_tokens)
    asset_file = Path(source) / "sri_asset.json"
    if is_local and asset_file.is_file():
        import json

        asset = MODELS.get(json.loads(asset_file.read_text(encoding="utf-8")).get("name", ""))
        names += list(asset.stop_tokens) if asset else []
    ids = [vocab[t] for t in names if t in vocab] + requested_stop_ids(spec, vocab, size, requested)
    return sorted(set(ids))


def load_diffusion_model(
    spec: str,
    *,
    device: str = "auto",
    dtype: str = "auto",
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
    trust_remote_code: bool = False,
    family: str | None = None,
    mask_id: int | None = None,
    logit_shift: bool | None = None,
    stop_tokens: Sequence[str | int] = (),
) -> DiffusionAdapter:
    """Load a masked diffusion LM (LLaDA, Dream or a generic masked LM) for diffusion sampling.

    The family is ``family`` if given, else the config's ``sri_family``, else the one whose model_type /
    architecture the config declares, else the generic one. Weights load through the Auto class the checkpoint
    declares in ``auto_map`` (remote code: only with ``trust_remote_code``), else ``AutoModelForCausalLM`` or
    ``AutoModelForMaskedLM``. ``mask_id`` and ``logit_shift`` override the family's conventions. Attention is
    made bidirectional. A response ends at the first of ``adapter.stop_token_ids`` (EOS ids, the family's
    end-of-turn tokens, ``stop_tokens``).
    """
    if family is not None:
        DIFFUSION_FAMILIES[family]  # unknown → a did-you-mean error before anything loads
    source, is_local = resolve_model_source(spec)
    dev = pick_device(device)
    torch_dtype = pick_dtype(dtype, dev)
    config = _load_config(spec, source, is_local, trust_remote_code)
    conventions = _pick_family(config, family)
    auto_class = _auto_class(spec, config)
    tokenizer = prepare_tokenizer(spec, source, is_local, system_prompt, trust_remote_code, config=config)
    try:
        model = auto_class.from_pretrained(source, config=config, dtype=torch_dtype, use_safetensors=True,
                                           trust_remote_code=trust_remote_code)
    except Exception as e:  # truncated weights, shapes that disagree with config.json, …
        raise ((not is_local and _safetensors_only(spec, e)) or _load_error(spec, is_local, e)) from None
    model.to(dev).eval()
    if model.get_output_embeddings() is None:
        raise SriError(f"'{spec}' loads as {type(model).__name__}, which returns no logits; give a "
                       "checkpoint with a language-model head")

    resolved_mask, where = (mask_id, "--mask-id") if mask_id is not None else \
        find_mask_id(conventions, model, tokenizer)
    vocab = int(model.get_input_embeddings().weight.shape[0])
    if resolved_mask is None:
        raise _no_mask_error(spec)
    if not 0 <= resolved_mask < vocab:
        raise SriError(f"mask id {resolved_mask} (from {where}) is outside the vocabulary of {vocab}; "
                       "pass the right --mask-id")
    if tokenizer.pad_token_id == resolved_mask:
        raise SriError(f"the pad token of '{spec}' is its mask token ({resolved_mask}), so padding would be "
                       "denoised; give the tokenizer another pad token")
    layout = detect_layout(model, conventions)
    if layout is None:
        raise SriError(f"'{spec}' ({type(model).__name__}) has no known layer layout; add a Family for it in "
                       "sri/models/causal.py or a DiffusionFamily in sri/models/")
    make_bidirectional(model)
    shift = conventions.logit_shift if logit_shift is None else logit_shift
    resolved = Family(conventions.name, "masked-diffusion", embed=layout.embed, blocks=layout.blocks,
                      final_norm=layout.final_norm, mask_token_id=resolved_mask, logit_shift=shift)
    native = type(model).__module__.startswith("transformers.")
    fingerprint = folder_fingerprint(Path(source)) if is_local else \
        f"hub:{spec}@{getattr(model.config, '_commit_hash', None) or 'unknown'}"
    return DiffusionAdapter(
        model=model, tokenizer=tokenizer, family=resolved, name=spec, fingerprint=fingerprint,
        system_prompt=system_prompt, extra={"layout": layout.name, "mask_id_source": where},
        conventions=conventions,
        position_ids=accepts_argument(model, "position_ids"),
        four_d_mask=conventions.attention_mask == "4d" and not native,
        extra_stop_ids=resolve_stop_ids(spec, source, is_local, tokenizer, model, conventions.stop_tokens,
                                        stop_tokens),
        forward_kwargs={"use_cache": False} if accepts_argument(model, "use_cache") else {},
    )


def prepare_tokenizer(spec: str, source: str, is_local: bool, system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
                      trust_remote_code: bool = False, *, config=None):
    """Load the tokenizer of a model and check what generation needs from it — before any weights load, so a
    broken model fails in one line with nothing written: an EOS token (from generation_config.json or
    config.json when the tokenizer has none), a pad token (EOS when there is none) and a chat template that
    renders a conversation."""
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise _load_error(spec, is_local, e) from None
    if config is None:
        try:
            config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
        except (OSError, ValueError):
            config = None  # loading the weights reports it
    try:
        generation = GenerationConfig.from_pretrained(source)
    except (OSError, ValueError):
        generation = None  # no generation_config.json
    tokenizer.padding_side = "left"
    if system_prompt:
        check_text(system_prompt, "the system prompt")
    resolve_special_tokens(tokenizer, config, generation, spec)
    if getattr(tokenizer, "chat_template", None):
        render_chat_template(tokenizer, "Hello", system_prompt, spec)
    return tokenizer


def check_model(spec: str, *, system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
                trust_remote_code: bool = False, layers: str | None = None, stop_tokens: Sequence[str | int] = (),
                gen_length: int | None = None, diffusion: bool = False,
                prompts: Mapping[str, Sequence[Any]] | None = None,
                max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS) -> Any:
    """Fail now, in one line, if ``spec`` cannot be resolved or its tokenizer cannot serve generation (see
    :func:`prepare_tokenizer`); loads no weights. For commands that write before they load the model. Returns
    the prepared tokenizer.

    With the run's settings it also checks, from config.json and the tokenizer, what loading would refuse later:
    the ``layers`` spec (:func:`~sri.models.adapter.parse_layers`), the ``stop_tokens`` and a generation length
    of ``gen_length`` tokens against the context (``max_position_embeddings``); with ``diffusion``, that the model
    declares a mask token where its family looks for one (:func:`~sri.models.masked.find_mask_id`); with
    ``prompts`` (``{where: prompt records}``), that each rendered prompt is at most ``max_prompt_tokens`` tokens
    and fits the context with ``gen_length`` more (the error starts with ``where``)."""
    source, is_local = resolve_model_source(spec)
    config = _load_config(spec, source, is_local, trust_remote_code)
    tokenizer = prepare_tokenizer(spec, source, is_local, system_prompt, trust_remote_code, config=config)
    text_config = getattr(config, "text_config", None) or config
    if layers is not None:
        _layer_ids(text_config, layers)
    if stop_tokens:
        size = max(int(getattr(text_config, "vocab_size", 0) or 0), len(tokenizer))
        requested_stop_ids(spec, tokenizer.get_vocab(), size, stop_tokens)
    if gen_length is not None:
        check_generation_length(gen_length, context_length(text_config))
    if diffusion:
        _check_mask_declared(spec, source, is_local, config, tokenizer)
    if prompts:
        from ..tracing.tracer import check_prompt_lengths

        for where, records in prompts.items():
            lengths = [count_prompt_tokens(tokenizer, render_prompt(tokenizer, r.prompt, system_prompt, spec))
                       for r in records]
            try:
                check_prompt_lengths(records, lengths, max_prompt_tokens, gen_length or 0, context_length(text_config))
            except SriError as e:
                raise SriError(f"{where}: {e}") from None
    return tokenizer


def model_layers(spec: str, layers: str, *, trust_remote_code: bool = False) -> list[int] | None:
    """Hidden-state indices of the layer spec ``layers`` for model ``spec``, from its config.json (no weights);
    ``None`` if the config names no layer count. One-line :class:`SriError` for a spec the model refuses."""
    source, is_local = resolve_model_source(spec)
    config = _load_config(spec, source, is_local, trust_remote_code)
    return _layer_ids(getattr(config, "text_config", None) or config, layers)


def _layer_ids(text_config: Any, layers: str) -> list[int] | None:
    from .adapter import parse_layers

    n_layers = next((getattr(text_config, a) for a in ("num_hidden_layers", "n_layers", "num_layers")
                     if isinstance(getattr(text_config, a, None), int)), None)
    return None if n_layers is None else parse_layers(layers, n_layers)


def _check_mask_declared(spec: str, source: str, is_local: bool, config: Any, tokenizer: Any) -> None:
    """Without weights: does the model declare a mask token where its diffusion family looks for one?"""
    from types import SimpleNamespace

    from transformers import GenerationConfig

    family = _pick_family(config, None)
    generation = None
    if is_local and (Path(source) / "generation_config.json").is_file():
        try:
            generation = GenerationConfig.from_pretrained(source)
        except Exception:  # an unreadable generation config declares no mask; loading reports it
            generation = None
    elif not is_local and "generation_config" in family.mask_id_from:
        return  # a Hub model's generation config is not fetched here; loading checks it
    if find_mask_id(family, SimpleNamespace(config=config, generation_config=generation), tokenizer)[0] is None:
        raise _no_mask_error(spec)


def _no_mask_error(spec: str) -> SriError:
    return SriError(f"'{spec}' has no mask token (no mask_token_id in its config, no tokenizer mask token); "
                    "a diffusion sampler needs one — pass --mask-id ID if the model has one")


def context_length(config) -> int | None:
    """The longest sequence a model's config allows (``max_position_embeddings`` or ``max_sequence_length``), or
    ``None`` when the config names none."""
    return getattr(config, "max_position_embeddings", None) or getattr(config, "max_sequence_length", None)


def check_generation_length(gen_length: int, max_pos: int | None) -> None:
    """Refuse a generation of ``gen_length`` tokens that fills the model's whole context of ``max_pos`` tokens on
    its own (:class:`SriError`, one line)."""
    if max_pos and gen_length >= max_pos:
        raise SriError(f"the generation length ({gen_length} tokens from --steps/--gen-length) exceeds the "
                       f"model's context of {max_pos} tokens on its own; lower --steps (or --gen-length)")


def _load_config(spec: str, source: str, is_local: bool, trust_remote_code: bool):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        if "trust_remote_code" in str(e) and not trust_remote_code:
            raise _remote_code_error(spec) from None
        raise _load_error(spec, is_local, e) from None


def _remote_code_error(spec: str) -> SriError:
    return SriError(f"'{spec}' ships its own modelling code (auto_map in its config.json); pass "
                    "--trust-remote-code to run that code — only if you trust its source")


def _load_error(spec: str, is_local: bool, e: Exception) -> SriError:
    if "trust_remote_code" in str(e):  # transformers refuses code shipped with the checkpoint (any part)
        return _remote_code_error(spec)
    where = "folder" if is_local else "Hugging Face Hub id"
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return SriError(f"could not load {where} '{spec}' ({first[:160]}); check the id/path and, for Hub ids, "
                    "the network — offline, use a short name from `sri assets list`")


def _pick_family(config, name: str | None) -> DiffusionFamily:
    declared = getattr(config, "sri_family", None)
    if name is None and declared is not None:
        if declared not in DIFFUSION_FAMILIES:
            raise SriError(f"config.json declares sri_family '{declared}', which is unknown; use one of "
                           f"{', '.join(DIFFUSION_FAMILIES)} or override it with --family")
        name = declared
    if name is not None:
        return DIFFUSION_FAMILIES[name]
    return next((f for f in (LLADA, DREAM) if f.matches(config)), GENERIC)


def _auto_class(spec: str, config):
    """The Auto class to load with: the checkpoint's own ``auto_map`` entry first, else the native mapping."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_FOR_MASKED_LM_MAPPING

    order = ("AutoModelForCausalLM", "AutoModelForMaskedLM", "AutoModel")
    auto_map = getattr(config, "auto_map", None) or {}
    for name in order:
        if name in auto_map:
            return getattr(transformers, name)
    if type(config) in MODEL_FOR_CAUSAL_LM_MAPPING:
        return transformers.AutoModelForCausalLM
    if type(config) in MODEL_FOR_MASKED_LM_MAPPING:
        return transformers.AutoModelForMaskedLM
    raise SriError(f"'{spec}' ({type(config).__name__}) has no language-model head class in transformers and no "
                   "auto_map; give a causal or masked LM checkpoint")
