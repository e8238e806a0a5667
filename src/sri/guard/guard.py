"""SRI Guard: one-class detectors on benign SRI signals, a calibrated threshold, and a key it refuses to leave.

A guard holds one detector per signal prefix length t (σ_1 … σ_t); the one for t = T is the paper's offline
guard, the shorter ones let the streaming guard decide while the model is still generating.

- Offline threshold: τ = q-quantile (default q = 0.99) of the full-signal scores of held-out benign
  calibration signals; a signal is flagged when its score exceeds τ.
- Streaming thresholds τ_t, one per prefix: ``per-prefix`` puts each at the same q-quantile of the calibration
  scores of that prefix; ``union`` (default) raises the common quantile level q' ≥ q until the share of benign
  calibration signals flagged at *any* prefix is ≤ 1 − q, so stopping early costs no more false positives than
  the offline guard's nominal rate.

Only benign signals are used to fit and calibrate; rows labelled ``harmful`` or ``jailbreak`` are refused.
Files: ``DIR/guard.safetensors`` (detector arrays, optional anchors) and ``DIR/guard.json`` (key, thresholds,
detector settings, the tensors' sha256); no pickle.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from .. import __version__
from ..errors import IncompatibleError, SriError, clip
from ..io import atomic_path, check_output_dir, is_blank, jsonable, read_json, write_json
from ..signal import Anchors
from ..tracing.store import KEY_FIELDS, check_compatible
from .detectors import Detector, make_detector

GUARD_FORMAT = "sri-guard/1"
#: what a signal's key must share with the guard's before the guard scores it
SIGNAL_KEY_FIELDS = (*KEY_FIELDS, "layer", "anchors")
NOT_BENIGN_LABELS = frozenset({"harmful", "jailbreak"})
DEFAULT_REFUSAL = "I'm sorry, but I can't help with that."
STREAM_MODES = ("union", "per-prefix", "off")


@dataclass
class StepAnchors:
    """The anchors μ_t^harmless, μ_t^harmful ``[T, D]`` of the guard's layer, with τ and ε of the SRI formula."""

    harmless: torch.Tensor
    harmful: torch.Tensor
    tau: float
    eps: float


