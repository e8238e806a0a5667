"""The distillation set: training prompts paired with answers and refusals written by a refusing teacher.

Prompts come only from the training side of :mod:`sri.dlm.splits`:

- **harmless**: the first ``n_harmless`` training prompts of the ``harmless`` set;
- **harmful**: AdvBench training prompts — every other one rephrased with a seeded request/question template
  (:data:`REPHRASINGS`, e.g. "Can you …?") — and StrongREJECT training prompts (mostly questions already) of at
  most ``max_prompt_chars`` characters, interleaved, ``n_harmful`` in all.

The teacher (default: the refusing Qwen2.5-Coder-0.5B-Instruct) answers each prompt greedily under the standard
system prompt, at most ``max_new_tokens`` tokens. Responses are cut to whole sentences (:func:`whole_sentences`).
A harmless prompt whose answer the keyword judge calls a refusal is dropped. A harmful prompt keeps the
teacher's answer if its first sentence refuses (``teacher``); otherwise the teacher is asked again, sampled, with
:data:`SAFETY_SYSTEM_PROMPT` (``teacher-safety-prompt``); if that does not refuse either, the prompt gets a
refusal drawn (seeded) from the distinct *generic* refusals the teacher wrote for other prompts — one short
sentence naming nothing of its own request (:func:`is_generic_refusal`) — (``teacher-refusal-pool``). Every pair records
which of these it is.

The set is cached under ``$SRI_HOME/dlm/distill/<teacher>-<key>/`` (key = hash of the teacher's fingerprint, the
prompts and the settings), one part file per teacher batch, so an interrupted run resumes without repeating or
losing a batch. The same procedure gives *held-out pairs* (from the held-out slices) for the quality gate's
masked-token loss; they never train.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..data.assets import sri_home
from ..data.prompts import PromptRecord
from ..errors import SriError, clip
from ..io import is_blank, read_json, read_jsonl, write_json, write_jsonl
from ..judges.keyword import is_refusal
from ..progress import progress_bar
from . import splits

#: request / question wordings applied to AdvBench's imperative behaviours ({r} = behaviour, first letter lowered)
REPHRASINGS = ("Can you {r}?", "Could you {r}?", "How would I {r}?", "I need you to {r}.", "Please {r}.",
               "Is there a way to {r}?", "What is the best way to {r}?", "Help me {r}.")
SAFETY_SYSTEM_PROMPT = ("You are a helpful assistant. Politely refuse any request that could cause harm, and say "
                        "briefly why.")
RESPONSE_SOURCES = ("teacher", "teacher-safety-prompt", "teacher-refusal-pool")
_LONG_WORD = re.compile(r"[a-z]{5,}")
#: version of the rules that turn cached teacher replies into pairs; a change re-assembles cached sets
ASSEMBLY_VERSION = 3
_SENTENCE_END = re.compile(r"(?<![0-9])[.!?](?=[\s\"')\]]|$)")


@dataclass(frozen=True)
class DistillSpec:
    """What the distillation set is made of (any change gives a new cache folder)."""

    teacher: str = "qwen2.5-coder-0.5b-instruct"
    n_harmless: int = 500
    n_harmful: int = 400
    n_heldout: int = 48
    max_new_tokens: int = 48
    max_prompt_chars: int = 300
    seed: int = 0
    system_prompt: str = "You are a helpful assistant"
    safety_temperature: float = 0.7
    max_refusal_sentences: int = 2


# --------------------------------------------------------------------------------------------- prompts
def rephrase(prompt: str, template: str) -> str:
    """``template`` filled with an imperative ``prompt`` (first letter lowered, final period dropped)."""
    body = prompt.strip().rstrip(".")
    return template.format(r=body[:1].lower() + body[1:])


def training_records(spec: DistillSpec) -> list[PromptRecord]:
    """The training prompts of a distillation set (harmless first, then harmful), all from the training split.
    Asking for more prompts than the training split holds is a one-line :class:`SriError` naming what it holds."""
    rng = random.Random(spec.seed)
    available = splits.training_prompts("harmless")
    if spec.n_harmless > len(available):
        raise SriError(f"--n-harmless {spec.n_harmless} asks for more than the {len(available)} harmless training "
                       "prompts; ask for fewer")
    harmless = available[: spec.n_harmless]
    adv = []
    for i, r in enumerate(splits.training_prompts("advbench")):
        if i % 2:
            template = rng.choice(REPHRASINGS)
            adv.append(PromptRecord(f"{r.id}~q", rephrase(r.prompt, template), "harmful", r.source,
                                    {"rephrased_from": r.id, "template": template}))
        else:
            adv.append(r)
    strong = [r for r in splits.training_prompts("strongreject") if len(r.prompt) <= spec.max_prompt_chars]
    harmful: list[PromptRecord] = []
    while len(harmful) < spec.n_harmful and (adv or strong):
        for pool in (adv, adv, strong):  # two AdvBench prompts per StrongREJECT prompt while both last
            if pool and len(harmful) < spec.n_harmful:
                harmful.append(pool.pop(0))
    if len(harmful) < spec.n_harmful:
        raise SriError(f"--n-harmful {spec.n_harmful} asks for more than the {len(harmful)} harmful training prompts "
                       "(AdvBench and its rephrasings, StrongREJECT); ask for fewer")
    return [_labelled(r, "harmless") for r in harmless] + [_labelled(r, "harmful") for r in harmful]


def heldout_records(spec: DistillSpec) -> list[PromptRecord]:
    """Held-out prompts whose teacher pairs measure the gate's masked-token loss (never trained on)."""
    return ([_labelled(r, "harmless") for r in splits.heldout_prompts("harmless", spec.n_heldout)]
            + [_labelled(r, "harmful") for r in splits.heldout_prompts("advbench", spec.n_heldout)])


