"""Trace prompts step by step into a :class:`~sri.tracing.store.TraceStore` (batched, resumable)."""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data.prompts import PromptRecord
from ..errors import SriError
from ..limits import DEFAULT_MAX_PROMPT_TOKENS
from ..models import ModelAdapter
from ..pooling import POOLINGS, StateCollector, get_pooling
from ..progress import progress_bar
from ..sampling import SAMPLERS, ARConfig, StepObserver, resolve_sampler
from .store import TraceStore


def trace_key(adapter: ModelAdapter, sampler: Any, layers: list[int], pooling: str) -> dict[str, Any]:
    """The compatibility key every artefact derived from these traces carries.

    :data:`sri.tracing.store.KEY_FIELDS` are the fields that must agree before states are combined; each is there
    because it changes the states or the tokens:

    - ``fingerprint``, ``hidden_size`` — the weights (``model`` and ``num_layers`` are recorded for reading).
    - ``sampler``, ``steps`` — what one step is, and how many there are.
    - ``pooling``, ``after_end`` — how per-step states are pooled, and the rule after a sequence ends
      (see :mod:`sri.pooling`).
    - ``system_prompt`` — part of every rendered prompt, so it moves every state.
    - ``dtype`` — fp32, bf16 and fp16 forward passes give different states (and, at near-ties, other tokens).
    - ``decoding`` — the sampler settings that change which tokens are produced. AR: ``temperature`` and
      ``ignore_eos``; ``top_k``, ``top_p`` and ``seed`` only when ``temperature`` > 0 (greedy decoding ignores
      them). Diffusion: ``schedule``, ``gen_length``, ``block_length``, ``remasking``, ``temperature``,
      ``cfg_scale``, the mask id and logit shift; ``top_k``, ``top_p``, ``eps``, ``alg_temp`` under the
      dream-native schedule only (the llada one ignores them); ``seed`` only when something is drawn
      (temperature > 0, ``random``/``origin`` remasking, ``alg_temp`` > 0). Both: the stop ids (``--stop-token``
      and the model's EOS ids decide where a response ends, hence what is pooled after it), unless
      ``ignore_eos``.

    Deliberately left out: batch size (batched and one-at-a-time traces agree up to float noise, see
    ``tests/test_ar_tracer.py``), device (the same computation, float noise apart), ``num_blocks`` /
    ``steps_per_block`` (derived from the fields above), ``max_prompt_tokens`` (a check, not a setting), a
    streaming guard (recorded in the settings; the rows it stopped say so in ``ended_by``). ``layers`` is
    recorded but not compared: each consumer checks that the layers it reads are there."""
    from ..sampling import resolve_sampler

    if sampler.kind == "diffusion" and adapter.family.kind == "masked-diffusion":
        sampler = resolve_sampler(sampler, adapter)  # the schedule that runs, whether or not it was given
    if sampler.kind == "ar":
        decoding: dict[str, Any] = {"temperature": float(sampler.temperature), "ignore_eos": bool(sampler.ignore_eos)}
        if sampler.temperature > 0:  # one random stream per prompt (sri.sampling.ar.prompt_generators)
            decoding.update(top_k=sampler.top_k, top_p=float(sampler.top_p), seed=sampler.seed,
                            random_stream="per-prompt")
    else:
        decoding = {k: getattr(sampler, k) for k in ("schedule", "gen_length", "block_length", "remasking")}
        decoding.update(temperature=float(sampler.temperature), cfg_scale=float(sampler.cfg_scale),
                        mask_token_id=adapter.family.mask_token_id, logit_shift=adapter.family.logit_shift)
        dream = sampler.schedule == "dream-native"
        if dream:
            decoding.update(top_k=sampler.top_k, top_p=sampler.top_p, eps=sampler.eps, alg_temp=sampler.alg_temp)
        if sampler.temperature > 0 or sampler.remasking in ("random", "origin") or (dream and sampler.alg_temp > 0):
            decoding["seed"] = sampler.seed
    if not getattr(sampler, "ignore_eos", False):
        decoding["stop_token_ids"] = [int(i) for i in adapter.stop_token_ids]
    m = adapter.key()
    return {"model": m["model"], "fingerprint": m["fingerprint"], "hidden_size": m["hidden_size"],
            "num_layers": m["num_layers"], "sampler": sampler.name, "steps": sampler.steps, "pooling": pooling,
            "after_end": POOLINGS[pooling].after_end, "layers": layers, "system_prompt": adapter.system_prompt,
            "dtype": str(adapter.dtype).removeprefix("torch."), "decoding": decoding}