@dataclass
class Guard:
    """Fitted detectors per prefix length, their thresholds and the signal key they were fitted under."""

    detectors: dict[int, Detector]
    threshold: float
    stream_thresholds: dict[int, float]
    quantile: float
    key: dict[str, Any]
    anchors: StepAnchors | None = None  # needed to compute σ_t inside generation
    refusal_text: str = DEFAULT_REFUSAL
    info: dict[str, Any] = field(default_factory=dict)
    sha256: str | None = None  # of guard.safetensors, once saved or loaded

    @property
    def steps(self) -> int:
        return int(self.key["steps"])

    @property
    def detector(self) -> Detector:
        """The full-signal detector (prefix t = T): the paper's offline SRI Guard."""
        return self.detectors[self.steps]

    @property
    def kind(self) -> str:
        return self.detector.kind

    @property
    def prefixes(self) -> list[int]:
        return sorted(self.stream_thresholds)

    # ------------------------------------------------------------------------------------------ checks
    def check_key(self, key: dict[str, Any], what: str = "signals") -> None:
        """One-line :class:`IncompatibleError` if ``key`` differs from the guard's in a key field
        (:data:`sri.tracing.store.KEY_FIELDS`) or the layer."""
        check_compatible(key, self.key, what, "the guard", SIGNAL_KEY_FIELDS)

    # ------------------------------------------------------------------------------------------ offline use
    def score(self, signals: np.ndarray) -> np.ndarray:
        """Full-signal anomaly scores ``[N]`` of signals ``[N, T]``."""
        return self.detector.score(_sigmas(signals))

    def flag(self, signals: np.ndarray) -> np.ndarray:
        """True where the full-signal score exceeds the threshold."""
        return self.score(signals) > self.threshold

    def prefix_scores(self, signals: np.ndarray) -> dict[int, np.ndarray]:
        """Score of every streaming prefix: ``{t: score of σ_1..σ_t}``."""
        x = _sigmas(signals)
        return {t: self.detectors[t].score(x[:, :t]) for t in self.prefixes}

    def first_flag(self, signals: np.ndarray) -> np.ndarray:
        """The first prefix length t whose score exceeds τ_t (0 where none does): what the streaming guard does
        when it watches these signals step by step."""
        if not self.stream_thresholds:
            raise SriError("this guard was fitted without streaming detectors; refit with --stream union")
        x = _sigmas(signals)
        first = np.zeros(len(x), dtype=np.int64)
        for t, s in self.prefix_scores(x).items():
            hit = (s > self.stream_thresholds[t]) & (first == 0)
            first[hit] = t
        return first

    # ------------------------------------------------------------------------------------------ files
    def save(self, folder: str | Path) -> Path:
        """Write ``folder/guard.safetensors`` then ``folder/guard.json`` (the JSON names the tensors' hash, so a
        pair mixed by two concurrent writers is refused when loading)."""
        folder = check_output_dir(folder)
        tensors: dict[str, np.ndarray] = {}
        for t, det in self.detectors.items():
            for name, arr in det.state().items():
                tensors[f"prefix.{t}.{name}"] = np.ascontiguousarray(np.asarray(arr))
        if self.anchors is not None:
            tensors["anchors.harmless"] = self.anchors.harmless.float().numpy()
            tensors["anchors.harmful"] = self.anchors.harmful.float().numpy()
        weights = folder / "guard.safetensors"
        decision = {
            "key": self.key, "quantile": self.quantile, "threshold": self.threshold,
            "stream_thresholds": {str(t): v for t, v in self.stream_thresholds.items()},
            "detectors": {str(t): d.config() for t, d in self.detectors.items()},
            "anchors": None if self.anchors is None else {"tau": self.anchors.tau, "eps": self.anchors.eps},
            "refusal_text": self.refusal_text,
        }
        with atomic_path(weights) as tmp:  # the decision fields ride in the tensors' metadata, under their sha256
            save_file(tensors, str(tmp), metadata={"format": GUARD_FORMAT,
                                                   "decision": json.dumps(decision, sort_keys=True,
                                                                              default=jsonable)})
        self.sha256 = _sha256(weights)
        meta = {**self.info, "format": GUARD_FORMAT, **decision, "tensors_sha256": self.sha256}
        write_json(folder / "guard.json", meta)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> Guard:
        folder = Path(folder)
        meta_file, weights = folder / "guard.json", folder / "guard.safetensors"
        if not meta_file.is_file() or not weights.is_file():
            raise SriError(f"{folder} is not a guard folder (guard.json / guard.safetensors missing); "
                           "create one with `sri guard fit`")
        meta = _read_guard_meta(meta_file)
        if _sha256(weights) != meta["tensors_sha256"]:
            raise SriError(f"{weights} does not match {meta_file.name} (a partial or mixed write?); "
                           "refit with `sri guard fit`")
        try:
            raw = load_file(str(weights))
            with safe_open(str(weights), framework="np") as f:
                header = f.metadata() or {}
        except Exception as e:  # safetensors raises its own error types for malformed files
            raise SriError(f"{weights} is not a readable safetensors file ({type(e).__name__}); "
                           "refit with `sri guard fit`") from None
        fix = "restore it or refit with `sri guard fit`"
        detectors = {}
        for t_str, config in meta["detectors"].items():
            prefix = f"prefix.{t_str}."
            state = {k.removeprefix(prefix): v for k, v in raw.items() if k.startswith(prefix)}
            try:
                detectors[int(t_str)] = Detector.rebuild(config, state)
            except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
                raise SriError(f"{meta_file} field detectors.{t_str} does not rebuild a detector "
                               f"({type(e).__name__}: {str(e)[:80]}); {fix}") from None
        anchors = None
        if meta["anchors"] is not None:
            if "anchors.harmless" not in raw or "anchors.harmful" not in raw:
                raise SriError(f"{meta_file} field anchors is set but {weights.name} holds no anchors; {fix}")
            anchors = StepAnchors(torch.from_numpy(raw["anchors.harmless"]), torch.from_numpy(raw["anchors.harmful"]),
                                  float(meta["anchors"]["tau"]), float(meta["anchors"]["eps"]))
        _check_decision(meta, header, meta_file, weights)  # after the detectors: a broken one is named as such
        known = {"format", "key", "quantile", "threshold", "stream_thresholds", "detectors", "anchors",
                 "refusal_text", "tensors_sha256"}
        return cls(detectors=detectors, threshold=float(meta["threshold"]),
                   stream_thresholds={int(t): float(v) for t, v in meta["stream_thresholds"].items()},
                   quantile=float(meta["quantile"]), key=meta["key"], anchors=anchors,
                   refusal_text=meta["refusal_text"], info={k: v for k, v in meta.items() if k not in known},
                   sha256=meta["tensors_sha256"])


