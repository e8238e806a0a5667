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
`sri guard fit`), or, without it, a timing-only guard fitted here on signals of a few harmless prompts (its
detection quality means nothing; its cost is that of any guard of the same detector and T).
The guard itself always runs on one thread; ``--threads 1`` runs generation on one thread too (on a busy 2-core
machine that is ~3× faster than two threads, so it is the fair base to compare against).
Usage: nice -n 10 python benchmarks/guard_overhead.py [--guard DIR] [--batch 8] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from sri.data import load_prompts
from sri.defenses import PerplexityFilter
from sri.guard import Guard, GuardedGeneration, GuardObserver, fit_guard
from sri.io import write_json
from sri.models import load_model
from sri.pooling import POOLINGS, StateCollector
from sri.sampling import ARConfig, sample_ar
from sri.sampling.base import HiddenCapture
from sri.signal import Anchors, compute_signals, sri_signal
from sri.tracer import trace_prompts


def timing_guard(adapter, steps: int, detector: str, folder: Path) -> Guard:
    """A guard of the real shape, fitted on 24 harmless signals (anchors: means of two halves of 16 more)."""
    records = load_prompts("harmless", shuffle_seed=1, max_prompts=40)
    store = trace_prompts(adapter, records, folder / "traces", sampler=ARConfig(steps=steps), batch_size=8,
                          description="timing-guard traces")
    _, states = store.load()
    L = adapter.num_layers
    anchors = Anchors({L: states[L][:8].mean(0)}, {L: states[L][8:16].mean(0)}, store.key)
    signals = compute_signals(anchors, store)[16:]
    return fit_guard(signals[:16], signals[16:], detector=detector, quantile=0.9, anchors=anchors)


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
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads for generation (default: torch's)")
    ap.add_argument("--out", type=Path, default=Path("results/bench/guard_overhead.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    console = Console()
    adapter = load_model(args.model, device="cpu", dtype="fp32")
    T = args.steps
    with tempfile.TemporaryDirectory() as tmp:
        guard = Guard.load(args.guard) if args.guard else timing_guard(adapter, T, args.detector, Path(tmp))
    guard_source = str(args.guard) if args.guard else "timing-only guard fitted in this run"
    layer = int(guard.key["layer"])
    prompts = load_prompts("harmless", shuffle_seed=2, max_prompts=args.batch)
    ids, mask = adapter.encode([adapter.render(r.prompt) for r in prompts])
    ppl = PerplexityFilter(adapter, batch_size=args.batch).fit([{"prompt": r.prompt} for r in prompts])
    sampler = ARConfig(steps=T)

    times: dict[str, list[float]] = {k: [] for k in (
        "base", "guarded", "guard_self", "offline_guard", "ppl", "generate", "generate_guarded", "generate_self")}
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        sample_ar(adapter, ids, mask, sampler, [])
        times["base"].append(time.perf_counter() - t0)

        collector, obs = StateCollector([layer]), GuardObserver(guard, stop=False)
        t0 = time.perf_counter()
        res = sample_ar(adapter, ids, mask, sampler, [layer], [obs])
        times["guarded"].append(time.perf_counter() - t0)
        times["guard_self"].append(obs.seconds)
        res2 = sample_ar(adapter, ids, mask, sampler, [layer], [collector])  # states for the offline guard

        t0 = time.perf_counter()
        phi = collector.pooled(res2.end_step, T, POOLINGS[guard.key["pooling"]])[layer]
        sigma = sri_signal(phi, guard.anchors.harmless, guard.anchors.harmful, guard.anchors.tau, guard.anchors.eps)
        guard.flag(sigma.numpy())
        times["offline_guard"].append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        ppl.run([{"prompt": r.prompt} for r in prompts])
        times["ppl"].append(time.perf_counter() - t0)

        gen = dict(attention_mask=mask, max_new_tokens=T, min_new_tokens=T, do_sample=False,
                   pad_token_id=adapter.pad_token_id)
        with torch.inference_mode():
            t0 = time.perf_counter()
            adapter.model.generate(ids, **gen)
            times["generate"].append(time.perf_counter() - t0)
            with GuardedGeneration(guard, adapter.model, stop=False) as watch:
                t0 = time.perf_counter()
                adapter.model.generate(ids, stopping_criteria=[watch.stopping_criteria], **gen)
                times["generate_guarded"].append(time.perf_counter() - t0)
            times["generate_self"].append(watch.seconds)
        assert res.end_step == res2.end_step

    med = {k: statistics.median(v) for k, v in times.items()}
    hook = capture_hook_seconds(adapter, layer, ids, mask, T)
    streaming = med["guard_self"] + hook
    rows = [
        ("base generation (AR sampler)", med["base"], None, None),
        ("streaming SRI Guard, in the sampler (own timer + capture hook)", streaming,
         100 * streaming / med["base"], med["ppl"] / streaming),
        ("  wall-time difference guarded − base (noisy)", med["guarded"] - med["base"],
         100 * (med["guarded"] - med["base"]) / med["base"], None),
        ("offline SRI Guard (σ from pooled states + detector)", med["offline_guard"],
         100 * med["offline_guard"] / med["base"], med["ppl"] / med["offline_guard"]),
        ("perplexity filter (same model, same prompts)", med["ppl"], 100 * med["ppl"] / med["base"], 1.0),
        ("model.generate", med["generate"], None, None),
        ("streaming SRI Guard on model.generate (own timer, hook included)", med["generate_self"],
         100 * med["generate_self"] / med["generate"], med["ppl"] / med["generate_self"]),
    ]
    table = Table(title=f"SRI Guard overhead — {args.model}, batch {args.batch}, T={T}, {args.repeats} repeats "
                        f"(medians), {os.cpu_count()}-core {platform.machine()} CPU")
    for col in ("what", "seconds", "% of generation", "PPL filter cost ÷ this"):
        table.add_column(col, justify="right" if col != "what" else "left")
    for what, sec, pct, ratio in rows:
        table.add_row(what, f"{sec:.6f}", "" if pct is None else f"{pct:.4f}%", "" if ratio is None else
                      f"{ratio:,.0f}×")
    console.print(table)
    console.print(f"guard: {guard.kind}, {len(guard.prefixes)} streaming prefixes, layer {layer}; {guard_source}")
    result = {"model": args.model, "batch": args.batch, "steps": T, "repeats": args.repeats,
              "cpu_count": os.cpu_count(), "machine": platform.machine(), "torch_threads": torch.get_num_threads(),
              "guard": guard_source,
              "detector": guard.kind, "times_s": times, "medians_s": med, "capture_hook_s": hook,
              "table": [dict(zip(("what", "seconds", "pct_of_generation", "ppl_ratio"), r, strict=True)) for r in rows],
              "targets": {"guard_pct_max": 0.01, "ppl_ratio_min": 300},
              "offline_pct": 100 * med["offline_guard"] / med["base"], "streaming_pct": 100 * streaming / med["base"],
              "offline_ppl_ratio": med["ppl"] / med["offline_guard"], "streaming_ppl_ratio": med["ppl"] / streaming}
    write_json(args.out, result)
    console.print(f"→ {args.out}")


if __name__ == "__main__":
    main()