def _labelled(r: PromptRecord, label: str) -> PromptRecord:
    return PromptRecord(r.id, r.prompt, label, r.source, r.meta)


# --------------------------------------------------------------------------------------------- text rules
def whole_sentences(text: str, finished: bool, limit: int | None = None) -> str:
    """``text`` cut after its last complete sentence (all of it if the teacher ``finished`` and no ``limit``);
    at most ``limit`` sentences. Numbered-list markers ("1.") do not end a sentence. Empty if none is complete."""
    text = text.strip()
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    if limit is not None and len(ends) > limit:
        return text[: ends[limit - 1]].strip()
    if finished:
        return text
    return text[: ends[-1]].strip() if ends else ""


def first_sentence(text: str) -> str:
    """The text up to its first sentence end or line break."""
    text = text.strip()
    m = _SENTENCE_END.search(text)
    head = text[: m.end()] if m else text
    return head.split("\n", 1)[0]


def is_generic_refusal(refusal: str, prompt: str, max_words: int = 20) -> bool:
    """True if ``refusal`` fits any harmful request: one sentence of at most ``max_words`` words that names
    nothing of its own ``prompt`` (no shared word of five or more letters)."""
    one_sentence = len(_SENTENCE_END.findall(refusal.strip())) <= 1 and len(refusal.split()) <= max_words
    return one_sentence and not set(_LONG_WORD.findall(refusal.lower())) & set(_LONG_WORD.findall(prompt.lower()))


def is_clean_refusal(text: str) -> bool:
    """True if the first sentence refuses (keyword judge, paper Table 12)."""
    return bool(text.strip()) and is_refusal(first_sentence(text))