#: the guard.json fields that decide what is flagged: bound to the tensors (their copy sits in the tensor file's
#: metadata, which the recorded sha256 covers), so editing one in guard.json is refused, not silently used
DECISION_FIELDS = ("threshold", "stream_thresholds", "quantile", "detectors", "anchors", "key", "refusal_text")


def _check_decision(meta: dict[str, Any], header: dict[str, str], meta_file: Path, weights: Path) -> None:
    fix = "restore it or refit with `sri guard fit`"
    if "decision" not in header:
        raise SriError(f"{weights} carries no copy of the guard's thresholds (written by an older sri); refit with "
                       "`sri guard fit`")
    try:
        saved = json.loads(header["decision"])
    except json.JSONDecodeError:
        raise SriError(f"{weights} holds an unreadable copy of the guard's thresholds; refit with "
                       "`sri guard fit`") from None
    from ..tracing.store import _difference_path

    for name in DECISION_FIELDS:
        if not isinstance(saved, dict) or json.loads(json.dumps(meta.get(name))) != saved.get(name):
            where, got, was = _difference_path({name: json.loads(json.dumps(meta.get(name)))},
                                               {name: saved.get(name) if isinstance(saved, dict) else None})
            raise SriError(f"{meta_file} field {where} is {clip(got)} but the guard was fitted with {clip(was)} "
                           f"(guard.json was edited); {fix}")


