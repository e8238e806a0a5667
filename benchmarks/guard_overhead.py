"""SRI Guard cost against base generation and against the perplexity filter, all measured in this one run.

On one batch of harmless prompts (default model, greedy, T = 32 steps):

- base generation: the AR sampler with no observer and no hidden-state capture;
- streaming guard: the same generation with :class:`sri.guard.GuardObserver` attached (monitor mode, so the
  generation is identical): capture of the guard's layer, per-step σ_t and a detector per prefix. Its cost is
  the extra wall time, measured two ways: the guard's own timer, plus the capture hook timed separately; and
  the raw wall-time difference of the two runs (noisy on a shared CPU, reported for honesty);
- offline guard (the paper's): σ from the batch's pooled states plus one full-signal detector score;
- perplexity filter: prompt perplexity of the same batch under the same model;
- the same streaming guard on a user's own ``model.generate`` (:class:`sri.guard.GuardedGeneration`).

Runs are interleaved and repeated; medians are reported. The guard is ``--guard DIR`` (a real one from
`sri guard fit`), or, without it, timing-only guards fitted here on signals of a few harmless prompts, one per
decision stride ``--every`` (their detection quality means nothing; their cost is that of any guard of the same
detector, T and stride).
The guard itself always runs on one thread; ``--threads 1`` runs generation on one thread too (on a busy 2-core
machine that is ~3× faster than two threads, so it is the fair base to compare against).
Usage: nice -n 10 python benchmarks/guard_overhead.py [--guard DIR | --every 1 4] [--batch 8] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from sri.data.prompts import load_prompts
from sri.defenses import PerplexityFilter
from sri.guard import Guard, GuardedGeneration, GuardObserver, fit_guard
from sri.io import write_json
from sri.models import load_model
from sri.pooling import POOLINGS, StateCollector
from sri.sampling import ARConfig, sample_ar
from sri.sampling.base import HiddenCapture
from sri.signal import Anchors, compute_signals, sri_signal
from sri.tracing.tracer import trace_prompts


def timing_guards(adapter, steps: int, detector: str, folder: Path, every: list[int]) -> dict[str, Guard]:
    """Guards of the real shape, fitted on 16 harmless signals (anchors: means of two halves of 16 more), one
    per decision stride."""
    records = load_prompts("harmless", shuffle_seed=1, max_prompts=40)
    store = trace_prompts(adapter, records, folder / "traces", sampler=ARConfig(steps=steps), batch_size=8,
                          description="timing-guard traces")
    _, states = store.load()
    L = adapter.num_layers
    anchors = Anchors({L: states[L][:8].mean(0)}, {L: states[L][8:16].mean(0)}, store.key)
    signals = compute_signals(anchors, store)[16:]
    return {f"every {k}": fit_guard(signals[:16], signals[16:], detector=detector, quantile=0.9, anchors=anchors,
                                    every=k) for k in every}


class TimedCapture(HiddenCapture):
    """The sampler's capture hooks, with the time spent inside them summed up."""

    seconds = 0.0

    def _hook(self, layer: int):
        inner = super()._hook(layer)

        def hook(*args):
            t0 = time.perf_counter()
            inner(*args)
            self.seconds += time.perf_counter() - t0

        return hook


