"""Anchors and the SRI signal (PAPER.md, "Anchors" and "SRI signal").

For each step t and layer, with φ_t the step representation and μ_t^k the anchors::

    d_t^k = 1 − ⟨φ_t / (‖φ_t‖ + ε), μ_t^k / (‖μ_t^k‖ + ε)⟩,   k ∈ {harmless, harmful}
    ℓ_t   = (log(d_t^harmful + ε) − log(d_t^harmless + ε)) / τ
    σ_t   = sigmoid(ℓ_t)                          τ = 0.1, ε = 1e-8

σ ≈ 1: the state is near the harmless (compliant) anchor; σ ≈ 0: near the refusal anchor.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from . import __version__
from .errors import IncompatibleError, SriError, clip
from .io import atomic_path, check_output_file, write_json
from .judges.keyword import is_refusal, text_step_signal
from .tracing.store import KEY_FIELDS, TraceStore, check_compatible

TAU = 0.1
EPS = 1e-8
ANCHOR_FORMAT = "sri-anchors/1"


def sri_signal(states: torch.Tensor, mu_harmless: torch.Tensor, mu_harmful: torch.Tensor,
               tau: float = TAU, eps: float = EPS) -> torch.Tensor:
    """σ ``[..., T]`` (float64) for step representations ``states [..., T, D]`` and anchors ``μ^k [T, D]``.

    Exactly the SRI authors' ``create_signal`` (``SRI_alg.py`` @ 87ebc59), in float64::

        d^k = 1 − ⟨x / (‖x‖ + ε), μ^k / (‖μ^k‖ + ε)⟩        ε inside each normalisation
        ℓ   = (log(d^harmful + ε) − log(d^harmless + ε)) / τ,   σ = sigmoid(ℓ)

    (``torch.nn.functional.cosine_similarity`` clamps the norm product instead, which differs by up to 1.6e-4
    when states sit within cosine distance ~1e-4 of the anchors.) Raises :class:`IncompatibleError` if the
    steps or hidden sizes of states and anchors differ.
    """
    if states.shape[-2:] != mu_harmless.shape or mu_harmless.shape != mu_harmful.shape:
        raise IncompatibleError(f"states {tuple(states.shape[-2:])} and anchors {tuple(mu_harmless.shape)} / "
                                f"{tuple(mu_harmful.shape)} differ in steps or hidden size; use anchors fitted "
                                "on traces with the same steps and model")
    x = _unit(states.double(), eps)
    d_harmless = 1 - (x * _unit(mu_harmless.double(), eps)).sum(-1)
    d_harmful = 1 - (x * _unit(mu_harmful.double(), eps)).sum(-1)
    logit = (torch.log(d_harmful + eps) - torch.log(d_harmless + eps)) / tau
    return torch.sigmoid(logit)


def _unit(x: torch.Tensor, eps: float) -> torch.Tensor:
    """x / (‖x‖₂ + ε) along the last axis."""
    return x / (torch.linalg.vector_norm(x, dim=-1, keepdim=True) + eps)


@dataclass
class Anchors:
    """Per-step, per-layer anchor means ``[T, D]`` plus the key of the traces they came from."""

    harmless: dict[int, torch.Tensor]
    harmful: dict[int, torch.Tensor]
    key: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)
    tau: float = TAU
    eps: float = EPS

    @property
    def layers(self) -> list[int]:
        return sorted(self.harmless)

    @property
    def digest(self) -> str:
        """Identity of the anchors: the first 16 hex digits of sha256 over τ, ε and every anchor tensor (float32,
        sorted by side and layer). Signals record it in their key (``key.anchors``), so a guard refuses signals
        computed with other anchors; it is the same for fitted anchors and for their saved file."""
        h = hashlib.sha256(json.dumps({"tau": float(self.tau), "eps": float(self.eps)}).encode())
        for side, tensors in (("harmless", self.harmless), ("harmful", self.harmful)):
            for layer in sorted(tensors):
                h.update(f"{side}.layer.{layer}".encode())
                h.update(tensors[layer].detach().float().contiguous().cpu().numpy().tobytes())
        return h.hexdigest()[:16]

    def default_layer(self) -> int:
        """The final-norm layer if present (the paper's φ), else the last one."""
        return self.key["num_layers"] if self.key["num_layers"] in self.harmless else self.layers[-1]

    def signal(self, states: torch.Tensor, layer: int) -> torch.Tensor:
        if layer not in self.harmless:
            raise IncompatibleError(f"anchors have no layer {layer} (they have {self.layers}); "
                                    "fit anchors on traces that include it")
        return sri_signal(states, self.harmless[layer], self.harmful[layer], self.tau, self.eps)

    # ------------------------------------------------------------------------------------------ files
    def metadata(self) -> dict[str, Any]:
        return {"format": ANCHOR_FORMAT, "key": self.key, "tau": self.tau, "eps": self.eps, **self.info}

    def save(self, path: str | Path) -> Path:
        """Write ``path`` (safetensors, metadata embedded) and ``path.json`` beside it for people."""
        path = Path(path)
        if path.suffix != ".safetensors":
            raise SriError(f"anchor file {path} must end in .safetensors")
        check_output_file(path, suffix=".safetensors")
        check_output_file(path.with_suffix(".json"), "the anchors' description", suffix=".json")
        tensors = {f"{k}.layer.{layer}": t[layer].float().contiguous()
                   for k, t in (("harmless", self.harmless), ("harmful", self.harmful)) for layer in self.layers}
        meta = self.metadata()
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"sri": json.dumps(meta)})
        write_json(path.with_suffix(".json"), meta)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Anchors:
        path = Path(path)
        if not path.is_file():
            from .io import missing_file

            raise SriError(missing_file(path, "anchor file", "create it with `sri anchors`"))
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads((f.metadata() or {}).get("sri", "{}"))
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        except Exception as e:  # safetensors raises its own error types for malformed files
            raise SriError(f"{path} is not a readable safetensors file ({type(e).__name__}); "
                           "recreate it with `sri anchors`") from None
        if not isinstance(meta, dict) or meta.get("format") != ANCHOR_FORMAT:
            raise SriError(f"{path} is not an sri anchor file; create one with `sri anchors`")
        fix = "recreate it with `sri anchors`"
        key = meta.get("key")
        if not isinstance(key, dict):
            raise SriError(f"{path} metadata field key is {'missing' if key is None else 'not an object'}; {fix}")
        for name in ("num_layers", "steps", "hidden_size"):
            v = key.get(name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise SriError(f"{path} metadata field key.{name} is {v!r}, expected a positive whole number; {fix}")
        for name in ("tau", "eps"):
            v = meta.get(name)
            if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v) or v <= 0:
                raise SriError(f"{path} metadata field {name} is {v!r}, expected a positive number; {fix}")
        split: dict[str, dict[int, torch.Tensor]] = {"harmless": {}, "harmful": {}}
        for name, t in tensors.items():
            kind, _, layer = name.partition(".layer.")
            if kind not in split or not layer.isdigit():
                raise SriError(f"{path} holds a tensor '{name}' that is not an anchor; {fix}")
            if tuple(t.shape) != (key["steps"], key["hidden_size"]):
                raise SriError(f"{path} tensor '{name}' has shape {list(t.shape)}, expected "
                               f"[{key['steps']}, {key['hidden_size']}] (steps, hidden size); {fix}")
            split[kind][int(layer)] = t
        if not split["harmless"] or sorted(split["harmless"]) != sorted(split["harmful"]):
            raise SriError(f"{path} holds harmless anchors for layers {sorted(split['harmless'])} but harmful ones "
                           f"for {sorted(split['harmful'])}; {fix}")
        info = {k: v for k, v in meta.items() if k not in {"format", "key", "tau", "eps"}}
        return cls(split["harmless"], split["harmful"], key, info, meta["tau"], meta["eps"])