def _read_guard_meta(meta_file: Path) -> dict[str, Any]:
    """``guard.json`` after checking its structure: one line naming the first missing or mistyped field."""
    meta = read_json(meta_file)
    fix = "restore it or refit with `sri guard fit`"
    if not isinstance(meta, dict):
        raise SriError(f"{meta_file} is a JSON {type(meta).__name__}, not an object; {fix}")
    if meta.get("format") != GUARD_FORMAT:
        raise SriError(f"{meta_file} has format {meta.get('format')!r}, expected {GUARD_FORMAT}; "
                       "refit with `sri guard fit`")

    def bad(name: str, what: str) -> SriError:
        got = "missing" if name not in meta else repr(meta[name])[:60]
        return SriError(f"{meta_file} field {name} is {got}, expected {what}; {fix}")

    def number(value: Any) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)

    key = meta.get("key")
    if not isinstance(key, dict):
        raise bad("key", "an object (the signals' key)")
    steps = key.get("steps")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps <= 0:
        raise SriError(f"{meta_file} field key.steps is {'missing' if steps is None else repr(steps)}, expected a "
                       f"positive whole number; {fix}")
    q = meta.get("quantile")
    if not number(q) or not 0 < q < 1:
        raise bad("quantile", "a number in (0, 1)")
    if not number(meta.get("threshold")):
        raise bad("threshold", "a finite number")
    for name in ("stream_thresholds", "detectors"):
        if not isinstance(meta.get(name), dict):
            raise bad(name, "an object keyed by prefix length")
        for t, v in meta[name].items():
            if not t.isdigit() or not 1 <= int(t) <= steps:
                raise SriError(f"{meta_file} field {name} has prefix {t!r}, expected a step in 1..{steps}; {fix}")
            ok = number(v) if name == "stream_thresholds" else (
                isinstance(v, dict) and isinstance(v.get("kind"), str) and isinstance(v.get("params"), dict)
                and "seed" in v and isinstance(v.get("dim"), int))
            if not ok:
                raise SriError(f"{meta_file} field {name}.{t} is {v!r}, expected "
                               f"{'a finite number' if name == 'stream_thresholds' else 'a detector config'}; "
                               f"{fix}")
    if str(steps) not in meta["detectors"]:
        raise SriError(f"{meta_file} field detectors has no full-signal detector (prefix {steps} = key.steps); "
                       f"{fix}")
    missing = sorted(set(meta["stream_thresholds"]) - set(meta["detectors"]), key=int)
    if missing:
        raise SriError(f"{meta_file} field stream_thresholds names prefix {missing[0]} with no detector; {fix}")
    anchors = meta.get("anchors", "missing")
    if anchors is not None and not (isinstance(anchors, dict) and number(anchors.get("tau"))
                                    and number(anchors.get("eps"))):
        raise SriError(f"{meta_file} field anchors is {anchors!r}, expected null or {{tau, eps}} numbers; {fix}")
    if not isinstance(meta.get("refusal_text"), str):
        raise bad("refusal_text", "a string")
    if not isinstance(meta.get("tensors_sha256"), str):
        raise bad("tensors_sha256", "the sha256 of guard.safetensors")
    return meta


# ------------------------------------------------------------------------------------------------ fitting
def signal_matrix(rows: Sequence[dict[str, Any]], what: str, field_name: str = "sri") -> tuple[np.ndarray,
                                                                                              dict[str, Any]]:
    """``[N, T]`` signals of ``sri signal`` rows and their shared key; one-line errors for anything else."""
    if not rows:
        raise SriError(f"{what} hold no signals; create them with `sri signal`")
    key = rows[0].get("key")
    for i, r in enumerate(rows):
        if not isinstance(r.get(field_name), list) or not isinstance(r.get("key"), dict):
            raise SriError(f"{what} row {i + 1} lacks '{field_name}' or 'key'; it is not a `sri signal` row")
        if r["key"] != key:
            raise IncompatibleError(f"{what} mix signals with different keys (row {i + 1}); use one model, layer, "
                                    "pooling and step count per file")
    lengths = {len(r[field_name]) for r in rows}
    if len(lengths) != 1:
        raise SriError(f"{what} mix signals of lengths {sorted(lengths)}; use one step count per file")
    return np.asarray([r[field_name] for r in rows], dtype=np.float64), dict(key)  # type: ignore[arg-type]


def check_benign(rows: Sequence[dict[str, Any]], what: str) -> None:
    """The guard never sees harmful or jailbreak data: refuse rows labelled so."""
    bad = [r.get("id", i) for i, r in enumerate(rows)  # ' Harmful ' is harmful too
           if str(r.get("label", "")).strip().lower() in NOT_BENIGN_LABELS]
    if bad:
        raise SriError(f"{what} contain {len(bad)} rows labelled harmful/jailbreak (e.g. {bad[0]!r}); a guard is "
                       "fitted and calibrated on benign signals only")