def capture_hook_seconds(adapter, layer: int, ids, mask, steps: int) -> float:
    """Time inside the capture hook of the guard's layer over one generation (part of the guard's cost)."""
    capture = TimedCapture({layer: adapter.layer_module(layer)})
    with capture, torch.inference_mode():
        adapter.model.generate(ids, attention_mask=mask, max_new_tokens=steps, do_sample=False,
                               pad_token_id=adapter.pad_token_id)
    return capture.seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--guard", type=Path, default=None)
    ap.add_argument("--detector", default="ae")
    ap.add_argument("--every", type=int, nargs="+", default=[1, 4], help="decision strides of the timing guards")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads for generation (default: torch's)")
    ap.add_argument("--out", type=Path, default=Path("results/bench/guard_overhead.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    console = Console(width=150)
    adapter = load_model(args.model, device="cpu", dtype="fp32")
    T = args.steps
    with tempfile.TemporaryDirectory() as tmp:
        guards = {f"every {Guard.load(args.guard).info.get('stream_every', 1)}": Guard.load(args.guard)} \
            if args.guard else timing_guards(adapter, T, args.detector, Path(tmp), args.every)
    guard_source = str(args.guard) if args.guard else "timing-only guards fitted in this run"
    first = next(iter(guards.values()))
    layer = int(first.key["layer"])
    prompts = load_prompts("harmless", shuffle_seed=2, max_prompts=args.batch)
    ids, mask = adapter.encode([adapter.render(r.prompt) for r in prompts])
    ppl = PerplexityFilter(adapter, batch_size=args.batch).fit([{"prompt": r.prompt} for r in prompts])
    sampler = ARConfig(steps=T)
    gen = dict(attention_mask=mask, max_new_tokens=T, min_new_tokens=T, do_sample=False,
               pad_token_id=adapter.pad_token_id)

    times: dict[str, list[float]] = defaultdict(list)
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        sample_ar(adapter, ids, mask, sampler, [])
        times["base"].append(time.perf_counter() - t0)
        for name, guard in guards.items():
            obs = GuardObserver(guard, stop=False)
            t0 = time.perf_counter()
            sample_ar(adapter, ids, mask, sampler, [layer], [obs])
            times[f"guarded {name}"].append(time.perf_counter() - t0)
            times[f"guard self {name}"].append(obs.seconds)

        collector = StateCollector([layer])
        res = sample_ar(adapter, ids, mask, sampler, [layer], [collector])  # states for the offline guard
        t0 = time.perf_counter()
        phi = collector.pooled(res.end_step, T, POOLINGS[first.key["pooling"]])[layer]
        a = first.anchors
        first.flag(sri_signal(phi, a.harmless, a.harmful, a.tau, a.eps).numpy())
        times["offline guard"].append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        ppl.run([{"prompt": r.prompt} for r in prompts])
        times["ppl"].append(time.perf_counter() - t0)

        with torch.inference_mode():
            t0 = time.perf_counter()
            adapter.model.generate(ids, **gen)
            times["generate"].append(time.perf_counter() - t0)
            for name, guard in guards.items():
                with GuardedGeneration(guard, adapter.model, stop=False) as watch:
                    adapter.model.generate(ids, stopping_criteria=[watch.stopping_criteria], **gen)
                times[f"generate self {name}"].append(watch.seconds)

    med = {k: statistics.median(v) for k, v in times.items()}
    hook = capture_hook_seconds(adapter, layer, ids, mask, T)
    base, ppl_s = med["base"], med["ppl"]
    rows = [("base generation (AR sampler, no capture)", base, None, None)]
    for name in guards:
        cost = med[f"guard self {name}"] + hook
        rows.append((f"streaming SRI Guard, decides {name} step(s): own timer + capture hook", cost,
                     100 * cost / base, ppl_s / cost))
        diff = med[f"guarded {name}"] - base
        rows.append(("  (wall-time difference guarded − base, noisy)", diff, 100 * diff / base, None))
    rows.append(("offline SRI Guard (σ from pooled states + full-signal detector)", med["offline guard"],
                 100 * med["offline guard"] / base, ppl_s / med["offline guard"]))
    rows.append(("perplexity filter (same model, same prompts)", ppl_s, 100 * ppl_s / base, 1.0))
    rows.append(("model.generate", med["generate"], None, None))
    for name in guards:
        cost = med[f"generate self {name}"]
        rows.append((f"streaming SRI Guard on model.generate, {name} (own timer, hook included)", cost,
                     100 * cost / med["generate"], ppl_s / cost))
    table = Table(title=f"SRI Guard overhead — {args.model}, batch {args.batch}, T={T}, {args.repeats} repeats "
                        f"(medians), {os.cpu_count()}-core {platform.machine()} CPU, "
                        f"{torch.get_num_threads()} torch thread(s)")
    for col in ("what", "seconds", "% of generation", "PPL filter cost ÷ this"):
        table.add_column(col, justify="right" if col != "what" else "left")
    for what, sec, pct, ratio in rows:
        table.add_row(what, f"{sec:.6f}", "" if pct is None else f"{pct:.4f}%", "" if ratio is None else
                      f"{ratio:,.0f}×")
    console.print(table)
    console.print(f"guard: {first.kind}, layer {layer}; {guard_source}")
    result = {"model": args.model, "batch": args.batch, "steps": T, "repeats": args.repeats,
              "cpu_count": os.cpu_count(), "machine": platform.machine(), "torch_threads": torch.get_num_threads(),
              "guard": guard_source, "detector": first.kind, "times_s": dict(times), "medians_s": med,
              "capture_hook_s": hook, "targets": {"guard_pct_max": 0.01, "ppl_ratio_min": 300},
              "table": [dict(zip(("what", "seconds", "pct_of_generation", "ppl_ratio"), r, strict=True))
                        for r in rows]}
    write_json(args.out, result)
    console.print(f"→ {args.out}")


if __name__ == "__main__":
    main()