def _store(store: TraceStore | str | Path, what: str) -> TraceStore:
    """An open :class:`TraceStore` for a trace folder given as a path or a store; :class:`SriError` otherwise."""
    if isinstance(store, str | Path):
        return TraceStore.open(store)
    if not isinstance(store, TraceStore):
        raise SriError(f"the {what} must be a trace folder (a path or a TraceStore), not {type(store).__name__}")
    return store


def fit_anchors(harmless: TraceStore | str | Path, harmful: TraceStore | str | Path, *,
                judge: Callable[[str], bool] = is_refusal, layers: list[int] | None = None) -> Anchors:
    """μ_t^harmless = mean φ_t over harmless traces the judge does *not* call refusals; μ_t^harmful = mean φ_t
    over harmful traces it *does*. Fails loudly if either set is empty or the folders are incompatible. The trace
    folders may be given as paths or open :class:`TraceStore` objects."""
    harmless, harmful = _store(harmless, "harmless"), _store(harmful, "harmful")
    if harmless.folder.resolve() == harmful.folder.resolve():
        raise SriError(f"the harmless and harmful traces are the same folder ({harmless.folder}); give the traces of "
                       "harmless prompts and of harmful prompts")
    check_compatible(harmless.key, harmful.key, f"harmless traces {harmless.folder}",
                     f"harmful traces {harmful.folder}")
    layers = layers or [layer for layer in harmless.layers if layer in harmful.layers]
    if not layers:
        raise IncompatibleError(f"{harmless.folder} and {harmful.folder} share no traced layer; trace both with "
                                "the same --layers")
    rows_ok, states_ok = harmless.load(layers)
    rows_bad, states_bad = harmful.load(layers)
    for rows, store, side, contrary in ((rows_ok, harmless, "harmless", {"harmful", "jailbreak"}),
                                        (rows_bad, harmful, "harmful", {"harmless"})):
        clash = next((r for r in rows if str(r.get("label", "")).strip().lower() in contrary), None)
        if clash is not None:  # a folder resumed with another prompt set: its rows say what they are
            raise SriError(f"{store.folder}, given as the {side} traces, holds prompt {clip(clash['id'])} labelled "
                           f"{clip(clash['label'])}; a {side} anchor is fitted on {side} prompts only — trace them "
                           "into a folder of their own")
    keep_ok = torch.tensor([not judge(r["response"]) for r in rows_ok])
    keep_bad = torch.tensor([judge(r["response"]) for r in rows_bad])
    if not keep_ok.any():
        raise SriError(f"every harmless trace in {harmless.folder} was judged a refusal, so the harmless anchor "
                       "would be empty; use other harmless prompts or another model")
    if not keep_bad.any():
        raise SriError(f"no harmful trace in {harmful.folder} was judged a refusal, so the refusal anchor would be "
                       "empty; use more harmful prompts or a model that refuses (e.g. the default Qwen model)")
    key = {**harmless.key, "layers": layers}
    info = {
        "sri_version": __version__,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "judge": "keyword (paper Table 12)",
        "sources": {"harmless": str(harmless.folder), "harmful": str(harmful.folder)},
        "counts": {"harmless_used": int(keep_ok.sum()), "harmless_total": len(rows_ok),
                   "harmful_used": int(keep_bad.sum()), "harmful_total": len(rows_bad)},
    }
    return Anchors(
        harmless={layer: states_ok[layer][keep_ok].mean(0) for layer in layers},
        harmful={layer: states_bad[layer][keep_bad].mean(0) for layer in layers},
        key=key,
        info=info,
    )