def trace_prompts(
    adapter: ModelAdapter,
    records: Sequence[PromptRecord],
    out: str | Path,
    *,
    sampler: Any = None,
    layers: str | list[int] = "final",
    pooling: str | None = None,
    batch_size: int = 8,
    max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS,
    observers: Sequence[StepObserver] = (),
    progress: bool = True,
    description: str = "tracing",
    extra_settings: dict[str, Any] | None = None,
    execution: Any = None,
) -> TraceStore:
    """Generate from every prompt, keeping per-step pooled states and texts; skip ids already in ``out``.

    Prompts are checked (length) before anything is written, batched by length to limit padding, and every
    batch is written as one atomic shard, so an interrupted run resumes without losing or duplicating records.
    Observers may add per-row fields through ``result.extra['row_fields']`` (e.g. a guard's verdicts);
    ``extra_settings`` (e.g. the guard used) are recorded with the settings, so a resume must use the same ones.
    The sampler's model-dependent defaults (the diffusion schedule) are resolved for ``adapter`` first, so the
    settings record what ran.

    Three parts: :func:`plan_trace` (everything above, and the length-sorted batches) → an executor that yields
    finished batches (``execution``, an :class:`sri.tracing.executors.Execution`; default: this process, one batch after
    another) → this process writes each batch with the store. Execution settings are not part of the run's key,
    so a run may be resumed on another backend. With ``execution.max_failed_batches`` > 0, failing batches are
    skipped (counted in ``store.failed_batches``; re-running retries them).
    """
    from .executors import Execution, make_executor

    execution = execution or Execution()
    created = not Path(out).exists()
    plan = plan_trace(adapter, records, out, sampler=sampler, layers=layers, pooling=pooling,
                      batch_size=batch_size, max_prompt_tokens=max_prompt_tokens, extra_settings=extra_settings)
    try:
        executor = make_executor(execution)
        outcomes = executor.run(adapter, plan, observers)
        return write_batches(plan, outcomes, max_failed=execution.max_failed_batches, progress=progress,
                             description=description, log=execution.log)
    except BaseException:
        if created and not any((Path(out) / "shards").glob("*.safetensors")):
            shutil.rmtree(out, ignore_errors=True)  # failed before its first batch (e.g. no Ray cluster): no trace
        raise


@dataclass(frozen=True)
class BatchJob:
    """What a process needs, besides the model, to run any batch of a plan (picklable: shipped to workers)."""

    sampler: Any
    layer_ids: list[int]
    pooling: str


@dataclass
class TracePlan:
    """A planned trace: the store to write, every prompt rendered and counted, and the batches still to run
    (indices into ``records``, length-sorted, ``batch_size`` each — exactly the local tracer's batches)."""

    store: TraceStore
    meta: dict[str, Any]  # key, settings, model and pooling as computed now (the store may hold older ones)
    records: Sequence[PromptRecord]
    rendered: list[str]
    lengths: list[int]
    job: BatchJob
    batches: list[list[int]]

    def texts(self, batch: int) -> list[str]:
        return [self.rendered[i] for i in self.batches[batch]]


@dataclass
class BatchOutput:
    """One finished batch: per-row generation fields and observer fields, timings and pooled states."""

    gens: list[dict[str, Any]]
    row_fields: list[dict[str, Any]]
    timings: dict[str, Any]
    wall: float
    states: dict[int, torch.Tensor]
    finished: float = 0.0  # time.time() when the batch finished, where it ran (benchmarks; not written)


@dataclass
class BatchOutcome:
    """What an executor yields per batch: its output, or the error that stopped it (``exc`` when local)."""

    batch: int
    output: BatchOutput | None = None
    error: str | None = None
    exc: BaseException | None = None


def trace_meta(adapter: ModelAdapter, sampler: Any, layer_ids: list[int], conv: Any, layers: str | list[int],
               extra_settings: dict[str, Any] | None) -> dict[str, Any]:
    """The run.json sections that describe what ran (a Ray worker recomputes them to check its model)."""
    return {
        "key": trace_key(adapter, sampler, layer_ids, conv.name),
        "settings": {"sampler": sampler.params(), "system_prompt": adapter.system_prompt,
                     "stop_token_ids": adapter.stop_token_ids,
                     "dtype": str(adapter.dtype).removeprefix("torch."), "layers_requested": str(layers),
                     **_model_conventions(adapter, sampler), **(extra_settings or {})},
        "model": adapter.describe(),
        "pooling": {"name": conv.name, "description": conv.description, "after_end": conv.after_end},
    }