def fit_guard(
    benign: Sequence[dict[str, Any]],
    calibrate: Sequence[dict[str, Any]],
    *,
    detector: str = "ae",
    quantile: float = 0.99,
    seed: int = 0,
    stream: str = "union",
    min_prefix: int = 1,
    every: int = 1,
    anchors: Anchors | None = None,
    refusal_text: str = DEFAULT_REFUSAL,
    detector_params: dict[str, Any] | None = None,
    sources: dict[str, str] | None = None,
) -> Guard:
    """Fit detectors on ``benign`` signal rows and set thresholds on the held-out ``calibrate`` rows.

    Streaming prefixes are t = min_prefix, min_prefix + every, … and T: the guard decides at those steps only
    (``every`` > 1 trades how soon it can stop for less work per step)."""
    if not 0 < quantile < 1:
        raise SriError(f"quantile must be in (0, 1) (got {quantile}); e.g. 0.99 for a 1% benign flag rate")
    if stream not in STREAM_MODES:
        raise SriError(f"stream mode '{stream}' is unknown; use one of {', '.join(STREAM_MODES)}")
    if is_blank(refusal_text):
        raise SriError("the refusal text is empty; a flagged generation must be answered with visible text (e.g. "
                       f"{DEFAULT_REFUSAL!r})")
    check_benign(benign, "benign signals")
    check_benign(calibrate, "calibration signals")
    for rows, what in ((benign, "benign signals"), (calibrate, "calibration signals")):
        seen: set[str] = set()
        for r in rows:
            if r.get("id") is None:
                continue
            if repr(r["id"]) in seen:
                raise SriError(f"{what} hold id {clip(r['id'])} twice; each signal needs its own id (remove the "
                               "duplicate)")
            seen.add(repr(r["id"]))
    x, key = signal_matrix(benign, "benign signals")
    c, c_key = signal_matrix(calibrate, "calibration signals")
    if float(np.ptp(x, axis=0).max()) < 1e-9:  # every benign signal the same: no detector can learn a spread
        raise SriError("the benign signals are all identical (zero variance), so the guard would flag everything "
                       "or nothing; fit it on signals of many different benign prompts")
    check_compatible(key, c_key, "benign signals", "calibration signals", SIGNAL_KEY_FIELDS)
    if x.shape[1] != c.shape[1]:
        raise IncompatibleError(f"benign signals have {x.shape[1]} steps, calibration {c.shape[1]}; use one T")
    anchor_pair = None if anchors is None else _anchors_for(anchors, key)
    def same(r: dict[str, Any]) -> set[Any]:  # what makes two rows one prompt: its id or its text
        prompt = r.get("prompt")
        return {("id", str(r.get("id")))} | ({("prompt", prompt)} if isinstance(prompt, str) else set())

    seen = set().union(*(same(r) for r in benign))
    overlap = [r.get("id") for r in calibrate if same(r) & seen]
    if overlap:
        raise SriError(f"{len(overlap)} calibration signals are also in the benign fit set (e.g. {overlap[0]!r}: "
                       "the same id or prompt); calibrate on held-out prompts")
    steps = x.shape[1]
    if not 1 <= min_prefix <= steps:
        raise SriError(f"min prefix must be in [1, {steps}] (got {min_prefix})")
    if every < 1:
        raise SriError(f"--stream-every must be ≥ 1 (got {every})")
    if stream == "off" and (min_prefix, every) != (1, 1):
        given = " and ".join(f"{name} {value}" for name, value in (("--min-prefix", min_prefix),
                                                                   ("--stream-every", every)) if value != 1)
        both = " and " in given
        raise SriError(f"{given} {'apply' if both else 'applies'} to the streaming guard only; with --stream off "
                       f"drop {'them' if both else 'it'}, or choose --stream union")
    params = detector_params or {}
    prefixes = sorted({*range(min_prefix, steps + 1, every), steps}) if stream != "off" else [steps]
    detectors = {t: make_detector(detector, seed=seed, **params).fit(x[:, :t]) for t in prefixes}
    cal_scores = {t: detectors[t].score(c[:, :t]) for t in prefixes}
    threshold = float(np.quantile(cal_scores[steps], quantile))
    stream_thresholds, level = {}, None
    if stream == "per-prefix":
        level = quantile
        stream_thresholds = {t: float(np.quantile(s, quantile)) for t, s in cal_scores.items()}
    elif stream == "union":
        level, stream_thresholds = _union_calibration(cal_scores, quantile)
    first = _first(cal_scores, stream_thresholds) if stream_thresholds else None
    info = {
        "sri_version": __version__,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "detector_kind": detector,
        "stream": stream,
        "stream_level": level,
        "stream_every": every,
        "counts": {"benign": len(x), "calibrate": len(c)},
        "calibration": {
            "flag_rate_full": float((cal_scores[steps] > threshold).mean()),
            "flag_rate_stream": None if first is None else float((first > 0).mean()),
        },
        "trained_on": "benign signals only (no harmful or jailbreak data)",
        "sources": sources or {},
    }
    return Guard(detectors=detectors, threshold=threshold, stream_thresholds=stream_thresholds, quantile=quantile,
                 key=key, anchors=anchor_pair, refusal_text=refusal_text, info=info)