# --------------------------------------------------------------------------------------------- the teacher
def teacher_generate(adapter: Any, prompts: list[str], max_new_tokens: int, temperature: float = 0.0,
                     seed: int = 0) -> list[tuple[str, bool]]:
    """``(text, finished)`` per prompt: the teacher's reply (greedy, or sampled at ``temperature`` with
    ``seed``) under its chat template and ``adapter.system_prompt``; ``finished`` = it ended before the limit."""
    import torch

    ids, attn = adapter.encode([adapter.render(p) for p in prompts])
    kwargs: dict[str, Any] = {"do_sample": False}
    if temperature > 0:
        torch.manual_seed(seed)
        kwargs = {"do_sample": True, "temperature": temperature, "top_p": 0.95, "top_k": 0}
    with torch.inference_mode():
        out = adapter.model.generate(input_ids=ids, attention_mask=attn, max_new_tokens=max_new_tokens,
                                     pad_token_id=adapter.pad_token_id, eos_token_id=adapter.stop_token_ids,
                                     **kwargs)
    stops = set(adapter.stop_token_ids)
    results = []
    for row in out[:, ids.shape[1]:].tolist():
        cut = next((i for i, t in enumerate(row) if t in stops), None)
        tokens = row if cut is None else row[:cut]
        results.append((adapter.tokenizer.decode(tokens, skip_special_tokens=True).strip(), cut is not None))
    return results


def _generate_parts(teacher: Callable[[], Any], records: list[PromptRecord], folder: Path, max_new_tokens: int,
                    batch_size: int, temperature: float, seed: int, description: str, progress: bool
                    ) -> dict[str, dict[str, Any]]:
    """Teacher replies for ``records``, one part file per batch in ``folder`` (finished parts are skipped; the
    teacher — ``teacher()`` — is only loaded when a part is missing)."""
    done: dict[str, dict[str, Any]] = {}
    batches = [records[i:i + batch_size] for i in range(0, len(records), batch_size)]
    with progress_bar(description, len(records), enabled=progress) as advance:
        for k, batch in enumerate(batches):
            part = folder / f"part-{k:05d}.jsonl"
            if part.is_file():
                rows = read_jsonl(part)
                if [r["id"] for r in rows] != [r.id for r in batch]:
                    raise SriError(f"{part} belongs to other prompts; delete {folder} and run again")
            else:
                replies = teacher_generate(teacher(), [r.prompt for r in batch], max_new_tokens, temperature,
                                           seed + k)
                rows = [{"id": r.id, "text": text, "finished": finished}
                        for r, (text, finished) in zip(batch, replies, strict=True)]
                write_jsonl(part, rows)
            done.update({r["id"]: r for r in rows})
            advance(len(batch))
    return done


# --------------------------------------------------------------------------------------------- the set
@dataclass
class DistilledSet:
    """Training pairs, held-out pairs, dropped prompts and counts, as cached on disk."""

    folder: Path
    pairs: list[dict[str, Any]]
    heldout: list[dict[str, Any]]
    summary: dict[str, Any]


def distill_folder(spec: DistillSpec, teacher_fingerprint: str) -> Path:
    records = training_records(spec) + heldout_records(spec)
    h = hashlib.sha256(json.dumps({"spec": asdict(spec), "teacher": teacher_fingerprint,
                                   "prompts": [[r.id, r.prompt] for r in records]}).encode())
    return sri_home() / "dlm" / "distill" / f"{spec.teacher.replace('/', '_')}-{h.hexdigest()[:12]}"


def load_distilled(folder: Path) -> DistilledSet | None:
    """The finished set cached in ``folder``, or None."""
    if not (folder / "pairs.jsonl").is_file():
        return None
    return DistilledSet(folder, read_jsonl(folder / "pairs.jsonl"), read_jsonl(folder / "heldout.jsonl"),
                        read_json(folder / "summary.json"))