def plan_trace(
    adapter: ModelAdapter,
    records: Sequence[PromptRecord],
    out: str | Path,
    *,
    sampler: Any = None,
    layers: str | list[int] = "final",
    pooling: str | None = None,
    batch_size: int = 8,
    max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS,
    extra_settings: dict[str, Any] | None = None,
) -> TracePlan:
    """Render, check lengths, create (or reopen) the store and batch the prompts not yet done. Needs the
    adapter's tokenizer, config and identity only, not its weights."""
    sampler = sampler or ARConfig()
    if not records:
        raise SriError("there are no prompts to trace; give at least one")
    if sampler.kind == "diffusion" and adapter.family.kind == "masked-diffusion":
        sampler = resolve_sampler(sampler, adapter)
    if batch_size <= 0:
        raise SriError(f"batch size must be positive (got {batch_size})")
    layer_ids = adapter.resolve_layers(layers)
    conv = get_pooling(pooling, sampler.kind)
    rendered = [adapter.render(r.prompt) for r in records]
    _warn_special_tokens(adapter, records)
    lengths = [adapter.count_tokens(text) for text in rendered]
    _check_lengths(adapter, records, lengths, max_prompt_tokens, _generation_length(sampler))

    meta = trace_meta(adapter, sampler, layer_ids, conv, layers, extra_settings)
    if sampler.kind == "diffusion" and "seed" in meta["key"]["decoding"]:
        # LLaDA's and Dream's samplers draw one noise tensor per batch: what a prompt gets depends on its batch, so
        # a resume must batch the same way (recorded in the settings, which a resume must match)
        meta["settings"]["batch_size"] = batch_size
    store = TraceStore.create(out, meta)
    saved = {row["id"]: row for row in store.rows()}
    done = set(saved)
    for r in records:  # a resume continues the same prompts: an id whose text or label changed would mix two runs
        old = saved.get(r.id)
        if old is not None and (old.get("prompt"), old.get("label")) != (r.prompt, r.label):
            what = "prompt text" if old.get("prompt") != r.prompt else \
                f"label ({old.get('label')!r} there, {r.label!r} now)"
            raise SriError(f"{out} already holds prompt {r.id!r} with another {what}; resume with the same prompts "
                           "and --label, or use another --out folder")
    pending = sorted((i for i, r in enumerate(records) if r.id not in done), key=lambda i: lengths[i])
    batches = [pending[start:start + batch_size] for start in range(0, len(pending), batch_size)]
    return TracePlan(store=store, meta=meta, records=records, rendered=rendered, lengths=lengths,
                     job=BatchJob(sampler=sampler, layer_ids=layer_ids, pooling=conv.name), batches=batches)


def run_batch(adapter: ModelAdapter, job: BatchJob, texts: list[str],
              observers: Sequence[StepObserver] = ()) -> BatchOutput:
    """Generate from one batch of rendered prompts (the same code on every backend)."""
    kind = SAMPLERS[job.sampler.kind]
    conv = get_pooling(job.pooling, job.sampler.kind)
    collector = StateCollector(job.layer_ids)
    input_ids, mask = adapter.encode(texts)
    t0 = time.perf_counter()
    result = kind.run(adapter, input_ids, mask, job.sampler, job.layer_ids, [collector, *observers], conv.name)
    wall = time.perf_counter() - t0
    states = collector.pooled(result.end_step, job.sampler.steps, conv)
    row_fields = result.extra.get("row_fields") or [{} for _ in texts]
    gens = list(kind.rows(adapter, result, job.sampler))
    return BatchOutput(gens=gens, row_fields=list(row_fields), timings=dict(result.timings), wall=wall,
                       states=states, finished=time.time())


def batch_rows(plan: TracePlan, batch: int, output: BatchOutput) -> list[dict[str, Any]]:
    """The store rows of one finished batch, in tensor order."""
    idx = plan.batches[batch]
    rows = []
    for j, (i, gen) in enumerate(zip(idx, output.gens, strict=True)):
        rec = plan.records[i]
        rows.append({
            "id": rec.id, "label": rec.label, "source": rec.source, "prompt": rec.prompt,
            "rendered_prompt": plan.rendered[i], "num_prompt_tokens": plan.lengths[i], **gen,
            "timing": {**output.timings, "wall_s": output.wall, "batch_size": len(idx), "batch_row": j},
            "meta": rec.meta, **output.row_fields[j],
        })
    return rows