def _union_calibration(cal_scores: dict[int, np.ndarray], quantile: float) -> tuple[float, dict[int, float]]:
    """The smallest common quantile level q' ∈ [q, 1] whose per-prefix thresholds flag at most 1 − q of the
    calibration signals at any prefix (bisection; the flag rate only falls as q' rises)."""
    target = 1 - quantile

    def thresholds(level: float) -> dict[int, float]:
        return {t: float(np.quantile(s, level)) for t, s in cal_scores.items()}

    def rate(level: float) -> float:
        return float((_first(cal_scores, thresholds(level)) > 0).mean())

    lo, hi = quantile, 1.0
    if rate(lo) <= target:
        return lo, thresholds(lo)
    for _ in range(40):
        mid = (lo + hi) / 2
        if rate(mid) <= target:
            hi = mid
        else:
            lo = mid
    return hi, thresholds(hi)


def _first(scores: dict[int, np.ndarray], thresholds: dict[int, float]) -> np.ndarray:
    n = len(next(iter(scores.values())))
    first = np.zeros(n, dtype=np.int64)
    for t in sorted(thresholds):
        hit = (scores[t] > thresholds[t]) & (first == 0)
        first[hit] = t
    return first


def _sigmas(signals: np.ndarray) -> np.ndarray:
    """``signals`` as float64 ``[N, T]``; :class:`SriError` for values that are no SRI signal (σ_t ∈ [0, 1])."""
    x = np.asarray(signals, dtype=np.float64)
    finite = np.isfinite(x)
    if not finite.all() or (x.size and not ((x >= 0) & (x <= 1)).all()):
        shown = "NaN or infinite values" if not finite.all() else f"values outside [0, 1] (min {x.min():.4g}, max " \
                f"{x.max():.4g})"
        raise SriError(f"signals contain {shown}, where every SRI signal lies in [0, 1]; recompute them with "
                       "`sri signal`")
    return x


def _anchors_for(anchors: Anchors, key: dict[str, Any]) -> StepAnchors:
    check_compatible(anchors.key, key, "anchors", "signals", KEY_FIELDS)
    if key.get("anchors") != anchors.digest:
        raise IncompatibleError(f"the signals were computed with other anchors (digest {clip(key.get('anchors'))}, "
                                f"these are {anchors.digest}); give the anchor file the signals were computed with, "
                                "or recompute the signals with this one (`sri signal --anchors`)")
    layer = key.get("layer")
    if layer not in anchors.harmless:
        raise IncompatibleError(f"anchors have no layer {layer} (they have {anchors.layers}); give the anchors the "
                                "signals were computed with")
    return StepAnchors(anchors.harmless[layer].float(), anchors.harmful[layer].float(), anchors.tau, anchors.eps)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