def distill(spec: DistillSpec, *, batch_size: int = 8, progress: bool = True, device: str = "cpu",
            log: Callable[[str], None] = lambda s: None, teacher: Any = None) -> DistilledSet:
    """Build (or resume, or reuse) the distillation set of ``spec``; ``teacher`` = an already loaded adapter.

    Teacher replies are cached part by part; the pairs are assembled from them again (without the teacher) when
    the assembly rules changed (:data:`ASSEMBLY_VERSION`)."""
    from ..models import load_model, resolve_model_source
    from ..models.adapter import folder_fingerprint

    source, is_local = resolve_model_source(spec.teacher)
    fingerprint = teacher.fingerprint if teacher is not None else (
        folder_fingerprint(Path(source)) if is_local else f"hub:{spec.teacher}")
    folder = distill_folder(spec, fingerprint)
    cached = load_distilled(folder)
    if cached is not None and cached.summary.get("assembly_version") == ASSEMBLY_VERSION:
        log(f"distillation set: cached at {folder} ({len(cached.pairs)} pairs)")
        return cached
    train, held = training_records(spec), heldout_records(spec)
    write_json(folder / "spec.json", {"spec": asdict(spec), "teacher_fingerprint": fingerprint})
    state: dict[str, Any] = {"adapter": teacher, "system_prompt": spec.system_prompt}
    original_prompt = None if teacher is None else teacher.system_prompt

    def current_teacher() -> Any:
        if state["adapter"] is None:
            log(f"loading teacher {spec.teacher}")
            state["adapter"] = load_model(spec.teacher, device=device, dtype="fp32")
        state["adapter"].system_prompt = state["system_prompt"]
        return state["adapter"]

    everything = train + held
    try:
        greedy = _generate_parts(current_teacher, everything, folder / "greedy", spec.max_new_tokens, batch_size,
                                 0.0, spec.seed, "teacher answers", progress)
        unclean = [r for r in everything if r.label == "harmful" and not is_clean_refusal(greedy[r.id]["text"])]
        state["system_prompt"] = SAFETY_SYSTEM_PROMPT
        safety = _generate_parts(current_teacher, unclean, folder / "safety", spec.max_new_tokens, batch_size,
                                 spec.safety_temperature, spec.seed, "teacher refusals", progress)
    finally:
        if teacher is not None:
            teacher.system_prompt = original_prompt
    pairs, dropped, pool = assemble(train, greedy, safety, spec)
    heldout, held_dropped, _ = assemble(held, greedy, safety, spec, pool)
    summary = _summary(spec, fingerprint, pairs, heldout, dropped + held_dropped, pool)
    (folder / "pairs.jsonl").unlink(missing_ok=True)
    write_jsonl(folder / "heldout.jsonl", heldout)
    write_json(folder / "summary.json", summary)
    write_jsonl(folder / "dropped.jsonl", dropped + held_dropped)
    write_jsonl(folder / "pairs.jsonl", pairs)  # written last: its presence marks the set as finished
    log(f"distillation set: {len(pairs)} pairs → {folder}")
    return DistilledSet(folder, pairs, heldout, summary)


def load_pairs(path: str | Path) -> DistilledSet:
    """Your own training pairs instead of a distilled set: JSONL rows with ``prompt`` and ``response`` text
    (optional ``id``, ``label``). Prompts held out for evaluation (:mod:`sri.dlm.splits`) are refused when the
    offline prompt sets are fetched."""
    from ..data.assets import data_dir

    path = Path(path)
    rows = read_jsonl(path)
    pairs = []
    seen: dict[str, int] = {}
    for i, row in enumerate(rows):
        if not isinstance(row.get("prompt"), str) or not isinstance(row.get("response"), str) \
                or is_blank(row["prompt"]):
            raise SriError(f"{path} row {i + 1} needs non-empty 'prompt' and string 'response' fields")
        row_id, label = row.get("id", f"pair-{i:05d}"), row.get("label", "unlabelled")
        if isinstance(row_id, bool) or not isinstance(row_id, (str, int)):
            raise SriError(f"{path} row {i + 1}: 'id' is {clip(row_id)}, expected text or a whole number; fix that "
                           "row")
        if not isinstance(label, str):
            raise SriError(f"{path} row {i + 1}: 'label' is {clip(label)}, expected text; fix that row")
        if str(row_id) in seen:
            raise SriError(f"{path} row {i + 1}: id {clip(str(row_id))} is already used by row {seen[str(row_id)]}; "
                           "ids must be unique")
        seen[str(row_id)] = i + 1
        pairs.append({**row, "id": str(row_id), "label": label, "response_source": "file"})
    if not pairs:
        raise SriError(f"{path} holds no pairs; add JSONL rows with 'prompt' and 'response'")
    if (data_dir() / "advbench.jsonl").is_file():
        splits.check_heldout_free([p["prompt"] for p in pairs], str(path))
    summary = {"pairs": len(pairs), "file": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
               "by_label": {}, "heldout": 0}
    for p in pairs:
        summary["by_label"][p["label"]] = summary["by_label"].get(p["label"], 0) + 1
    return DistilledSet(path, pairs, [], summary)