def write_batches(plan: TracePlan, outcomes: Iterator[BatchOutcome], *, max_failed: int = 0,
                  progress: bool = True, description: str = "tracing",
                  log: Callable[[str], None] | None = None) -> TraceStore:
    """Write each finished batch as one shard, in the order the executor yields them (the only writer).

    A failed batch stops the run (its exception, or a one-line error for a remote one; written shards are kept)
    unless fewer than ``max_failed`` + 1 batches have failed, in which case it is skipped and counted."""
    store, records = plan.store, plan.records
    failed: list[int] = []
    written = 0
    with progress_bar(description, total=len(records), enabled=progress) as advance:
        advance(len(records) - sum(len(b) for b in plan.batches))
        try:
            for outcome in outcomes:
                idx = plan.batches[outcome.batch]
                if outcome.output is None:
                    failed.append(outcome.batch)
                    if len(failed) > max_failed:
                        if outcome.exc is not None:
                            raise outcome.exc
                        raise SriError(
                            f"batch {outcome.batch + 1}/{len(plan.batches)} ({len(idx)} prompts, first id "
                            f"'{records[idx[0]].id}') failed: {outcome.error}; the {written} shard(s) written in "
                            "this session are kept — re-run the same command to resume, or let failing batches "
                            "be skipped with --max-failed-batches")
                    if log:
                        log(f"batch {outcome.batch + 1}/{len(plan.batches)} failed and is skipped "
                            f"({len(failed)}/{max_failed} allowed): {outcome.error}")
                    advance(len(idx))
                    continue
                store.append(batch_rows(plan, outcome.batch, outcome.output), outcome.output.states)
                written += 1
                advance(len(idx))
        finally:
            close = getattr(outcomes, "close", None)
            if close is not None:
                close()
    store.failed_batches = len(failed)  # type: ignore[attr-defined]
    if failed and log:
        n = sum(len(plan.batches[b]) for b in failed)
        log(f"{len(failed)} batch(es) ({n} prompts) failed and were skipped; re-run the same command to retry them")
    return store


def _model_conventions(adapter: ModelAdapter, sampler: Any) -> dict[str, Any]:
    """How a masked diffusion model was driven (mask id, logit shift …): traces that differ here must not mix."""
    if sampler.kind != "diffusion":
        return {}
    if adapter.family.kind != "masked-diffusion":
        raise SriError(f"the {sampler.name} sampler needs a masked diffusion model, but '{adapter.name}' was loaded "
                       "as an autoregressive one; load it with sri.models.load_diffusion_model")
    return {"diffusion_model": adapter.conventions_record()}  # type: ignore[attr-defined]


def _warn_special_tokens(adapter: ModelAdapter, records: Sequence[PromptRecord]) -> None:
    """Say so (stderr) when prompt or system-prompt text spells one of the tokenizer's special tokens: the
    rendered conversation is tokenized whole, as transformers' ``apply_chat_template(tokenize=True)`` and the
    reference code do, so such text becomes the control token itself (``<|im_end|>`` ends the user turn)."""
    tok = adapter.tokenizer
    specials = {t for t in getattr(tok, "all_special_tokens", []) if len(t) > 1}
    specials |= {t.content for t in getattr(tok, "added_tokens_decoder", {}).values() if getattr(t, "special", False)}
    texts = [(r.id, r.prompt) for r in records] + [("(system prompt)", adapter.system_prompt or "")]
    hits = [(i, s) for i, text in texts for s in sorted(specials) if s and s in text]
    if hits:
        print(f"note: {len({i for i, _ in hits})} prompt(s) spell special tokens of the model (e.g. {hits[0][0]!r} "
              f"holds {hits[0][1]!r}); they are read as control tokens, as transformers' chat template does",
              file=sys.stderr)


def _generation_length(sampler: Any) -> int:
    return int(getattr(sampler, "gen_length", sampler.steps))


def _check_lengths(adapter: ModelAdapter, records: Sequence[PromptRecord], lengths: list[int], limit: int,
                   gen_length: int) -> None:
    from ..models import check_generation_length, context_length

    max_pos = context_length(adapter.model.config)
    check_generation_length(gen_length, max_pos)
    check_prompt_lengths(records, lengths, limit, gen_length, max_pos)


def check_prompt_lengths(records: Sequence[PromptRecord], lengths: Sequence[int], limit: int, gen_length: int,
                         max_pos: int | None) -> None:
    """Each rendered prompt (``lengths[i]`` tokens) within ``limit`` tokens and, with ``gen_length`` generated
    tokens, within the model's context ``max_pos`` (``None``: unknown). One-line :class:`SriError` naming the first
    prompt that is not."""
    for rec, n in zip(records, lengths, strict=True):
        if n > limit:
            raise SriError(f"prompt '{rec.id}' is {n} tokens, over the limit of {limit}; shorten it or raise "
                           "--max-prompt-tokens")
        if max_pos and n + gen_length > max_pos:
            raise SriError(f"prompt '{rec.id}' ({n} tokens) plus {gen_length} generated tokens exceeds the "
                           f"model's context of {max_pos}; shorten the prompt or lower --steps (or --gen-length)")