def compute_signals(anchors: Anchors, store: TraceStore | str | Path, layer: int | None = None) -> list[dict[str, Any]]:
    """One row per trace: id, label, prompt, response, refused, sri (T floats), text_signal, and the key: the traces'
    key fields, the signal's layer and the anchors' :attr:`Anchors.digest`."""
    store = _store(store, "traces")
    check_compatible(anchors.key, store.key, "anchors", f"traces {store.folder}", KEY_FIELDS)
    layers = [layer_ for layer_ in anchors.layers if layer_ in store.layers]
    if not layers:
        raise IncompatibleError(f"anchors (layers {anchors.layers}) and {store.folder} (layers {store.layers}) "
                                "share no layer; trace with the anchors' --layers")
    if layer == -1:  # -1 = final, as in `--layers`
        layer = None
    main = layer if layer is not None else (anchors.default_layer() if anchors.default_layer() in layers
                                           else layers[-1])
    if main not in layers:
        raise IncompatibleError(f"layer {main} is not in both the anchors and the traces (shared: {layers})")
    rows, states = store.load(layers)
    sigmas = {layer_: anchors.signal(states[layer_], layer_) for layer_ in layers}
    key = {**{k: store.key.get(k) for k in ("model", *KEY_FIELDS)}, "layer": main, "anchors": anchors.digest}
    out = []
    for i, r in enumerate(rows):
        row = {
            "id": r["id"], "label": r["label"], "source": r.get("source", ""), "prompt": r["prompt"],
            "response": r["response"], "refused": is_refusal(r["response"]),
            "sri": sigmas[main][i].tolist(),
            "text_signal": text_step_signal(r["step_texts"], end_step=r.get("end_step")),
            "end_step": r.get("end_step"),
            "key": key,
        }
        if len(layers) > 1:
            row["sri_by_layer"] = {str(layer_): sigmas[layer_][i].tolist() for layer_ in layers}
        out.append(row)
    return out