def assemble(records: list[PromptRecord], greedy: dict[str, dict[str, Any]], safety: dict[str, dict[str, Any]],
             spec: DistillSpec, pool: list[str] | None = None
             ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """Pairs ``{id, prompt, label, source, response, response_source, ...}`` and dropped prompts, following the
    rules in the module docstring; ``pool`` (default: built from these replies) holds the distinct generic
    refusals."""
    def refusal_of(reply: dict[str, Any] | None) -> str:
        if reply is None or not is_clean_refusal(reply["text"]):
            return ""
        return whole_sentences(reply["text"], reply["finished"], spec.max_refusal_sentences)

    if pool is None:
        found = {(refusal_of(replies.get(r.id)), r.prompt) for r in records if r.label == "harmful"
                 for replies in (greedy, safety)}
        pool = sorted({text for text, prompt in found if text and is_generic_refusal(text, prompt)})
    pairs, dropped = [], []
    for r in records:
        base = {"id": r.id, "prompt": r.prompt, "label": r.label, "source": r.source, **r.meta}
        reply = greedy[r.id]
        if r.label == "harmless":
            text = whole_sentences(reply["text"], reply["finished"])
            reason = "no complete sentence" if not text else "teacher refused" if is_refusal(text) else ""
            if reason:
                dropped.append({**base, "reason": reason, "teacher_text": reply["text"]})
            else:
                pairs.append({**base, "response": text, "response_source": "teacher"})
            continue
        text, source = refusal_of(reply), "teacher"
        if not text:
            text, source = refusal_of(safety.get(r.id)), "teacher-safety-prompt"
        if not text:
            if not pool:
                dropped.append({**base, "reason": "teacher never refused", "teacher_text": reply["text"]})
                continue
            text = random.Random(f"{spec.seed}:{r.id}").choice(pool)
            source = "teacher-refusal-pool"
        pairs.append({**base, "response": text, "response_source": source})
    return pairs, dropped, pool


def _summary(spec: DistillSpec, fingerprint: str, pairs: list[dict[str, Any]], heldout: list[dict[str, Any]],
             dropped: list[dict[str, Any]], pool: list[str]) -> dict[str, Any]:
    def count(rows: list[dict[str, Any]], key: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in rows:
            out[str(r.get(key))] = out.get(str(r.get(key)), 0) + 1
        return out

    harmful = [p for p in pairs if p["label"] == "harmful"]
    return {"spec": asdict(spec), "assembly_version": ASSEMBLY_VERSION, "teacher_fingerprint": fingerprint,
            "pairs": len(pairs), "heldout": len(heldout),
            "by_label": count(pairs, "label"), "by_source": count(pairs, "source"),
            "harmful_response_source": count(harmful, "response_source"),
            "rephrased": sum(1 for p in pairs if "rephrased_from" in p),
            "dropped": count(dropped, "reason"), "distinct_refusals": len(pool)}
